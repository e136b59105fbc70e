"""CPU threads on a busy machine: digits training step time by torch thread count, OpenMP wait policy
and background load.

    python benchmarks/threads.py [--steps 4] [--budget 90] [--load 0,2] [--threads 1,2,auto]
                                 [--wait spin,passive] [--nice -15]

Each combination runs in a fresh process (OpenMP reads its settings at start-up): the embedded digits
experiment is set up, one warm-up step is taken, then ``--steps`` steps are timed (or as many as fit in
``--budget`` seconds). ``--load N`` starts N processes spinning in a busy loop for the duration of the
measurement (other jobs on the machine). ``--wait spin`` is GNU OpenMP's own default (threads spin
``GOMP_SPINCOUNT=300000`` times at each barrier before sleeping; what torch does unless told otherwise),
``--wait passive`` is ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once), ``--wait bounded:N`` is ``GOMP_SPINCOUNT=N``
(spin N times, then sleep), ``--wait rats`` leaves the choice to ``import rats_core``. ``auto``
is ``train.threads: auto`` (threads = cores free, re-checked while training). ``--nice -15`` runs the
measured process and the load processes at that priority (root only), so that other jobs on a shared
machine hardly disturb the measurement: with ``--load 0`` this stands in for a quiet machine. Prints one
JSON object; the load average is recorded with each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, tempfile
import rats_core
if sys.argv[4] == "rats":  # as rats-run does: on an idle machine, spinning threads on every core
    from rats_core.training.threads import spin_if_idle
    spin_if_idle()
import torch
from rats_core.config import load_config
from rats_core.training.trainer import Trainer
threads, steps, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = tempfile.mkdtemp()
overrides = ["train.steps=1000", "train.progress=false", "eval.at_end=false", "eval.every=0",
             "train.export=false", "train.checkpoint_every=0", f"output_dir={out}"]
try:
    cfg = load_config("experiments/digits.yaml", overrides + [f"train.threads={threads}"])
except Exception:  # a rats without train.threads: set the count here
    cfg = load_config("experiments/digits.yaml", overrides)
    if threads != "auto" and int(threads):
        torch.set_num_threads(int(threads))
trainer = Trainer(cfg)
trainer.setup()
import os
print(json.dumps({"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}), flush=True)
start = time.perf_counter()
for i in range(steps + 1):
    t = time.perf_counter()
    c = time.process_time()
    trainer.train_step()
    trainer.step += 1
    tick = getattr(getattr(trainer, "thread_policy", None), "tick", None)
    if tick:
        tick()
    print(json.dumps({"step": i, "wall": time.perf_counter() - t, "cpu": time.process_time() - c,
                      "threads": torch.get_num_threads()}), flush=True)
    if time.perf_counter() - start > budget:
        break
trainer.cleanup()
"""


def measure(threads: str, wait: str, load: int, steps: int, budget: float, nice: int = 0) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(k, None)
    if wait == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif wait == "spin":
        env["GOMP_SPINCOUNT"] = "300000"  # libgomp's default; set, so that rats_core leaves the policy alone
    elif wait.startswith("bounded:"):
        env["GOMP_SPINCOUNT"] = wait.split(":", 1)[1]  # spin this many times at a barrier, then sleep
    elif wait == "rats":
        pass  # whatever `import rats_core` chooses
    renice = (lambda: os.nice(nice)) if nice else None
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=renice) for _ in range(load)]
    rows: list[dict] = []
    started = time.perf_counter()
    timed_out = False
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, threads, str(steps), str(budget), wait], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=renice)
        deadline = started + budget + 120
        for line in child.stdout:
            rows.append(json.loads(line))
            if time.perf_counter() > deadline:
                break
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            timed_out = True
            child.kill()
            child.wait()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    stepped = [r for r in rows if "step" in r and r["step"] > 0]  # step 0: warm-up
    walls = sorted(r["wall"] for r in stepped)
    result = {
        "threads_setting": threads, "wait_policy": wait, "background_load": load, "nice": nice,
        "torch_threads": rows[0]["threads"] if rows else None,
        "openmp": {k: rows[0].get(k) for k in ("omp_wait_policy", "gomp_spincount")} if rows else None,
        "threads_during": sorted({r["threads"] for r in stepped}),
        "steps_timed": len(walls),
        "step_median_s": walls[len(walls) // 2] if walls else None,
        "step_min_s": walls[0] if walls else None,
        "step_max_s": walls[-1] if walls else None,
        "cpu_per_step_s": sum(r["cpu"] for r in stepped) / len(stepped) if stepped else None,
        "warmup_s": next((r["wall"] for r in rows if r.get("step") == 0), None),
        "load_average_after": os.getloadavg()[0],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if timed_out or not walls:
        result["note"] = f"stopped: no step finished within the {budget:.0f} s budget" if not walls else "stopped"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--budget", type=float, default=90.0, help="seconds of timed steps per combination")
    ap.add_argument("--nice", type=int, default=0, help="priority of the measured and load processes (root: < 0)")
    ap.add_argument("--load", default="0,2", help="background busy processes, e.g. 0,1,2")
    ap.add_argument("--threads", default="1,2,auto")
    ap.add_argument("--wait", default="spin,passive")
    args = ap.parse_args()
    results = []
    for load in [int(x) for x in args.load.split(",")]:
        for wait in args.wait.split(","):
            for threads in args.threads.split(","):
                if threads == "auto" and wait not in ("passive", "rats"):
                    continue  # auto runs as rats runs: with rats' own policy
                r = measure(threads, wait, load, args.steps, args.budget, args.nice)
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine

    print(json.dumps({"benchmark": "threads", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
