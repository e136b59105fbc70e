"""Time to beat the teacher: wall time of ``rats-run`` until the 2-step student's held-out reward
exceeds its 50-step teacher's.

    python benchmarks/time_to_beat.py [CONFIG] [key=value ...] [--every 10] [--threads 1] [--full]

Runs ``rats-run CONFIG`` (default ``experiments/digits.yaml``) in a subprocess with ``eval.every``
set, so the trainer logs ``eval/reward_student`` and ``eval/reward_teacher`` on the held-out prompts
into metrics.jsonl every ``--every`` steps. Each line is timestamped as it appears. The first eval
where student > teacher gives ``steps`` and ``seconds``: wall time from launching ``rats-run`` (so it
includes Python start-up, model loading and the periodic evaluations) to that eval's line.
``training_seconds`` is the sum of the training steps' own times up to that step (no evaluations, no
start-up). The run is stopped there (SIGTERM: it saves a checkpoint and exits) unless ``--full``.
The resolution is ``--every`` steps; evaluating more often costs time (an eval samples every held-out
prompt with the N-step teacher).

The end-of-run report and export are switched off (``eval.at_end=false train.export=false``): they
come after the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, config_and_overrides, emit, machine, progress  # noqa: E402


def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], offset
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind("\n") + 1  # only complete lines
    rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return rows, offset + len(data[:end].encode("utf-8"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--every", type=int, default=10, help="eval.every: held-out evaluation every N steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS for the run (default 1: on a shared 2-core machine two threads were "
                         "up to 20x slower whenever the other core was busy); 0 leaves torch's choice")
    ap.add_argument("--full", action="store_true", help="train all train.steps instead of stopping at the first win")
    ap.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    ap.add_argument("--keep", metavar="DIR", help="run folder to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    config, args.overrides = config_and_overrides(args.config, args.overrides)
    tmp = tempfile.TemporaryDirectory()
    run_dir = Path(args.keep) if args.keep else Path(tmp.name) / "run"
    overrides = [f"output_dir={run_dir}", f"eval.every={args.every}", "eval.at_end=false", "train.export=false",
                 "train.progress=false", "train.log_every=1", "train.checkpoint_every=0"] + args.overrides
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "rats_core.cli", "run", str(config), *overrides]
    progress("time_to_beat: " + " ".join(cmd[2:]))
    metrics = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    offset = 0
    step_times: dict[int, float] = {}
    curve = []
    first_step_at = None
    beaten = None
    try:
        while True:
            rows, offset = read_new(metrics, offset)
            now = time.perf_counter() - t0
            for r in rows:
                if "step_time" in r:
                    step_times[r["step"]] = r["step_time"]
                    if first_step_at is None:
                        first_step_at = now - r["step_time"]
                if "eval/reward_student" in r:
                    point = {
                        "step": r["step"],
                        "seconds": round(now, 2),
                        "training_seconds": round(sum(v for s, v in step_times.items() if s <= r["step"]), 2),
                        "reward_student": r["eval/reward_student"],
                        "reward_teacher": r["eval/reward_teacher"],
                    }
                    curve.append(point)
                    progress(f"  step {point['step']}: {now:.1f}s  student {point['reward_student']:.4f}  "
                             f"teacher {point['reward_teacher']:.4f}")
                    if beaten is None and point["reward_student"] > point["reward_teacher"]:
                        beaten = point
                        if not args.full:
                            proc.send_signal(signal.SIGTERM)
            if proc.poll() is not None:
                rows, offset = read_new(metrics, offset)
                if not rows:
                    break
                continue
            if now > args.timeout:
                proc.send_signal(signal.SIGTERM)
                progress(f"timeout after {args.timeout}s")
                proc.wait(60)
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
    expected_exit = proc.returncode == 0 or (beaten is not None and not args.full and proc.returncode == 130)
    if not expected_exit:
        progress(stderr[-4000:])
    out = {
        "benchmark": "time_to_beat",
        "config": str(config),
        "overrides": args.overrides,
        "eval_every": args.every,
        "beaten": beaten is not None,
        "seconds": beaten["seconds"] if beaten else None,
        "steps": beaten["step"] if beaten else None,
        "training_seconds": beaten["training_seconds"] if beaten else None,
        "reward_student": beaten["reward_student"] if beaten else None,
        "reward_teacher": beaten["reward_teacher"] if beaten else None,
        "startup_seconds": round(first_step_at, 2) if first_step_at is not None else None,
        "median_step_s": round(sorted(step_times.values())[len(step_times) // 2], 4) if step_times else None,
        "steps_run": max(step_times) if step_times else 0,
        "target_seconds": 180,
        "curve": curve,
        "exit_code": proc.returncode,
        "threads": args.threads or None,
        "machine": {**machine(), "torch_threads": args.threads or None},
    }
    tmp.cleanup()
    emit(out)
    return 0 if expected_exit else 1


if __name__ == "__main__":
    sys.exit(main())
