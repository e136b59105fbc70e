"""The claim over seeds: the 2-step student beats its 50-step teacher on held-out prompts.

    python benchmarks/student_beats_teacher.py [CONFIG] [key=value ...] [--seeds 0,1,2] [--threads 1]
    python benchmarks/student_beats_teacher.py --runs runs/scenes-seed0 runs/scenes-seed1 ...

Runs ``rats ablate CONFIG --only rats --seeds 0,1,2`` (default ``experiments/scenes.yaml``, the
scenes world, when it and its weights exist, else ``experiments/digits.yaml``; each seed a full
``rats-run`` with its end-of-run held-out evaluation) and reads every run's ``report.json`` -- or,
with ``--runs``, reads the report.json of runs already made (e.g. seeds run side by side). Per seed
and as mean ± sd over seeds: the held-out reward, judge accuracy (and per category) and FID of the
student (K steps), its teacher (N steps), and the base model at K and at N steps (and at the other
evaluated K). ``claim`` gives the three criteria over seeds (rats_core.evaluation.verdict.across_seeds, the
one rule of rats_core/evaluation/stats.py): per-seed paired differences student − teacher with their 95 % t
interval -- reward really better, judge accuracy and FID not worse beyond their margins --, the fair
test in every seed, reward hacking, and the bottom line; a seed's ``student_beats_teacher`` is its
reward criterion as the rule reads it (really better on the paired per-image test).
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
from _common import ROOT, SCENES_WEIGHTS, config_and_overrides, emit, machine, progress  # noqa: E402

MODELS = {"student": "student", "teacher": "teacher", "base": "base", "base_teacher_steps": "base_at_teacher_steps",
          "student_1": "student_1", "student_4": "student_4", "base_1": "base_1", "base_4": "base_4"}
COLUMNS = ("reward", "judge_accuracy", "judge_count", "judge_colour", "judge_shape", "judge_relation", "fid")
SCENES = ROOT / "experiments" / "scenes.yaml"


def scenes_or_default(config: str | None) -> str | None:
    """The scenes world when no config is given and its config and weights exist."""
    if config is None and SCENES.is_file() and (SCENES_WEIGHTS / "pipeline" / "model_index.json").is_file():
        return str(SCENES)
    return config


def summarise(reports: list[tuple[int, dict]]) -> dict:
    """Per-seed rows, mean ± sd per column, and the three criteria over seeds."""
    from rats_core.evaluation.verdict import across_seeds, verdict

    per_seed = []
    for seed, report in reports:
        held = report["held_out"]
        row: dict = {"seed": seed, "overtake_step": report.get("overtake_step")}
        for key, label in MODELS.items():
            for col in COLUMNS:
                if col in held.get(key, {}):
                    row[f"{label}_{col}"] = held[key][col]
        v = verdict(held, per_image=report.get("per_image"))  # recomputed: older reports had another rule
        row["student_beats_teacher"] = bool(v and v["reward"]["status"] == "yes")
        row["verdict"] = v.get("summary")
        per_seed.append(row)
    keys = [k for k in per_seed[0] if k not in ("seed", "overtake_step", "student_beats_teacher", "verdict")]
    summary = {k: mean_sd([r[k] for r in per_seed if isinstance(r.get(k), (int, float))]) for k in keys}
    claim = across_seeds([r["held_out"] for _, r in reports], per_image=[r.get("per_image") for _, r in reports])
    return {"per_seed": per_seed, "summary": summary, "claim": claim}


def claim_lines(claim: dict) -> list[str]:
    def fmt(name: str, c: dict | None) -> str:
        if c is None:
            return f"{name}: not measured"
        iv = c.get("interval")
        interval = "no interval" if iv is None else f"95% interval of the difference [{iv[0]:+.3g}, {iv[1]:+.3g}]"
        return (f"{name}: {c['status']} (student {c['student_mean']:.4g} vs teacher {c['teacher_mean']:.4g}, "
                f"{interval}, margin {c['margin']:.3g}; {c['test']}; student ahead or level in "
                f"{c['wins']}/{claim['seeds']} seeds)")

    hack = claim.get("reward_hacking") or {}
    bottom = claim.get("bottom_line") or {}
    return [fmt("reward really better than the teacher's", claim["reward"]),
            fmt("judge accuracy not worse than the teacher's", claim["judge"]),
            fmt("FID not worse than the teacher's", claim.get("realism")),
            ("reward hacking FLAGGED over seeds: " + "; ".join(hack["worse"]) if hack.get("flag")
             else "reward hacking not flagged over seeds")
            + f" (flagged in {claim['reward_hacking_seeds']}/{claim['seeds']} single seeds)",
            f"fair test (base really worse at K than at N on the judge, FID higher at K) in "
            f"{claim.get('fair_test_seeds', 0)}/{claim['seeds']} seeds",
            f"claim over seeds: {bottom.get('status', '?')} — {bottom.get('reason', '')}"]


def mean_sd(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": round(statistics.fmean(values), 5),
            "sd": round(statistics.stdev(values), 5) if len(values) > 1 else None}


TABLE_COLUMNS = ("reward", "judge_accuracy", "judge_count", "judge_colour", "judge_shape", "judge_relation", "fid")


def ablation_table(specs: list[str]) -> int:
    """Markdown rows per variant: the K-step student's held-out numbers, mean ± sd over its runs, then
    the teacher's and the base model's at K and N of the first variant as reference rows."""
    from rats_core.evaluation.verdict import verdict

    rows, refs = [], None
    for spec in specs:
        name, _, dirs = spec.partition("=")
        reports = []
        for d in dirs.split(","):
            path = Path(d) / "report.json"
            if not path.is_file():
                print(f"error: {path}: no such file", file=sys.stderr)
                return 2
            reports.append(json.loads(path.read_text()))
        rows.append((name, [r["held_out"]["student"] for r in reports], reports))
        if refs is None:
            refs = reports

    def cell(vals: list[float]) -> str:
        m = mean_sd(vals)
        return f"{m['mean']:.3f}" + (f" ± {m['sd']:.3f}" if m["sd"] is not None else "")

    head = "| variant | seeds | " + " | ".join(TABLE_COLUMNS) + " | student reward really > teacher | hacking flagged |"
    lines = [head, "|---|---:|" + "---:|" * (len(TABLE_COLUMNS) + 2)]
    for label, key in (("base, K steps", "base"), ("base, N steps", "base_teacher_steps")):
        entries = [r["held_out"][key] for r in refs if key in r["held_out"]]
        if entries:
            lines.append(f"| {label} | {len(entries)} | " + " | ".join(cell([e[c] for e in entries]) for c in TABLE_COLUMNS)
                         + " | | |")
    for name, students, reports in rows:
        teachers = [r["held_out"]["teacher"] for r in reports if "teacher" in r["held_out"]]
        # the rule of rats_core/evaluation/stats.py, recomputed (a report.json written before it had another)
        verdicts = [verdict(r["held_out"], per_image=r.get("per_image")) for r in reports]
        wins = sum(bool(v and v["reward"]["status"] == "yes") for v in verdicts)
        flags = sum(bool(v and v["reward_hacking"]["flag"]) for v in verdicts)
        lines.append(f"| {name} (student, K) | {len(students)} | "
                     + " | ".join(cell([s[c] for s in students]) for c in TABLE_COLUMNS)
                     + f" | {wins}/{len(teachers)} | {flags}/{len(reports)} |")
        if teachers:
            lines.append(f"| {name} (its teacher, N) | {len(teachers)} | "
                         + " | ".join(cell([t[c] for t in teachers]) for c in TABLE_COLUMNS) + " | | |")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the runs (0: torch's choice)")
    ap.add_argument("--keep", metavar="DIR", help="output_dir to keep the runs in (default: temporary)")
    ap.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="summarise these finished runs instead of training")
    ap.add_argument("--table", nargs="+", metavar="NAME=RUN_DIR[,RUN_DIR...]",
                    help="print an ablation table (markdown, mean ± sd over each variant's runs) of finished runs")
    args = ap.parse_args(argv)
    if args.table:
        return ablation_table(args.table)
    if args.runs:
        reports = []
        for d in args.runs:
            path = Path(d) / "report.json"
            if not path.is_file():
                print(f"error: {path}: no such file (is {d} a finished rats-run output_dir?)", file=sys.stderr)
                return 2
            rep = json.loads(path.read_text())
            cfg_path = Path(d) / "config.yaml"
            seed = None
            if cfg_path.is_file():
                import yaml

                seed = (yaml.safe_load(cfg_path.read_text()) or {}).get("seed")
            reports.append((seed, rep))
        out = {"benchmark": "student_beats_teacher", "runs_from": [str(d) for d in args.runs], "runs": len(reports),
               "student_steps": reports[0][1].get("student_steps"), "teacher_steps": reports[0][1].get("teacher_steps"),
               "train_steps": reports[0][1].get("train_steps"), **summarise(reports)}
        out["student_beats_teacher"] = sum(r["student_beats_teacher"] for r in out["per_seed"])
        for line in claim_lines(out["claim"]):
            progress(line)
        emit(out)
        return 0
    config, args.overrides = config_and_overrides(scenes_or_default(args.config), args.overrides)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep) if args.keep else Path(tmp.name)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    # `python -m rats_core.cli` knows only the commands defined in cli.py itself (the others register on
    # the imported rats_core.cli.main module, not on __main__), so call the `rats` entry point's function.
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
    reports = [(seed, json.loads((root / "ablation" / "rats" / f"seed{seed}" / "report.json").read_text()))
               for seed in seeds]
    summed = summarise(reports)
    per_seed, summary = summed["per_seed"], summed["summary"]
    for line in claim_lines(summed["claim"]):
        progress(line)
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
        "claim": summed["claim"],
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
