"""``rats-run`` with per-rank hooks, for the multi-rank fault tests: ``python rank_run.py CONFIG [key=value ...]``
as each rank of a job (under ``torchrun``, or with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set as ``srun``
would set them).

* ``RATS_TEST_MARKS``: a folder; ``rank<R>_step_<n>`` is created (holding the process id) when rank R's
  step n forward pass starts, ``rank0_save_<n>`` when rank 0 starts writing the n-th checkpoint's student
  weights, ``rank0_export_start`` / ``rank0_export_end`` around rank 0's export (holding the time);
* ``RATS_TEST_STEP_DELAY``: seconds to sleep inside every step (after the forward pass);
* ``RATS_TEST_SAVE_DELAY``: seconds rank 0 sleeps inside every checkpoint save, its student weights
  half-written;
* ``RATS_TEST_EXPORT_DELAY``: seconds the toy backbone's export sleeps (a FLUX export on the CPU);
* ``RATS_TEST_RELAUNCH_DELAY``: seconds rank 1 waits before starting when torchrun relaunches it (a slow
  rank: the others then look for it in the store before it is there).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rats_core.cli import run_main
from rats_core.method.objective import RatsObjective
from rats_core.training import checkpoint as ckpt

marks = Path(os.environ["RATS_TEST_MARKS"])
rank = int(os.environ.get("RANK", "0"))
step_delay = float(os.environ.get("RATS_TEST_STEP_DELAY", "0"))
save_delay = float(os.environ.get("RATS_TEST_SAVE_DELAY", "0"))
export_delay = float(os.environ.get("RATS_TEST_EXPORT_DELAY", "0"))
counts = {"step": 0, "save": 0}

if rank == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
    time.sleep(float(os.environ.get("RATS_TEST_RELAUNCH_DELAY", "0")))

real_call = RatsObjective.__call__
real_save = ckpt.save_tensor_file


def mark(name: str, text: str = "") -> None:
    (marks / f"rank{rank}_{name}").write_text(text or str(os.getpid()))


def slow_call(self, *args, **kwargs):
    out = real_call(self, *args, **kwargs)
    counts["step"] += 1
    mark(f"step_{counts['step']}")
    time.sleep(step_delay)
    return out


def slow_save(tensors, path):
    if Path(path).name == "student.safetensors":
        counts["save"] += 1
        Path(path).write_bytes(b"partial")
        mark(f"save_{counts['save']}")
        time.sleep(save_delay)
    return real_save(tensors, path)


RatsObjective.__call__ = slow_call
ckpt.save_tensor_file = slow_save

if export_delay:
    from rats_plugins.toy_model import ToyBackbone

    real_export = ToyBackbone.export

    def slow_export(self, *args, **kwargs):
        mark("export_start", repr(time.time()))
        time.sleep(export_delay)
        out = real_export(self, *args, **kwargs)
        mark("export_end", repr(time.time()))
        return out

    ToyBackbone.export = slow_export

if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:]))
