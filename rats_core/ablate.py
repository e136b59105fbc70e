"""``rats ablate``: train one config under several variants (and seeds) and compare them in one table.

The default variants are the paper's ablations: the gate (sigmoid / always distil / reward only / hard),
the horizons (all / last / first) and the teacher (EMA / frozen). A YAML file can name others::

    # variants.yaml: name -> list of key=value overrides
    sigmoid-tau-0.1: ["gate={name: sigmoid, tau: 0.1}"]
    beta-0: ["loss.beta=0"]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .checkpoint import write_json_atomic
from .commands import arg, command
from .config import apply_overrides, check_components, read_config_data, read_yaml, validate_config
from .errors import ConfigError

DEFAULT_VARIANTS: dict[str, list[str]] = {
    "rats": [],
    "always-distil": ["gate={name: constant, c: 1.0}"],
    "reward-only": ["gate={name: constant, c: 0.0}"],
    "hard-gate": ["gate={name: hard, margin: 0.0}"],
    "horizons-last": ["horizons={name: last, n: 1}"],
    "horizons-first": ["horizons={name: first, n: 1}"],
    "frozen-teacher": ["teacher.kind=frozen"],
}

#: columns of the comparison table: (report key path, header)
COLUMNS = ("reward", "judge_accuracy", "fid")


def load_variants(spec: str | None) -> dict[str, list[str]]:
    if spec is None:
        return dict(DEFAULT_VARIANTS)
    data = read_yaml(spec)
    out = {}
    for name, overrides in data.items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"{spec}: variant '{name}' must be a list of key=value strings")
        out[str(name)] = overrides
    return out


def run_ablation(
    config: str,
    overrides: list[str],
    variants: dict[str, list[str]],
    seeds: list[int],
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Train every (variant, seed), each in ``<output_dir>/ablation/<variant>/seed<seed>``, then
    write ``ablation.json`` and ``ablation.md`` in ``<output_dir>/ablation``."""
    from .trainer import train

    base = read_config_data(config)  # a `base:` chain applies as in rats-run
    apply_overrides(base, overrides)
    root_cfg = validate_config(json.loads(json.dumps(base)), source=config)
    root = Path(root_cfg.output_dir).expanduser().resolve() / "ablation"
    chosen = {k: v for k, v in variants.items() if not only or k in only}
    if only:
        unknown = sorted(set(only) - set(variants))
        if unknown:
            raise ConfigError(f"--only: unknown variants {unknown}; known: {sorted(variants)}")
    # validate everything before training anything
    plans = []
    for name, extra in chosen.items():
        for seed in seeds:
            data = json.loads(json.dumps(base))
            apply_overrides(data, list(extra) + [f"seed={seed}", f"output_dir={root / name / f'seed{seed}'}"])
            cfg = validate_config(data, source=f"{config} [{name}]")
            cfg._base_dir = Path(config).resolve().parent
            check_components(cfg, source=f"{config} [{name}]")
            plans.append((name, seed, cfg))
    results: dict[str, list[dict[str, Any]]] = {}
    for i, (name, seed, cfg) in enumerate(plans, 1):
        print(f"[{i}/{len(plans)}] variant {name}, seed {seed}", file=sys.stderr)
        cfg.eval.at_end = True
        result = train(cfg)
        report = result.report or json.loads((Path(cfg.output_dir) / "report.json").read_text())
        results.setdefault(name, []).append(_summary(report, seed))
    table = summarise(results)
    write_json_atomic(root / "ablation.json", {"variants": chosen, "seeds": seeds, "runs": results, "summary": table})
    (root / "ablation.md").write_text(markdown(table, seeds) + "\n")
    print((root / "ablation.md").read_text())
    return table


def _summary(report: dict[str, Any], seed: int) -> dict[str, Any]:
    held = report.get("held_out", {})
    out: dict[str, Any] = {"seed": seed, "overtake_step": report.get("overtake_step")}
    for who in ("student", "teacher", "base"):
        for col in COLUMNS:
            if col in held.get(who, {}):
                out[f"{who}_{col}"] = held[who][col]
    if "student_reward" in out and "teacher_reward" in out:
        out["student_beats_teacher"] = out["student_reward"] > out["teacher_reward"]
    return out


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for name, runs in results.items():
        row: dict[str, Any] = {"runs": len(runs)}
        keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"}
        for k in sorted(keys):
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            row[k] = sum(vals) / len(vals) if vals else None
        row["student_beats_teacher"] = sum(bool(r.get("student_beats_teacher")) for r in runs)
        row["overtake_steps"] = [r.get("overtake_step") for r in runs]
        table[name] = row
    return table


def markdown(table: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    cols = [
        ("student_reward", "student reward"),
        ("teacher_reward", "teacher reward"),
        ("base_reward", "base reward"),
        ("student_judge_accuracy", "student judge acc."),
        ("student_fid", "student FID"),
        ("base_fid", "base FID"),
    ]
    present = [(k, h) for k, h in cols if any(row.get(k) is not None for row in table.values())]
    lines = [
        f"Mean over seeds {seeds}. 'beats teacher': runs whose student reward exceeds the teacher's.",
        "",
        "| variant | " + " | ".join(h for _, h in present) + " | beats teacher | overtaking step |",
        "|---|" + "---:|" * len(present) + "---:|---|",
    ]
    for name, row in table.items():
        cells = [f"{row[k]:.4g}" if row.get(k) is not None else "" for k, _ in present]
        steps = ", ".join("never" if s is None else str(s) for s in row["overtake_steps"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['student_beats_teacher']}/{row['runs']} | {steps} |")
    return "\n".join(lines)


@command("ablate", "train a config under the paper's ablation variants (and seeds) and compare them")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key=value overrides applied to every variant")
@arg("--variants", default=None, help="YAML file: variant name -> list of overrides (default: the paper's ablations)")
@arg("--only", default=None, help="comma-separated variant names to run")
@arg("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
def cmd_ablate(args: argparse.Namespace) -> int:
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    run_ablation(args.config, args.overrides, load_variants(args.variants), seeds, only)
    return 0
