"""Rewards of the digits world.

``digit-confidence``: how sure a small CNN classifier (trained by ``pretrain`` on the train split,
with light augmentation) is that the image is a *clean* handwritten version of the digit its prompt
names. Besides the ten digits the classifier has an eleventh class, *degraded*, learnt from train
digits spoiled on purpose (blurred, faded, noisy, two digits blended; see
:func:`rats_plugins.digits.classifiers.degrade`). So, like a human-preference reward, it rewards
both prompt alignment and image quality: the soft, washed-out digits a 2-step sampler makes score
lower than the crisp ones of a 50-step sampler, although both are easy to read.

The default score is the **log-probability** ``log p(digit | image)`` over the eleven classes (≤ 0;
0 is certain). Log-probability rather than probability because its gradient does not vanish on the
samples that need it most — an image the classifier reads as another digit, or as degraded, has
``p ≈ 0`` and a flat probability but a steep log-probability — while the classifier's label
smoothing keeps real digits near ``log 0.9 ≈ −0.1`` instead of pushing logits without bound, which
limits how much there is to gain by over-optimising easy samples.

``digit-sharpness``: ``mean |2·pixel − 1|``, how close every pixel is to pure ink or pure paper
(1 for a binary image, 0 for flat grey). Few-step samples are blurry and grey; use it with a small
weight next to ``digit-confidence`` (alone it is trivially maximised by a blank page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from rats_core.errors import WeightsNotFoundError

from .backbone import WEIGHTS_DIR
from .classifiers import load_classifier
from .data import parse_digits, to_classifier_input


def load_frozen_classifier(path: str | Path | None, part: str, who: str):
    folder = Path(path).expanduser() if path is not None else WEIGHTS_DIR / part
    if not (folder / "model.safetensors").exists():
        raise WeightsNotFoundError(
            f"{who}: no classifier weights in {folder}; create them with "
            f"`python -m rats_plugins.digits.pretrain --what {part}`"
        )
    return load_classifier(folder)


class DigitConfidence:
    """``log p(prompt's digit | image)`` (or ``p``) under the frozen reward classifier; differentiable."""

    #: prompts this component understands (see rats_core.registry.interfaces.EXAMPLE_PROMPTS_ATTRIBUTE)
    example_prompts = ["a handwritten 7", "the digit zero"]

    def __init__(self, path: str | Path | None = None, score: str = "log_prob"):
        self.model = load_frozen_classifier(path, "reward", "digit-confidence reward")
        self.resolution = self.model.resolution
        self.score = score

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
        if next(self.model.parameters()).device != images.device:
            self.model.to(images.device)
        digits = parse_digits(prompts).to(images.device)
        logp = self.model(to_classifier_input(images, self.resolution)).float().log_softmax(dim=1)
        chosen = logp.gather(1, digits[:, None]).squeeze(1)
        return chosen.exp() if self.score == "prob" else chosen


class DigitSharpness:
    """``mean |2·pixel − 1|`` over the grey image: 1 for pure ink/paper, 0 for flat grey."""

    #: prompts this component understands (see rats_core.registry.interfaces.EXAMPLE_PROMPTS_ATTRIBUTE)
    example_prompts = ["a handwritten 7", "the digit zero"]

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        grey = images.float().mean(dim=1)
        return (2 * grey - 1).abs().mean(dim=(1, 2))
