"""``rats-run`` with hooks that make the moments a signal should land in observable and wide.

Used by test_signals.py as a real subprocess: ``python slow_run.py CONFIG [key=value ...]``.

* ``RATS_TEST_MARKS``: a folder; ``step_<n>`` is created when step n's forward pass starts and
  ``save_<n>`` when the n-th checkpoint starts writing its student weights;
* ``RATS_TEST_STEP_DELAY``: seconds to sleep inside every step (between forward and backward);
* ``RATS_TEST_SAVE_DELAY``: seconds to sleep inside every checkpoint save (after a partial write).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rats_core.training import checkpoint as ckpt
from rats_core.cli import run_main
from rats_core.method.objective import RatsObjective

marks = Path(os.environ["RATS_TEST_MARKS"])
step_delay = float(os.environ.get("RATS_TEST_STEP_DELAY", "0"))
save_delay = float(os.environ.get("RATS_TEST_SAVE_DELAY", "0"))
counts = {"step": 0, "save": 0}

real_call = RatsObjective.__call__
real_save = ckpt.save_tensor_file


def slow_call(self, *args, **kwargs):
    out = real_call(self, *args, **kwargs)
    counts["step"] += 1
    (marks / f"step_{counts['step']}").touch()
    time.sleep(step_delay)
    return out


def slow_save(tensors, path):
    if Path(path).name == "student.safetensors":
        counts["save"] += 1
        Path(path).write_bytes(b"partial")
        (marks / f"save_{counts['save']}").touch()
        time.sleep(save_delay)
    return real_save(tensors, path)


RatsObjective.__call__ = slow_call
ckpt.save_tensor_file = slow_save

if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:]))
