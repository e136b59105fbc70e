"""The scenes judge: an attribute model that is never used in training (GenEval in miniature).

A small CNN reads a 32x32 scene into a table of object counts per (colour, shape) -- with an extra
``blob`` shape for malformed objects, learnt from near misses (ragged, star-shaped, squashed or
smeared shapes), so a ragged square is not counted as a square -- and the mean centre of each
cell's objects. :func:`grade` compares that reading with the prompt:

* ``count``     the number of objects is right
* ``colour``    the number of objects of every colour is right
* ``shape``     the number of objects of every shape is right (any blob makes it wrong)
* ``relation``  (relation prompts only) both named objects are found and the second one's centre lies
                on the named side of the first's, along the dominant axis
* ``all``       the whole count table is exactly right (and the relation, if any)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
import torch.nn.functional as F
from torch import Tensor, nn

from .world import COLOURS, JUDGE_SHAPES, MAX_COUNT, RES, SHAPES, Spec, parse

N_COLOURS, N_SHAPES, N_COUNTS = len(COLOURS), len(JUDGE_SHAPES), MAX_COUNT + 1
N_CELLS = N_COLOURS * N_SHAPES
FEATURES = 64
GRID = 8  # density map resolution: one cell per 4x4 pixels


class JudgeNet(nn.Module):
    """Fully convolutional counter: an 8x8 density map per (colour, judge shape) whose sum is the
    number of such objects and whose centre of mass is their mean position."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width

        def block(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.SiLU())

        self.body = nn.Sequential(
            block(3, w, 1), block(w, 2 * w, 2),  # 16
            block(2 * w, 2 * w, 1), block(2 * w, FEATURES, 2),  # 8
            block(FEATURES, FEATURES, 1),
        )
        self.head = nn.Conv2d(FEATURES, N_CELLS, 1)
        nn.init.constant_(self.head.bias, -6.0)  # start from "nothing anywhere": softplus(-6) * 64 ≈ 0.16
        self.width = width

    def features(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, 64]`` (the Fréchet distance is computed on these)."""
        return self.body(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Density maps ``[B, 6, 4, 8, 8]`` (non-negative) for images in [0, 1]."""
        d = F.softplus(self.head(self.body(x * 2 - 1)))
        return d.view(-1, N_COLOURS, N_SHAPES, GRID, GRID)


def density_target(objects: Sequence[tuple], sigma: float = 0.7) -> Tensor:
    """Each object a unit-mass Gaussian on the 8x8 grid at its centre."""
    t = torch.zeros(N_COLOURS, N_SHAPES, GRID, GRID)
    g = (torch.arange(GRID) + 0.5) * (RES / GRID)
    for c, s, x, y in objects:
        blob = torch.exp(-((g[None, :] - x) ** 2 + (g[:, None] - y) ** 2) / (2 * (sigma * RES / GRID) ** 2))
        t[c, s] += blob / blob.sum()
    return t


def counts_and_centres(density: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Counts ``[B, 6, 4]`` (rounded mass, clipped to MAX_COUNT) and centres ``[B, 6, 4, 2]`` in [0, 1]
    (differentiable; a cell's mass is floored at ``eps`` in the centre's denominator)."""
    mass = density.sum(dim=(-1, -2))
    counts = mass.round().clamp(0, MAX_COUNT).long()
    g = (torch.arange(GRID, dtype=density.dtype, device=density.device) + 0.5) / GRID
    cx = (density.sum(-2) * g).sum(-1) / mass.clamp(min=eps)
    cy = (density.sum(-1) * g).sum(-1) / mass.clamp(min=eps)
    return counts, torch.stack([cx, cy], dim=-1)


def save_judge(model: JudgeNet, folder: Path, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"width": model.width, **(extra or {})}, indent=1))


def load_judge(folder: Path) -> JudgeNet:
    cfg = json.loads((folder / "config.json").read_text())
    model = JudgeNet(cfg["width"])
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()})
    return model.eval().requires_grad_(False)


def to_judge_input(images: Tensor) -> Tensor:
    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[-1] != RES or x.shape[-2] != RES:
        x = torch.nn.functional.interpolate(x, size=(RES, RES), mode="area")
    return x


@torch.no_grad()
def read(model: JudgeNet, images: Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The judge's reading: counts ``[B, 6, 4]`` and centres ``[B, 6, 4, 2]``."""
    x = to_judge_input(images)
    counts, centres = [], []
    for i in range(0, len(x), batch_size):
        n, c = counts_and_centres(model(x[i : i + batch_size]))
        counts.append(n.numpy())
        centres.append(c.numpy())
    return np.concatenate(counts), np.concatenate(centres)


CATEGORIES = ("count", "colour", "shape", "relation", "all")


def grade_one(spec: Spec, counts: np.ndarray, centres: np.ndarray) -> dict[str, bool | None]:
    """Right/wrong per category for one image (``relation`` is None for counting prompts)."""
    want = spec.table()
    out: dict[str, bool | None] = {
        "count": bool(counts.sum() == want.sum()),
        "colour": bool((counts.sum(axis=1) == want.sum(axis=1)).all()),
        "shape": bool((counts.sum(axis=0) == want.sum(axis=0)).all()),
        "relation": None,
    }
    ok = bool((counts == want).all())
    if spec.relation is not None:
        cells = spec.cells()
        found = all(counts[c] >= 1 for c in cells)
        rel = False
        if found:
            (ax, ay), (bx, by) = centres[cells[0]], centres[cells[1]]
            dx, dy = bx - ax, by - ay
            rel = bool(dx > abs(dy)) if spec.relation == "left of" else bool(dy > abs(dx))
        out["relation"] = rel
        ok = ok and rel
    out["all"] = ok
    return out


def grade(model: JudgeNet, images: Tensor, prompts: Sequence[str]) -> list[dict[str, bool | None]]:
    return grade_reading(prompts, *read(model, images))


def grade_reading(prompts: Sequence[str], counts: np.ndarray, centres: np.ndarray) -> list[dict[str, bool | None]]:
    """:func:`grade_one` for every prompt, from the judge's reading (:func:`read`) of its image."""
    if len(counts) != len(prompts):
        raise ValueError(f"scenes judge: {len(counts)} images but {len(prompts)} prompts")
    return [grade_one(parse(p), counts[i], centres[i]) for i, p in enumerate(prompts)]


def summarise(grades: Sequence[dict[str, bool | None]]) -> dict[str, float]:
    """Accuracy per category (``relation`` over relation prompts only; NaN-free: 0 prompts -> omitted)."""
    out = {}
    for cat in CATEGORIES:
        vals = [g[cat] for g in grades if g[cat] is not None]
        if vals:
            out[cat] = float(np.mean(vals))
    return out


__all__ = ["JudgeNet", "grade", "grade_one", "grade_reading", "summarise", "read", "load_judge", "save_judge", "SHAPES"]
