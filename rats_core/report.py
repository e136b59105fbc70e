"""Reports a person reads: a markdown table, report.json, an image grid and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from .checkpoint import write_json_atomic

#: the order variants are shown in, when present
ORDER = ("base", "base_teacher_steps", "teacher", "student")
LABELS = {
    "base": "base model",
    "base_teacher_steps": "base model",
    "teacher": "teacher",
    "student": "RATS student",
}


def _ordered(labels: Sequence[str]) -> list[str]:
    known = [x for x in ORDER if x in labels]
    return known + sorted(x for x in labels if x not in known)


def smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def overtake_step(history: Sequence[dict[str, Any]]) -> tuple[int | None, str]:
    """The first step at which the student's reward exceeds the teacher's.

    Uses the held-out evaluations logged during training (``eval/…``) when there are any, otherwise
    the training batches' rewards smoothed over a window of ~5% of the run.
    Returns ``(step or None, source)``.
    """
    evals = [h for h in history if "eval/reward_student" in h and "eval/reward_teacher" in h]
    if evals:
        for h in evals:
            if h["eval/reward_student"] > h["eval/reward_teacher"]:
                return int(h["step"]), "held-out evaluations during training"
        return None, "held-out evaluations during training"
    train = [h for h in history if "reward_student" in h and "reward_teacher" in h]
    if not train:
        return None, "no history"
    window = max(1, len(train) // 20)
    s = smooth([h["reward_student"] for h in train], window)
    t = smooth([h["reward_teacher"] for h in train], window)
    for h, a, b in zip(train, s, t):
        if a > b:
            return int(h["step"]), f"training batches (moving average over {window} steps)"
    return None, f"training batches (moving average over {window} steps)"


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    labels = _ordered(list(results))
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
        rows.append(f"| {LABELS.get(lab, lab)} | {r.get('steps', '')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def image_grid(images: dict[str, Tensor], prompts: Sequence[str], path: Path, columns: int = 8, results=None) -> Path:
    """Rows: variants; columns: the first prompts (the same noise in every row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _ordered(list(images))
    cols = min(columns, len(prompts))
    fig, axes = plt.subplots(len(labels), cols, figsize=(1.6 * cols + 1.2, 1.75 * len(labels) + 0.4), squeeze=False)
    for i, lab in enumerate(labels):
        for j in range(cols):
            ax = axes[i][j]
            img = images[lab][j].permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_wrap(prompts[j]), fontsize=7)
            if j == 0:
                steps = results[lab]["steps"] if results and lab in results else ""
                ax.set_ylabel(f"{LABELS.get(lab, lab)}\n{steps} steps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 18) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    lines.append(cur)
    return "\n".join(lines[:3])


def training_curves(history: Sequence[dict[str, Any]], path: Path, overtake: int | None = None) -> Path | None:
    """Student and teacher reward and the gate mean over training steps."""
    train = [h for h in history if "reward_student" in h]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in train]
    window = max(1, len(train) // 20)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, smooth([h["reward_student"] for h in train], window), label="student reward (train batch)", color="C0")
    ax.plot(steps, smooth([h["reward_teacher"] for h in train], window), label="teacher reward (train batch)", color="C1")
    evals = [h for h in history if "eval/reward_student" in h]
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval/reward_student"] for h in evals], "o--", color="C0",
                label="student reward (held-out)", markersize=3)
        ax.plot([h["step"] for h in evals], [h["eval/reward_teacher"] for h in evals], "o--", color="C1",
                label="teacher reward (held-out)", markersize=3)
    if overtake is not None:
        ax.axvline(overtake, color="grey", linestyle=":", label=f"student overtakes (step {overtake})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax2 = ax.twinx()
    ax2.plot(steps, smooth([h["gate_mean"] for h in train], window), color="C2", alpha=0.6, label="gate mean")
    ax2.set_ylabel("gate mean")
    ax2.set_ylim(-0.02, 1.02)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower right")
    ax.set_title(f"RATS training (moving average over {window} steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    output_dir: Path,
    cfg: Any,
    results: dict[str, dict[str, Any]],
    images: dict[str, Tensor],
    prompts: Sequence[str],
    history: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    output_dir = Path(output_dir)
    report_dir = output_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    step, source = overtake_step(history)
    k, n = cfg.student.steps, cfg.eval.teacher_steps or cfg.teacher.steps
    student = results.get("student", {})
    teacher = results.get("teacher", {})
    base_n = results.get("base_teacher_steps", {})
    claims = {}
    if student and teacher:
        claims["student_beats_teacher"] = student["reward"] > teacher["reward"]
    if student and base_n:
        claims["student_beats_base_at_teacher_steps"] = student["reward"] > base_n["reward"]
    report = {
        "held_out": results,
        "overtake_step": step,
        "overtake_source": source,
        "train_steps": cfg.train.steps,
        "student_steps": k,
        "teacher_steps": n,
        "teacher_kind": cfg.teacher.kind,
        "gate": cfg.gate.name,
        "horizons": cfg.horizons.name,
        "claims": claims,
        "prompts": len(set(prompts)),
        "images": len(prompts),
    }
    write_json_atomic(output_dir / "report.json", report)
    image_grid(images, prompts, report_dir / "grid.png", results=results)
    curves = training_curves(history, report_dir / "curves.png", step)
    lines = [
        f"# RATS report — {cfg.backbone.name}",
        "",
        f"Held-out prompts: {len(set(prompts))} ({len(prompts)} images, the same noise for every row). "
        f"Student: {k} steps; teacher ({cfg.teacher.kind}): {n} steps; gate `{cfg.gate.name}`, "
        f"horizons `{cfg.horizons.name}`, {cfg.train.steps} training steps. `reward` is the configured "
        "combination of " + ", ".join(f"{r.name}×{r.weight:g}" for r in cfg.rewards) + " (mean ± 95% interval).",
        "",
        markdown_table(results),
        "",
        f"Student overtakes teacher at step: {step if step is not None else 'never'} ({source}).",
        "",
        "![samples](report/grid.png)",
    ]
    if curves:
        lines += ["", "![training curves](report/curves.png)"]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")
    return report

