"""``scene-attributes``: a *second* attribute judge as a differentiable reward -- a diagnostic.

The shipped scenes reward is a tiny CLIP (the stock ``pickscore`` plugin) that ranks the generator's
images right-above-wrong only a little better than chance. Is that what keeps the 2-step student
under the teacher on the judge, or would a reward that sees what the judge sees not help either?
This reward answers it: it scores an image by how well a judge network's reading matches the
prompt. It must be **another** judge than the evaluation's -- trained with another seed and data
stream (``python -m rats_plugins.scenes.pretrain --what judge --seed 1 --out DIR``, then
``path: DIR/judge``) -- so the evaluation judge still never sees training. It refuses the shipped
evaluation judge (by path or by identical weights). Two judges trained on the same kind of renders
still agree far more than a preference model would: a run with it shows what RATS does with a
near-ideal reward, not a result on the world's real reward (benchmarks/README.md).

Score per image (higher is better, 0 is a perfect reading)::

    -sum_cells |mass(colour, shape) - wanted(colour, shape)|  +  relation_weight * min(margin, 0.15)

``mass`` is the judge's density summed per (colour, judge shape) -- its soft object count, a ``blob``
(malformed object) is never wanted; ``margin`` (relation prompts only) is how far the second object's
centre lies on the named side of the first's, along that axis minus across it, in image widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .judge import counts_and_centres
from .metrics import load_frozen_judge, refuse_evaluation_judge
from .world import RES, parse

#: the relation margin stops paying beyond this (a fraction of the image width): placing the objects
#: further apart is not "more left of"
MARGIN_CAP = 0.15


class SceneAttributes:
    """How well a (second, frozen) attribute judge's reading of the image matches the prompt."""

    #: prompts this component understands (see rats_core.registry.interfaces.EXAMPLE_PROMPTS_ATTRIBUTE)
    example_prompts = ["two red circles", "a blue square left of a yellow triangle"]

    def __init__(self, path: str | Path, relation_weight: float = 5.0):
        folder = Path(path).expanduser()
        refuse_evaluation_judge(folder, "scene-attributes reward")
        self.model = load_frozen_judge(folder, "scene-attributes reward")
        self.relation_weight = float(relation_weight)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
        if next(self.model.parameters()).device != images.device:
            self.model.to(images.device)
        x = images.float().clamp(0, 1)
        if x.shape[-2:] != (RES, RES):
            x = F.interpolate(x, size=(RES, RES), mode="area")
        density = self.model(x)                                  # [B, colours, shapes, GRID, GRID]
        mass = density.sum(dim=(-1, -2))                         # soft counts
        specs = [parse(p) for p in prompts]
        want = torch.from_numpy(np.stack([s.table() for s in specs])).float().to(mass.device)
        score = -(mass - want).abs().sum(dim=(1, 2))
        if any(s.relation is not None for s in specs):
            _, centres = counts_and_centres(density, eps=1e-3)   # [B, colours, shapes, (x, y)]
            bonus = []
            for i, s in enumerate(specs):
                if s.relation is None:
                    bonus.append(score.new_zeros(()))
                    continue
                a, b = s.cells()
                dx, dy = centres[i][b] - centres[i][a]
                margin = dx - dy.abs() if s.relation == "left of" else dy - dx.abs()
                bonus.append(self.relation_weight * margin.clamp(max=MARGIN_CAP))
            score = score + torch.stack(bonus)
        return score

