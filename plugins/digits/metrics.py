"""Evaluation metrics of the digits world, from the independent judge classifier (never trained on).

``digit-judge`` → ``judge_accuracy``: the fraction of images the judge reads as the prompt's digit;
its ``marks`` frame each grid image right/wrong ("reads 3").
``digit-fid`` → ``fid``: the Fréchet distance between Gaussians fitted to the judge's 64-d
penultimate features of the images and of the real held-out digits (lower is better). With a few
hundred images it is biased upwards; compare it only between runs with the same number of images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..fid import feature_stats as _stats
from ..fid import frechet_distance  # noqa: F401  (part of this module's API)
from .data import load_split, parse_digits, to_classifier_input
from .rewards import load_frozen_classifier


class DigitJudge:

    #: prompts this component understands (see rats_core.registry.interfaces.EXAMPLE_PROMPTS_ATTRIBUTE)
    example_prompts = ["a handwritten 7", "the digit zero"]
    def __init__(self, path: str | Path | None = None):
        self.model = load_frozen_classifier(path, "judge", "digit-judge metric")

    @torch.no_grad()
    def read(self, images: Tensor) -> Tensor:
        """``[B]`` the digit the judge reads in each image."""
        return self.model.cpu()(to_classifier_input(images.detach().cpu(), self.model.resolution)).argmax(dim=1)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        return {"judge_accuracy": (self.read(images) == parse_digits(prompts)).float().mean().item()}

    def marks(self, images: Tensor, prompts: Sequence[str]) -> list[tuple[bool, str]]:
        """Per image: right, or wrong with the digit the judge read instead (the grids' frames)."""
        return [(bool(r == d), "" if r == d else f"reads {int(r)}")
                for r, d in zip(self.read(images).tolist(), parse_digits(prompts).tolist())]


class DigitFID:

    #: prompts this component understands (see rats_core.registry.interfaces.EXAMPLE_PROMPTS_ATTRIBUTE)
    example_prompts = ["a handwritten 7", "the digit zero"]
    def __init__(self, path: str | Path | None = None):
        self.model = load_frozen_classifier(path, "judge", "digit-fid metric")
        real, _ = load_split("heldout", self.model.resolution)
        with torch.no_grad():
            self.real_mu, self.real_cov = _stats(self.model.features(real))

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        if images.shape[0] < 2:
            raise ValueError("digit-fid needs at least 2 images")
        x = to_classifier_input(images.detach().cpu(), self.model.resolution)
        mu, cov = _stats(self.model.cpu().features(x))
        return {"fid": frechet_distance(mu, cov, self.real_mu, self.real_cov)}
