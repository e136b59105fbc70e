"""Reports a person reads: a markdown table, report.json, an image grid and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from rats_core.method.rewards import frame_indices
from rats_core.parallel.distributed import ranks_text
from rats_core.training.checkpoint import write_json_atomic as _write_json_atomic


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically, readable like any other file the run writes (0644 under the usual umask;
    the temporary file the atomic write goes through is created 0600)."""
    import os

    _write_json_atomic(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

#: the human names of the report's variants (shown base, teacher, student; see _ordered)
LABELS = {
    "base": "base model",
    "base_teacher_steps": "base model",
    "teacher": "teacher",
    "student": "RATS student",
}


def _label(label: str) -> str:
    """Human name of a training-report variant (``student_4`` is the student sampled with 4 steps,
    ``base_4`` the base model)."""
    head, _, tail = label.rpartition("_")
    if tail.isdigit() and head in LABELS:
        return LABELS[head]
    return LABELS.get(label, label)


def _ordered(labels: Sequence[str], results: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Base model, teacher, student, then anything else; within each by sampler steps (``results``'
    ``steps``, else the number a label ends with): base 1, 2, 4, 50 steps, teacher, student 1, 2, 4."""
    group = {"base": 0, "base_teacher_steps": 0, "teacher": 1, "student": 2}

    def key(label: str) -> tuple[int, float, str]:
        head, _, tail = label.rpartition("_")
        numbered = tail.isdigit() and head in group
        steps = (results or {}).get(label, {}).get("steps")
        if not isinstance(steps, (int, float)):
            steps = int(tail) if numbered else float("inf") if label == "base_teacher_steps" else 0
        return (group.get(head if numbered else label, len(group)), float(steps), label)

    return sorted(labels, key=key)


def smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def run_history(run_dir: Path, fallback: Sequence[dict[str, Any]] = (), last_step: int | None = None
                ) -> list[dict[str, Any]]:
    """The whole run's records, read from ``metrics.jsonl``, in step order.

    A resumed run appends to the file, and logs again the steps between the checkpoint it resumed
    from and the interruption: for each step the record written last wins (training records and
    held-out evaluation records separately). A torn last line (the process was killed while writing)
    is skipped. Records past ``last_step`` (an earlier attempt configured for more steps) are left out.
    Without a readable file, ``fallback`` (the records this process kept) is returned.
    """
    import json

    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return list(fallback)
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            continue
        if last_step is not None and rec["step"] > last_step:
            continue
        (evals if any(str(k).startswith("eval/") for k in rec) else train)[rec["step"]] = rec
    if not train and not evals:
        return list(fallback)
    # at one step the training record comes first, then that step's evaluation (as they were written)
    return [r for _, _, r in sorted([(s, 0, r) for s, r in train.items()] + [(s, 1, r) for s, r in evals.items()],
                                    key=lambda t: (t[0], t[1]))]


#: what report.md says about how the overtaking step is found (docs/eval.md has the full rule)
OVERTAKE_RULE = (
    "the first held-out evaluation during training (eval.every) at which the student's mean reward is above "
    "the teacher's; without such evaluations, the first logged step at which the student's training-batch "
    "reward, smoothed by a moving average over 5% of the steps, is above the teacher's"
)


def overtake_step(history: Sequence[dict[str, Any]]) -> tuple[int | None, str]:
    """The first step at which the student's reward exceeds the teacher's.

    The rule (also in docs/eval.md): when held-out evaluations were logged during training
    (``eval/reward_student`` and ``eval/reward_teacher``, every ``eval.every`` steps), the step of the
    first one where the student's mean held-out reward is strictly above the teacher's. Otherwise the
    training batches' rewards, each smoothed by a trailing moving average over ``max(1, n // 20)``
    logged steps, and the first step where the student's average is strictly above the teacher's.
    ``history`` must be the whole run's records (:func:`run_history`), not only those of the last
    resumed process. Returns ``(step or None, source)``.
    """
    evals = [h for h in history if "eval/reward_student" in h and "eval/reward_teacher" in h]
    if evals:
        source = f"held-out evaluations during training ({len(evals)}, steps {evals[0]['step']}–{evals[-1]['step']})"
        for h in evals:
            if h["eval/reward_student"] > h["eval/reward_teacher"]:
                return int(h["step"]), source
        return None, source
    train = [h for h in history if "reward_student" in h and "reward_teacher" in h]
    if not train:
        return None, "no history"
    window = max(1, len(train) // 20)
    what = f"training batches, moving average over {window} step{'s' if window > 1 else ''}"
    s = smooth([h["reward_student"] for h in train], window)
    t = smooth([h["reward_teacher"] for h in train], window)
    for h, a, b in zip(train, s, t):
        if a > b:
            return int(h["step"]), what
    return None, what


def stays_ahead(history: Sequence[dict[str, Any]], step: int | None) -> bool | None:
    """Whether the student is above the teacher at every held-out evaluation from ``step`` on (None
    without held-out evaluations or an overtaking step)."""
    evals = [h for h in history if "eval/reward_student" in h and "eval/reward_teacher" in h]
    if step is None or not evals:
        return None
    return all(h["eval/reward_student"] > h["eval/reward_teacher"] for h in evals if h["step"] >= step)


def history_summary(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    train = [h["step"] for h in history if "reward_student" in h]
    evals = [h["step"] for h in history if "eval/reward_student" in h]
    return {"train_records": len(train), "first_step": train[0] if train else None,
            "last_step": train[-1] if train else None, "eval_steps": evals}


def _history_line(history: Sequence[dict[str, Any]]) -> str:
    h = history_summary(history)
    if not h["train_records"]:
        return ""
    return (f"Curves: {h['train_records']} logged steps ({h['first_step']}–{h['last_step']}) from metrics.jsonl"
            + (f", held-out evaluations at steps {', '.join(map(str, h['eval_steps']))}" if h["eval_steps"] else "")
            + ".")


def run_line(ranks: int, resumed_at: Sequence[int]) -> str:
    """How the run went: on how many ranks, and whether it was interrupted and resumed (and where)."""
    if not resumed_at:
        return f"Trained on {ranks_text(ranks)}, in one go (never interrupted)."
    steps = ", ".join(str(s) for s in resumed_at)
    times = "once" if len(resumed_at) == 1 else f"{len(resumed_at)} times"
    return (f"Trained on {ranks_text(ranks)}; interrupted and resumed {times}, from the checkpoint at step "
            f"{steps}.")


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    labels = _ordered(list(results), results)
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
        rows.append(f"| {_label(lab)} | {r.get('steps', '')} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def image_grid(
    images: dict[str, Tensor],
    prompts: Sequence[str],
    path: Path,
    columns: int = 8,
    results: dict[str, dict[str, Any]] | None = None,
    *,
    rows: dict[str, str] | None = None,
    scores: dict[str, Tensor] | None = None,
    score_name: str = "reward",
    title: str | None = None,
    marks: dict[str, Sequence[tuple[bool, str]]] | None = None,
) -> Path:
    """One row per model, one column per prompt (the same noise down each column).

    ``rows`` maps the keys of ``images`` to row titles, in display order (default: the training
    report's variants, titled from ``results``' step counts). ``scores`` gives a number to print above
    each image; ``marks`` a judge's verdict per image (``(right, note)``): a green or red frame, and
    ✓ or ✗ with the note above the image. Prompts are printed under the bottom row. Small images
    are drawn with nearest-neighbour upscaling (every pixel a visible block, nothing invented).
    A video ``[B, 3, F, H, W]`` is drawn as its first, middle and last frame side by side (:func:`frame_strip`).
    """
    plt = _pyplot()
    if rows is None:
        rows = {}
        for lab in _ordered(list(images), results):
            steps = results[lab]["steps"] if results and lab in results else None
            rows[lab] = _label(lab) + (f"\n{steps_label(steps)}" if steps is not None else "")
    keys = [k for k in rows if k in images]
    cols = max(1, min(columns, len(prompts), *(len(images[k]) for k in keys)))
    aspect = 1.0  # width / height of a cell: a video's frame strip is wider than high
    if keys and images[keys[0]].dim() == 5:
        num_frames = images[keys[0]].shape[2]
        shown = ", ".join(str(i + 1) for i in frame_indices(num_frames, STRIP_FRAMES))
        title = (f"{title}; " if title else "") + f"each video: frames {shown} of {num_frames}"
        strip = frame_strip(images[keys[0]][0])
        aspect = strip.shape[2] / strip.shape[1]
    # a wide cell (a frame strip) gets at most 2.5 times an image's width, and less height
    cell_w = 2.1 * min(aspect, 2.5)
    cell_h = cell_w / aspect
    # room for the score above each image and the wrapped prompt under the bottom row
    head = (0.3 if scores is not None else 0) + (0.3 if marks is not None else 0)
    width = cell_w * cols + 1.4
    if title:  # wrapped to the figure's width (about 11 characters per inch at this size)
        import textwrap

        title = textwrap.fill(title, max(30, int(width * 11)))
    title_height = 0.4 * (title.count("\n") + 1) if title else 0
    height = (cell_h + head) * len(keys) + 1.1 + title_height
    fig, axes = plt.subplots(len(keys), cols, figsize=(width, height), squeeze=False)
    for i, key in enumerate(keys):
        for j in range(cols):
            ax = axes[i][j]
            img = frame_strip(images[key][j]).float().permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(img, interpolation="nearest" if img.shape[0] < 128 else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            head = f"{score_name} {float(scores[key][j]):.3g}" if scores is not None and key in scores else ""
            colour = "black"
            if marks is not None and key in marks:
                ok, note = marks[key][j]
                colour = "#1a9641" if ok else "#d7191c"
                head = (head + "\n" if head else "") + ("✓ right" if ok else "✗ " + (note or "wrong"))
                for side in ax.spines.values():
                    side.set_edgecolor(colour)
                    side.set_linewidth(3)
            if head:
                ax.set_title(head, fontsize=8 if "\n" in head else 9, pad=3, color=colour)
            if i == len(keys) - 1:
                ax.set_xlabel(_wrap(prompts[j], 22), fontsize=9)
            if j == 0:
                ax.set_ylabel(rows[key], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - title_height / height) if title else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spread_columns(prompts: Sequence[str], n: int) -> list[int]:
    """Indices of up to ``n`` images with distinct prompts, spread evenly over the prompt list (the
    first ``n`` images would show one prompt several times when images_per_prompt > 1)."""
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        first.setdefault(p, i)
    distinct = list(first.values())
    if len(distinct) <= n:
        return distinct
    return [distinct[round(j * (len(distinct) - 1) / (n - 1))] for j in range(n)] if n > 1 else distinct[:1]


def steps_label(steps: Any) -> str:
    return "1 step" if str(steps) == "1" else f"{steps} steps"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: frames of a video that a grid cell or a PNG shows side by side: the first, the middle and the last
STRIP_FRAMES = 3
#: frame rate of the GIFs written for videos (Wan2.1's 16 fps)
GIF_FPS = 16


def frame_strip(image: Tensor, frames: int | None = STRIP_FRAMES) -> Tensor:
    """A video ``[3, F, H, W]`` as one image ``[3, H, n·W + gaps]``: ``frames`` evenly spaced frames
    (:func:`rats_core.method.rewards.frame_indices`: first, middle and last by default) side by side, a thin
    white gap between them. An image ``[3, H, W]`` is returned as it is."""
    if image.dim() == 3:
        return image
    _, f, h, _ = image.shape
    gap = image.new_ones(image.shape[0], h, max(1, h // 32))
    parts: list[Tensor] = []
    for i in frame_indices(f, frames):
        parts += [gap, image[:, i]] if parts else [image[:, i]]
    return torch.cat(parts, dim=2)


def image_suffix(image: Tensor) -> str:
    """The file suffix :func:`save_image` is given for one sample written to a folder: ``.gif`` (every
    frame) for a video ``[3, F, H, W]``, ``.png`` for an image."""
    return ".gif" if image.dim() == 4 else ".png"


def save_image(image: Tensor, path: Path, scale: int = 1) -> Path:
    """Write one ``[3, H, W]`` image in [0, 1] as an 8-bit PNG of H×W pixels, or ``scale`` times that
    (nearest-neighbour: each pixel becomes a ``scale``×``scale`` block, nothing is invented).

    A video ``[3, F, H, W]`` is written as a looping animated GIF of every frame (``GIF_FPS``) when
    ``path`` ends in ``.gif``, else as a PNG of its :func:`frame_strip` (first, middle, last frame)."""
    from PIL import Image

    def pixels(img: Tensor) -> Image.Image:
        arr = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        if scale > 1:
            arr = arr.repeat(scale, axis=0).repeat(scale, axis=1)
        return Image.fromarray(arr)

    if Path(path).suffix.lower() == ".gif":
        frames = [pixels(f) for f in (image.unbind(1) if image.dim() == 4 else [image])]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / GIF_FPS),
                       loop=0)
    else:
        pixels(frame_strip(image)).save(path, format="PNG")
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
    if len(lines) > 3:
        lines = lines[:3]
        lines[-1] = lines[-1][: width - 1] + "…"
    return "\n".join(lines)


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



# ----------------------------------------------------------------------------- reward versus NFE

#: how each model is drawn in the reward-versus-NFE plot
MODEL_STYLE = {
    "base": {"label": "base model", "color": "0.35", "marker": "o", "linestyle": "-"},
    "teacher": {"label": "teacher", "color": "C1", "marker": "*", "linestyle": "none", "markersize": 11},
    "student": {"label": "RATS student", "color": "C0", "marker": "s", "linestyle": "-"},
}
MODEL_ORDER = ("base", "teacher", "student")


def nested_results(results: dict[str, dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The training report's flat results (``{label: {steps, reward, reward_ci95, metric…}}``) as
    ``{model: {steps: {"rewards": {name: {mean, ci95, n}}, "metrics": {...}}}}``, like ``rats eval``."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for label, r in results.items():
        model = "base" if label.startswith("base") else "teacher" if label == "teacher" else "student"
        rewards = {k: {"mean": r[k], "ci95": r[f"{k}_ci95"], "n": r.get("n")} for k in r if f"{k}_ci95" in r}
        skip = set(rewards) | {"steps", "n"}
        metrics = {k: v for k, v in r.items() if k not in skip and not k.endswith("_ci95")}
        out.setdefault(model, {})[int(r["steps"])] = {"steps": int(r["steps"]), "rewards": rewards, "metrics": metrics}
    return out


def _models(results: dict[str, Any]) -> list[str]:
    return [m for m in MODEL_ORDER if m in results] + sorted(m for m in results if m not in MODEL_ORDER)


def reward_vs_nfe(
    results: dict[str, dict[Any, dict[str, Any]]],
    path: Path,
    *,
    reference_steps: int | None = None,
    titles: dict[str, str] | None = None,
    title: str | None = None,
    teacher_label: str = "teacher",
    names: Sequence[str] | None = None,
) -> Path:
    """One panel per reward (and per metric): mean ± 95% interval against the number of sampler
    steps, one line per model. A dotted line marks the base model at ``reference_steps`` (the
    many-step result a few-step student has to beat).

    ``results`` is ``{model: {steps: {"rewards": {name: {mean, ci95}}, "metrics": {name: value}}}}``;
    ``names`` picks and orders the panels (default: every reward, then every metric).
    """
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator

    models = _models(results)
    rewards: list[str] = []
    metrics: list[str] = []
    all_steps: set[int] = set()
    for m in models:
        for s, cell in results[m].items():
            all_steps.add(int(s))
            rewards += [k for k in cell.get("rewards", {}) if k not in rewards]
            metrics += [k for k in cell.get("metrics", {}) if k not in metrics]
    panels = [(k, "rewards") for k in rewards] + [(k, "metrics") for k in metrics]
    if names is not None:  # only these, in this order
        kinds = dict((k, sec) for k, sec in reversed(panels))
        panels = [(k, kinds[k]) for k in names if k in kinds]
    ncols = min(3, max(1, len(panels)))
    nrows = -(-len(panels) // ncols)
    height = 3.5 * nrows + 0.9
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, height), squeeze=False)
    steps_sorted = sorted(all_steps)
    log_x = len(steps_sorted) > 1 and steps_sorted[-1] / max(1, steps_sorted[0]) >= 4
    handles: dict[str, Any] = {}
    for idx, (name, section) in enumerate(panels):
        ax = axes[idx // ncols][idx % ncols]
        for m in models:
            cells = [(int(s), c) for s, c in results[m].items() if name in c.get(section, {})]
            cells.sort(key=lambda t: t[0])
            if not cells:
                continue
            style = dict(MODEL_STYLE.get(m, {"label": m, "marker": "^", "linestyle": "-"}))
            if m == "teacher":
                style["label"] = teacher_label
            xs = [s for s, _ in cells]
            if section == "rewards":
                ys = [c["rewards"][name]["mean"] for _, c in cells]
                err = [c["rewards"][name].get("ci95", 0.0) for _, c in cells]
                h = ax.errorbar(xs, ys, yerr=err, capsize=3, linewidth=1.6, **style)
            else:
                ys = [c["metrics"][name] for _, c in cells]
                h = ax.plot(xs, ys, linewidth=1.6, **style)[0]
            handles.setdefault(style["label"], h)
        base = results.get("base", {})
        ref = base.get(reference_steps, base.get(str(reference_steps))) if reference_steps is not None else None
        if ref is not None and name in ref.get(section, {}):
            v = ref[section][name]["mean"] if section == "rewards" else ref[section][name]
            line = ax.axhline(v, color="0.35", linestyle=":", linewidth=1.2,
                              label=f"base model, {steps_label(reference_steps)} (reference)")
            handles.setdefault(line.get_label(), line)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(steps_sorted))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(s) for s in steps_sorted])
        ax.set_xlabel("sampler steps (NFE)")
        ax.set_ylabel("mean ± 95% interval (higher is better)" if section == "rewards" else metric_axis_label(name))
        _sensible_ylim(ax, name, section)
        direction = metric_direction(name) if section == "metrics" else "higher"
        arrow = {"higher": " ↑", "lower": " ↓"}.get(direction or "", "")
        ax.set_title((titles or {}).get(name, name if section == "rewards" else f"{name} (metric{arrow})"), fontsize=9)
        ax.grid(True, alpha=0.3)
    for idx in range(len(panels), nrows * ncols):
        axes[idx // ncols][idx % ncols].axis("off")
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: which way is better for metrics named like this (first match wins); plugins' metrics named otherwise
#: are labelled "value" without a direction
METRIC_DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("fid", "lower"), ("kid", "lower"), ("distance", "lower"), ("lpips", "lower"), ("error", "lower"),
    ("malformed", "lower"),
    ("loss", "lower"), ("accuracy", "higher"), ("precision", "higher"), ("recall", "higher"),
    ("score", "higher"), ("reward", "higher"), ("clip", "higher"), ("ssim", "higher"), ("psnr", "higher"),
)
#: metrics that are fractions in [0, 1]
FRACTION_METRICS = ("accuracy", "precision", "recall", "rate")


def metric_direction(name: str) -> str | None:
    low = name.lower()
    return next((d for key, d in METRIC_DIRECTIONS if key in low), None)


def metric_axis_label(name: str) -> str:
    d = metric_direction(name)
    return f"value ({d} is better)" if d else "value"


def _sensible_ylim(ax: Any, name: str, section: str) -> None:
    """Keep a near-constant quantity from looking dramatic: the y axis spans at least 10% of the
    values' magnitude (for a fraction such as an accuracy at least 0.1, within [0, 1])."""
    lo, hi = ax.get_ylim()
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y == y]  # noqa: PLR0124 (skip NaN)
    for coll in ax.collections:  # error bars
        for seg in getattr(coll, "get_segments", lambda: [])():
            ys += [float(p[1]) for p in seg]
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    fraction = section == "metrics" and any(k in name.lower() for k in FRACTION_METRICS) and 0 <= lo and hi <= 1
    min_span = 0.1 if fraction else 0.1 * max(abs(lo), abs(hi), 1e-12)
    if hi - lo >= min_span:
        return
    mid = (lo + hi) / 2
    lo, hi = mid - min_span / 2, mid + min_span / 2
    if fraction and hi > 1:
        lo, hi = lo - (hi - 1), 1.0
    if fraction and lo < 0:
        lo, hi = 0.0, hi - lo
    pad = 0.08 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)


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
