"""The pictures of a report: the image grid, video frame strips and GIFs, the training curves and the
reward-versus-NFE plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from rats_core.evaluation.history import smooth
from rats_core.evaluation.variants import human_label, ordered, steps_label
from rats_core.method.rewards import frame_indices


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
        for lab in ordered(list(images), results):
            steps = results[lab]["steps"] if results and lab in results else None
            rows[lab] = human_label(lab) + (f"\n{steps_label(steps)}" if steps is not None else "")
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
