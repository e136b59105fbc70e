"""The digits world as a rats plugin: backbone ``digits``, rewards ``digit-confidence`` and
``digit-sharpness``, metrics ``digit-judge`` and ``digit-fid``. See ``experiments/digits.yaml``.

The factories live here and import no torch: their signatures are the option schemas that ``rats
plugins`` and config validation read, and each imports its model's module only when it builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from rats_core import hookimpl

if TYPE_CHECKING:
    from .backbone import DigitsBackbone
    from .metrics import DigitFID, DigitJudge
    from .rewards import DigitConfidence, DigitSharpness


def digits(
    path: str | None = None,
    resolution: Annotated[int, Field(gt=0, le=64)] | None = None,
) -> DigitsBackbone:
    """Tiny text-to-digit diffusion model (16x16 pixels, CPU-fast); ships pretrained weights."""
    from .backbone import DigitsBackbone

    return DigitsBackbone(path, resolution)


def digit_confidence(path: str | None = None, score: Literal["log_prob", "prob"] = "log_prob") -> DigitConfidence:
    """log p(clean handwritten <prompt digit> | image): small CNN with a degraded class, digits train split."""
    from .rewards import DigitConfidence

    return DigitConfidence(path, score)


def digit_sharpness() -> DigitSharpness:
    """mean |2*pixel - 1|: crisp ink-or-paper pixels (use with a small weight)."""
    from .rewards import DigitSharpness

    return DigitSharpness()


def digit_judge(path: str | None = None) -> DigitJudge:
    """Accuracy of an independent judge classifier at reading the prompt's digit (judge_accuracy)."""
    from .metrics import DigitJudge

    return DigitJudge(path)


def digit_fid(path: str | None = None) -> DigitFID:
    """Frechet distance of judge features: generated vs real held-out digits (fid, lower is better)."""
    from .metrics import DigitFID

    return DigitFID(path)


@hookimpl
def register_backbones(register):
    register("digits", digits)


@hookimpl
def register_rewards(register):
    register("digit-confidence", digit_confidence)
    register("digit-sharpness", digit_sharpness)


@hookimpl
def register_metrics(register):
    register("digit-judge", digit_judge)
    register("digit-fid", digit_fid)
