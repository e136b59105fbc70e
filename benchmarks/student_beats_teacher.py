"""The claim over seeds: the 2-step student beats its 50-step teacher on held-out prompts.

    python benchmarks/student_beats_teacher.py [CONFIG] [key=value ...] [--seeds 0,1,2] [--threads 1]

Runs ``rats ablate CONFIG --only rats --seeds 0,1,2`` (default ``experiments/digits.yaml``; each seed a
full ``rats-run`` with its end-of-run held-out evaluation) and reads ``ablation.json`` and every
run's ``report.json``. Per seed and as mean ± sd over seeds: the held-out reward of the student (K
steps), its teacher (N steps), the base model at K and at N steps; and, from metrics training never
sees, the independent judge's accuracy and the FID against real held-out digits, student vs base.
``student_beats_teacher`` counts the seeds where student reward > teacher reward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, config_and_overrides, emit, machine, progress  # noqa: E402

MODELS = {"student": "student", "teacher": "teacher", "base": "base", "base_teacher_steps": "base_at_teacher_steps"}
COLUMNS = ("reward", "judge_accuracy", "fid")


def mean_sd(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": round(statistics.fmean(values), 5),
            "sd": round(statistics.stdev(values), 5) if len(values) > 1 else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the runs (0: torch's choice)")
    ap.add_argument("--keep", metavar="DIR", help="output_dir to keep the runs in (default: temporary)")
    args = ap.parse_args(argv)
    config, args.overrides = config_and_overrides(args.config, args.overrides)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep) if args.keep else Path(tmp.name)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    # `python -m rats_core.cli` knows only the commands defined in cli.py itself (the others register on
    # the imported rats_core.cli module, not on __main__), so call the `rats` entry point's function.
    cmd = [sys.executable, "-c", "import sys; from rats_core.cli import main; sys.exit(main())", "ablate", str(config), "--only", "rats", "--seeds", args.seeds,
           f"output_dir={root}", "train.progress=false", *args.overrides]
    progress("student_beats_teacher: rats " + " ".join(cmd[3:]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        progress(proc.stderr[-4000:])
        emit({"benchmark": "student_beats_teacher", "config": str(config), "error": proc.stderr[-2000:],
              "exit_code": proc.returncode})
        tmp.cleanup()
        return 1
    ablation = json.loads((root / "ablation" / "ablation.json").read_text())
    per_seed = []
    for seed in seeds:
        report = json.loads((root / "ablation" / "rats" / f"seed{seed}" / "report.json").read_text())
        held = report["held_out"]
        row: dict = {"seed": seed, "overtake_step": report.get("overtake_step")}
        for key, label in MODELS.items():
            for col in COLUMNS:
                if col in held.get(key, {}):
                    row[f"{label}_{col}"] = held[key][col]
        row["student_beats_teacher"] = row.get("student_reward", float("-inf")) > row.get("teacher_reward", float("inf"))
        per_seed.append(row)
    keys = [k for k in per_seed[0] if k not in ("seed", "overtake_step", "student_beats_teacher")]
    summary = {k: mean_sd([r[k] for r in per_seed if isinstance(r.get(k), (int, float))]) for k in keys}
    first = json.loads((root / "ablation" / "rats" / f"seed{seeds[0]}" / "report.json").read_text())
    out = {
        "benchmark": "student_beats_teacher",
        "config": str(config),
        "overrides": args.overrides,
        "seeds": seeds,
        "student_steps": first.get("student_steps"),
        "teacher_steps": first.get("teacher_steps"),
        "train_steps": first.get("train_steps"),
        "student_beats_teacher": sum(r["student_beats_teacher"] for r in per_seed),
        "runs": len(per_seed),
        "summary": summary,
        "per_seed": per_seed,
        "ablation_summary": ablation.get("summary"),
        "seconds": round(seconds, 1),
        "threads": args.threads or None,
        "machine": {**machine(), "torch_threads": args.threads or None},
    }
    tmp.cleanup()
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
