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

from rats_core.config import apply_overrides, check_components, read_config_data, read_yaml, validate_config
from rats_core.errors import ConfigError
from rats_core.training.checkpoint import write_json_atomic

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
    write ``ablation.json`` and ``ablation.md`` in ``<output_dir>/ablation``.

    A run folder that already holds a finished run of the same configuration (its ``report.json``
    and a ``config.yaml`` equal to the planned one) is reused, not trained again; one that holds
    checkpoints of an unfinished run resumes. So an interrupted ablation continues where it stopped,
    and variants can be trained side by side (``--only`` in several shells) and then collected by one
    more ``rats ablate`` with all of them."""
    from rats_core.training.trainer import train

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
            cfg.eval.at_end = True
            check_components(cfg, source=f"{config} [{name}]")
            plans.append((name, seed, cfg, finished_report(cfg, f"{config} [{name}, seed {seed}]")))
    results: dict[str, list[dict[str, Any]]] = {}
    for i, (name, seed, cfg, report) in enumerate(plans, 1):
        if report is not None:
            print(f"[{i}/{len(plans)}] variant {name}, seed {seed}: finished earlier in {cfg.output_dir}, "
                  "reusing its report.json", file=sys.stderr)
        else:
            print(f"[{i}/{len(plans)}] variant {name}, seed {seed}", file=sys.stderr)
            result = train(cfg)
            report = result.report or json.loads((Path(cfg.output_dir) / "report.json").read_text())
        results.setdefault(name, []).append(_summary(report, seed, root_cfg.eval.verdict))
    table = summarise(results, root_cfg.eval.verdict)
    write_json_atomic(root / "ablation.json", {"variants": chosen, "seeds": seeds, "runs": results, "summary": table})
    (root / "ablation.md").write_text(markdown(table, seeds) + "\n")
    print((root / "ablation.md").read_text())
    return table


#: config keys that do not change what a run computes (a finished run is reused whatever they say)
NEUTRAL_KEYS = (("train", "threads"), ("train", "progress"))


def finished_report(cfg: Any, source: str) -> dict[str, Any] | None:
    """The report of a finished run of ``cfg`` in its output_dir, or None when there is none. A
    finished run of another configuration there is an error (its results would be mislabelled)."""
    import yaml

    from rats_core.training.run_folder import resolved_config

    folder = Path(cfg.output_dir)
    report_path, config_path = folder / "report.json", folder / "config.yaml"
    if not report_path.is_file() or not config_path.is_file():
        return None
    saved = yaml.safe_load(config_path.read_text()) or {}
    planned = json.loads(json.dumps(resolved_config(cfg, folder)))
    for section, key in NEUTRAL_KEYS:
        for d in (saved, planned):
            d.get(section, {}).pop(key, None)
    if saved != planned:
        diff = sorted(_differences(saved, planned))
        raise ConfigError(
            f"{source}: {folder} holds a finished run of another configuration (differs in "
            f"{', '.join(diff[:5])}{' …' if len(diff) > 5 else ''}); remove that folder or choose another output_dir=..."
        )
    try:
        return json.loads(report_path.read_text())
    except json.JSONDecodeError:
        return None  # not a complete report: train (resume) again


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


#: the variants of a run the comparison keeps (with their per-image data, for the paired tests)
KEPT = ("student", "teacher", "base", "base_teacher_steps")


def _summary(report: dict[str, Any], seed: int, margins: Any = None) -> dict[str, Any]:
    """One run's row: its numbers, the verdict's statuses (rats_core/evaluation/verdict.py; paired where its
    report.json has ``per_image``, unpaired for older reports) and what :func:`summarise` needs."""
    from rats_core.evaluation.verdict import verdict

    held = report.get("held_out", {})
    per_image = report.get("per_image")
    out: dict[str, Any] = {"seed": seed, "overtake_step": report.get("overtake_step")}
    for who in ("student", "teacher", "base", "base_teacher_steps"):
        for col in COLUMNS:
            if col in held.get(who, {}):
                out[f"{who}_{col}"] = held[who][col]
    v = verdict(held, per_image=per_image, margins=margins)
    if v:
        # the reward criterion as the rule reads it: really better, not merely a higher mean
        out["student_beats_teacher"] = v["reward"]["status"] == "yes"
        out["reward_hacking"] = bool(v["reward_hacking"]["flag"])
        for crit in ("reward", "judge", "realism"):
            if v.get(crit) is not None:
                out[f"holds_{crit}"] = v[crit]["holds"]
                out[f"status_{crit}"] = v[crit]["status"]
        out["bottom_line"] = v["bottom_line"]
    out["held_out"] = {k: held[k] for k in KEPT if k in held}
    if per_image:
        out["per_image"] = {"prompts": per_image.get("prompts"),
                            **{kind: {k: x for k, x in (per_image.get(kind) or {}).items() if k in KEPT}
                               for kind in ("reward", "judge_right")}}
    return out


def summarise(results: dict[str, list[dict[str, Any]]], margins: Any = None) -> dict[str, dict[str, Any]]:
    """Per variant: the mean and standard deviation over seeds of every number, how many seeds'
    students are really better than their teacher on reward (the verdict's rule) and flag reward
    hacking, and the claim over seeds (:func:`rats_core.evaluation.verdict.across_seeds`)."""
    import statistics

    from rats_core.evaluation.verdict import across_seeds

    table = {}
    for name, runs in results.items():
        row: dict[str, Any] = {"runs": len(runs)}
        keys = {k for r in runs for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seed", "overtake_step")}
        for k in sorted(keys):
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            row[k] = sum(vals) / len(vals) if vals else None
            row[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        row["student_beats_teacher"] = sum(bool(r.get("student_beats_teacher")) for r in runs)
        row["reward_hacking"] = sum(bool(r.get("reward_hacking")) for r in runs)
        row["overtake_steps"] = [r.get("overtake_step") for r in runs]
        held = [r["held_out"] for r in runs if r.get("held_out", {}).get("student") and r["held_out"].get("teacher")]
        if len(held) == len(runs) and held:
            claim = across_seeds(held, per_image=[r.get("per_image") for r in runs], margins=margins)
            row["claim"] = {k: claim[k] for k in ("reward", "judge", "realism", "reward_hacking", "fair_test",
                                                  "claim_holds", "bottom_line")}
        table[name] = row
    return table


def _cell(row: dict[str, Any], key: str) -> str:
    mean, sd = row.get(key), row.get(f"{key}_sd")
    if mean is None:
        return ""
    text = f"{mean:.4g}"
    if sd is None:
        return text
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    return f"{text} ± {sd:.{decimals}f}"  # the spread to the mean's last shown digit


def markdown(table: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    cols = [
        ("student_reward", "student reward"),
        ("teacher_reward", "teacher reward"),
        ("student_judge_accuracy", "student judge"),
        ("teacher_judge_accuracy", "teacher judge"),
        ("student_fid", "student FID"),
        ("teacher_fid", "teacher FID"),
    ]
    present = [(k, h) for k, h in cols if any(row.get(k) is not None for row in table.values())]
    lines = [
        f"Mean ± standard deviation over seeds {seeds} (held-out prompts; the student at K steps, its own "
        "teacher at N). 'beats teacher': seeds whose student reward is really above the teacher's (its paired "
        "95% interval above 0); 'hacking': seeds flagging reward hacking (reward really above the base model's "
        "at K while judge accuracy is really worse than the base's at K or the teacher's, beyond the margin); "
        "'claim': the verdict over seeds (per-seed paired differences; docs/eval.md, the verdict).",
        "",
        "| variant | " + " | ".join(h for _, h in present) + " | beats teacher | hacking | claim | overtaking step |",
        "|---|" + "---:|" * len(present) + "---:|---:|---|---|",
    ]
    for name, row in table.items():
        cells = [_cell(row, k) for k, _ in present]
        steps = ", ".join("never" if s is None else str(s) for s in row["overtake_steps"])
        bottom = (row.get("claim") or {}).get("bottom_line")
        claim = f"{bottom['status']}: {bottom['reason']}" if bottom else ""
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {row['student_beats_teacher']}/{row['runs']} | {row['reward_hacking']}/{row['runs']} "
                     f"| {claim} | {steps} |")
    base = next((r for r in table.values() if r.get("base_reward") is not None), None)
    if base is not None:
        names = {"reward": "reward", "judge_accuracy": "judge", "fid": "FID"}

        def numbers(who: str) -> str:
            return ", ".join(f"{name} {base[f'{who}_{col}']:.4g}" for col, name in names.items()
                             if base.get(f"{who}_{col}") is not None)

        at_n = numbers("base_teacher_steps")
        lines += ["", "The base model (the same in every variant): at K steps " + numbers("base")
                  + (f"; at N steps {at_n}" if at_n else "") + "."]
    return "\n".join(lines)


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
