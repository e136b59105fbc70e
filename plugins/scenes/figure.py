"""A grid a person can read: held-out samples upscaled (nearest), prompts under the columns, and every
image marked right (green frame) or wrong (red frame, with the failed categories) by the judge.

    python -m rats_plugins.scenes.figure RUN_DIR [--prompts 8] [--out RUN_DIR/report/judge_grid.png]

Rows: the base model (the shipped pipeline) at K = 1, 2, 4 and N = 50 steps and the run's student
(``RUN_DIR/export``, a StableDiffusionPipeline folder) at K = 1, 2, 4, each sampled through the sd15
backbone from the same noise per column, with the run's guidance scales.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def judge_grid(rows: dict[str, torch.Tensor], prompts: list[str], grades: dict[str, list[dict]], path: Path,
               title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rats_core.report import _wrap

    cols = len(prompts)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols + 1.6, 1.75 * len(rows) + 1.2), squeeze=False)
    for i, (label, imgs) in enumerate(rows.items()):
        for j in range(cols):
            ax = axes[i][j]
            ax.imshow(imgs[j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            g = grades[label][j]
            ok = g["all"]
            for side in ax.spines.values():
                side.set_edgecolor("#1a9641" if ok else "#d7191c")
                side.set_linewidth(3)
            short = {"count": "count", "colour": "col", "shape": "shape", "relation": "rel"}
            wrong = [v for k, v in short.items() if g.get(k) is False]
            ax.set_title("right" if ok else "✗ " + " ".join(wrong), fontsize=7,
                         color="#1a9641" if ok else "#d7191c", pad=2)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel(_wrap(prompts[j], 20), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    if not (run / "export" / "model_index.json").is_file() or not (run / "config.yaml").is_file():
        print(f"error: {run} is not a finished scenes run (no export/model_index.json or config.yaml)", file=sys.stderr)
        return 2
    import yaml

    from rats_core.evaluate import fixed_noise, generate
    from rats_plugins.backbones.sd15 import sd15

    from . import world
    from .metrics import SceneJudge
    from .pretrain import WEIGHTS_DIR

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    s_g, t_g = cfg["student"]["guidance_scale"], cfg["teacher"]["guidance_scale"]
    held = world.split_prompts("heldout")
    step = max(1, len(held) // args.prompts)
    prompts = held[::step][: args.prompts]
    judge = SceneJudge()
    base = sd15(str(WEIGHTS_DIR / "pipeline"), device="cpu")
    student = sd15(str(run / "export"), device="cpu")
    noise = fixed_noise(base, len(prompts), 1234)
    rows, grades = {}, {}
    with torch.no_grad():
        for name, bb, steps, g in [("base", base, 1, s_g), ("base", base, 2, s_g), ("base", base, 4, s_g),
                                   ("base", base, 50, t_g), ("student", student, 1, s_g),
                                   ("student", student, 2, s_g), ("student", student, 4, s_g)]:
            label = f"{name}\n{steps} step{'s' if steps > 1 else ''}"
            rows[label] = generate(bb, bb.denoiser, prompts, steps, noise, guidance_scale=g)
            grades[label] = judge.grades(rows[label], prompts)
    out = Path(args.out) if args.out else run / "report" / "judge_grid.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    judge_grid(rows, prompts, grades, out, "Held-out prompts, the same noise down each column; frame: the judge's "
               "verdict (green right, red wrong)")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
