"""Reports a person reads: report.md and report.json at the end of a run, the ``rats eval`` report;
the pictures are drawn by ``pictures``, the training history read by ``history``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from rats_core.evaluation.history import (
    OVERTAKE_RULE,
    _history_line,
    history_summary,
    overtake_step,
    run_line,
    stays_ahead,
)
from rats_core.evaluation.pictures import (
    MODEL_STYLE,
    _models,
    image_grid,
    nested_results,
    reward_vs_nfe,
    spread_columns,
    training_curves,
)
from rats_core.evaluation.variants import human_label, ordered, steps_label
from rats_core.training.checkpoint import write_json_atomic as _write_json_atomic


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically, readable like any other file the run writes (0644 under the usual umask;
    the temporary file the atomic write goes through is created 0600)."""
    import os

    _write_json_atomic(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

#: the human names of the report's variants (shown base, teacher, student; see ordered)
def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    labels = ordered(list(results), results)
    skip = {"steps", "n"}
    keys: list[str] = []
    for lab in labels:
        for k in results[lab]:
            if k not in skip and not k.endswith("_ci95") and k not in keys:
                keys.append(k)
    head = "| model | steps (NFE) | " + " | ".join(keys) + " |"
    sep = "|---|---:|" + "---:|" * len(keys)
    rows = [head, sep]
    for lab in labels:
        r = results[lab]
        cells = []
        for k in keys:
            v = r.get(k)
            if v is None:
                cells.append("")
            elif f"{k}_ci95" in r:
                cells.append(f"{v:.4g} ± {r[k + '_ci95']:.2g}")
            else:
                cells.append(f"{v:.4g}")
        rows.append(f"| {human_label(lab)} | {r.get('steps', '')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


Mark = Callable[[Tensor, Sequence[str]], "Sequence[tuple[bool, str]] | None"]


def per_image_record(prompts: Sequence[str], scores: dict[str, Tensor] | None,
                     judged: dict[str, Sequence[bool]] | None) -> dict[str, Any]:
    """report.json's ``per_image``: ``{"prompts": [...], "reward": {label: [...]}, "judge_right": {label:
    [...]}}``, every list in the order of ``prompts`` (the verdict's paired tests read it)."""
    return {
        "prompts": list(prompts),
        "reward": {k: [round(float(x), 6) for x in v.tolist()] for k, v in (scores or {}).items()},
        "judge_right": {k: [bool(x) for x in v] for k, v in (judged or {}).items()},
    }


def grid_marks(images: dict[str, Tensor], prompts: Sequence[str], mark: Mark | None
               ) -> dict[str, Sequence[tuple[bool, str]]] | None:
    """Each grid row's ``mark(images, prompts)`` (a judge metric's right/wrong per image, see
    :func:`rats_core.registry.interfaces.metric_marks`); None when there is no ``mark`` or it marks nothing."""
    if mark is None:
        return None
    marks = {label: m for label, imgs in images.items() if (m := mark(imgs[: len(prompts)], prompts)) is not None}
    return marks or None


def write_report(
    output_dir: Path,
    cfg: Any,
    results: dict[str, dict[str, Any]],
    images: dict[str, Tensor],
    prompts: Sequence[str],
    history: Sequence[dict[str, Any]],
    scores: dict[str, Tensor] | None = None,
    mark: Mark | None = None,
    judged: dict[str, Sequence[bool]] | None = None,
    ranks: int = 1,
    resumed_at: Sequence[int] = (),
) -> dict[str, Any]:
    """report.md, report.json and report/*.png. ``scores``: each image's combined reward, per variant
    (printed above the grid's images, and the verdict's paired reward test); ``mark(images, prompts)``:
    a judge metric's per-image verdicts (:func:`rats_core.registry.interfaces.metric_marks`), asked for the
    grid's images only; ``judged``: whether the judge reads each image right, per variant (the
    verdict's paired judge test). Both go to report.json's ``per_image``, in ``prompts``' order.
    ``ranks``: how many processes trained; ``resumed_at``: the steps at which the run was resumed after
    an interruption (report.json's ``ranks`` and ``resumed_at``, and one line of report.md)."""
    output_dir = Path(output_dir)
    report_dir = output_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    from rats_core.evaluation.verdict import markdown as verdict_markdown
    from rats_core.evaluation.verdict import verdict, verdict_line
    from rats_core.training.precision import eval_precision

    step, source = overtake_step(history)
    ahead = stays_ahead(history, step)
    k, n = cfg.student.steps, cfg.eval.teacher_steps or cfg.teacher.steps
    report = {
        "held_out": results,
        "overtake_step": step,
        "overtake_source": source,
        "overtake_stays_ahead": ahead,
        "history": history_summary(history),
        "train_steps": cfg.train.steps,
        "student_steps": k,
        "teacher_steps": n,
        "teacher_kind": cfg.teacher.kind,
        "gate": cfg.gate.name,
        "horizons": cfg.horizons.name,
        # what training and this evaluation computed in (eval.precision: train | fp32)
        "train_precision": cfg.train.precision,
        "eval_precision": eval_precision(cfg),
        "ranks": ranks,
        "resumed_at": [int(s) for s in resumed_at],
        "prompts": len(set(prompts)),
        "images": len(prompts),
        # per image, in the order of `prompts`: what makes the verdict's tests paired
        "per_image": per_image_record(prompts, scores, judged),
    }
    margins = getattr(cfg.eval, "verdict", None)
    # per criterion (reward, judge, realism), the fair test, a reward-hacking flag and the bottom line;
    # rats_core/evaluation/verdict.py
    report["verdict"] = verdict(results, per_image=report["per_image"], margins=margins)
    write_json_atomic(output_dir / "report.json", report)
    cols = spread_columns(prompts, 10)
    grid_prompts = [prompts[i] for i in cols]
    grid_images = {k: v[cols] for k, v in images.items()}
    marks = grid_marks(grid_images, grid_prompts, mark)
    image_grid(grid_images, grid_prompts, report_dir / "grid.png",
               columns=len(cols), results=results,
               scores={k: v[cols] for k, v in scores.items()} if scores else None,
               marks=marks,
               title="Held-out samples: the same prompt and initial noise down each column"
               + ("; above each image: its reward" if scores else "")
               + ("; frame: the judge's verdict (green right, red wrong)" if marks else ""))
    curves = training_curves(history, report_dir / "curves.png", step)
    reward_vs_nfe(
        nested_results(results), report_dir / "reward_vs_nfe.png", reference_steps=n,
        titles=reward_titles(cfg.rewards), teacher_label=f"teacher ({cfg.teacher.kind})",
        title=f"{cfg.backbone.name}: held-out reward versus sampler steps",
    )
    lines = [
        f"# RATS report — {cfg.backbone.name}",
        "",
        verdict_line(report["verdict"]),
        "",
        f"Held-out prompts: {len(set(prompts))} ({len(prompts)} images, the same noise for every row). "
        f"Student: {k} steps; teacher ({cfg.teacher.kind}): {n} steps; gate `{cfg.gate.name}`, "
        f"horizons `{cfg.horizons.name}`, {cfg.train.steps} training steps in {cfg.train.precision}; "
        f"evaluated in {report['eval_precision']} (`eval.precision`). `reward` is the configured "
        "combination of " + ", ".join(f"{r.name}×{r.weight:g}" for r in cfg.rewards) + " (mean ± 95% interval).",
        "",
        run_line(ranks, resumed_at),
        "",
        markdown_table(results),
        "",
        verdict_markdown(report["verdict"]),
        "",
        f"Student overtakes teacher at step: {step if step is not None else 'never'} ({source})"
        + ("" if ahead is None else "; it stays ahead at every later evaluation" if ahead
           else "; it falls behind again at a later evaluation") + ". "
        f"Rule: {OVERTAKE_RULE}. {_history_line(history)}",
        "",
        "![reward versus sampler steps](report/reward_vs_nfe.png)",
        "",
        "![samples](report/grid.png)",
    ]
    if curves:
        lines += ["", "![training curves](report/curves.png)"]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")
    return report



def reward_titles(reward_configs: Sequence[Any]) -> dict[str, str]:
    """Panel titles: the combined ``reward`` spelled out as its weighted sum."""
    parts = []
    for r in reward_configs:
        name, weight = (r["name"], r["weight"]) if isinstance(r, dict) else (r.name, r.weight)
        norm = (r.get("normalize") if isinstance(r, dict) else r.normalize) == "fixed"
        parts.append(f"{weight:g}×{'norm ' if norm else ''}{name}")
    return {"reward": "reward (combined: " + " + ".join(parts) + ")"}


# ----------------------------------------------------------------------------- rats eval report


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell:
        return ""
    return f"{cell['mean']:.4g} ± {cell.get('ci95', 0.0):.2g}"


def eval_markdown(summary: dict[str, Any]) -> str:
    """The ``rats eval`` table: one row per (model, steps), mean ± 95% interval per reward."""
    results = summary["results"]
    models = _models(results)
    rewards = summary.get("reward_names") or []
    metrics = summary.get("metric_names") or []
    n_steps = summary.get("teacher_steps")
    labels = {m: MODEL_STYLE.get(m, {}).get("label", m) for m in models}
    labels["teacher"] = f"teacher ({summary.get('teacher_kind', 'ema')})"
    lines = [f"# rats eval — {summary.get('backbone', '')}", ""]
    if summary.get("kind") == "run":
        lines.append(
            f"Run `{summary['source']}`, checkpoint `{Path(summary['checkpoint']).name}` "
            f"(training step {summary['checkpoint_step']}); the student was trained for "
            f"{summary['trained_steps']} steps, the teacher ({summary.get('teacher_kind')}) samples with {n_steps}."
            + (" A frozen teacher is the base model: see the base model's row at that step count."
               if summary.get("teacher_kind") == "frozen" else "")
        )
    else:
        lines.append(f"Config `{summary['source']}`: the base model as configured (no training).")
    p = summary["prompts"]
    lines += [
        "",
        f"Prompts: {p['count']} from {p['source']}, {p['images_per_prompt']} image(s) each = {p['images']} images per "
        f"row, seed {summary['seed']}. Every row samples the same prompts from the same initial noise, so "
        "differences are the models'. Cells: mean ± half-width of the 95% interval of the mean.",
        "",
    ]
    head = "| model | steps (NFE) | " + " | ".join(rewards + metrics) + " |"
    lines += [head, "|---|---:|" + "---:|" * (len(rewards) + len(metrics))]
    for m in models:
        for s in sorted(results[m], key=int):
            cell = results[m][s]
            cells = [_fmt(cell["rewards"].get(k)) for k in rewards]
            cells += [f"{cell['metrics'][k]:.4g}" if k in cell.get("metrics", {}) else "" for k in metrics]
            lines.append(f"| {labels[m]} | {s} | " + " | ".join(cells) + " |")
    key = "reward" if "reward" in rewards else (rewards[0] if rewards else None)
    base = results.get("base", {})
    ref = base.get(n_steps) or base.get(str(n_steps))
    if key and "student" in results:
        lines += ["", f"**Student against the base model** (`{key}`; ✔ = better by more than both intervals):", ""]
        for s in sorted(results["student"], key=int):
            st = results["student"][s]["rewards"][key]
            same = base.get(s) or base.get(str(s))
            bits = []
            for label, other in ((f"base at {steps_label(s)}", same), (f"base at {steps_label(n_steps)}", ref)):
                if other is None:
                    continue
                o = other["rewards"][key]
                diff = st["mean"] - o["mean"]
                width = st.get("ci95", 0) + o.get("ci95", 0)
                mark = "✔" if diff > width else ("≈" if diff >= -width else "✘")
                bits.append(f"{diff:+.4g} vs {label} {mark}")
            lines.append(f"- student at {steps_label(s)}: {st['mean']:.4g}; " + "; ".join(bits))
    lines += ["", "![reward versus sampler steps](reward_vs_nfe.png)", "", "![samples](grid.png)", ""]
    return "\n".join(lines)


def write_eval_report(
    out_dir: Path,
    summary: dict[str, Any],
    grid_images: dict[str, Tensor],
    grid_rows: dict[str, str],
    grid_scores: dict[str, Tensor],
    grid_prompts: Sequence[str],
    mark: Mark | None = None,
) -> dict[str, Path]:
    """``eval.json``, ``eval.md``, ``reward_vs_nfe.png`` and ``grid.png`` in ``out_dir``; ``mark``: as
    in :func:`write_report`, a judge metric's verdict per grid image (framed green/red)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval.json", "markdown": out_dir / "eval.md",
             "plot": out_dir / "reward_vs_nfe.png", "grid": out_dir / "grid.png"}
    write_json_atomic(paths["json"], summary)
    paths["markdown"].write_text(eval_markdown(summary), encoding="utf-8")
    p = summary["prompts"]
    what = "student vs base model" if summary.get("kind") == "run" else "base model"
    reward_vs_nfe(
        {m: {int(s): c for s, c in cells.items()} for m, cells in summary["results"].items()},
        paths["plot"],
        reference_steps=summary.get("teacher_steps"),
        titles=reward_titles(summary.get("rewards", [])),
        teacher_label=f"teacher ({summary.get('teacher_kind', 'ema')})",
        names=list(summary.get("reward_names") or []) + list(summary.get("metric_names") or []) or None,
        title=f"{summary.get('backbone', '')}: {what} — {p['count']} prompts × {p['images_per_prompt']}, same noise",
    )
    marks = grid_marks(grid_images, grid_prompts, mark)
    image_grid(
        grid_images, grid_prompts, paths["grid"], columns=len(grid_prompts), rows=grid_rows, scores=grid_scores,
        marks=marks, title="Same prompt and initial noise down each column; above each image: its reward"
        + ("; frame: the judge's verdict (green right, red wrong)" if marks else ""),
    )
    return paths
