"""A toy backbone and toy rewards: tiny, instant, dependency-free.

For smoke tests of the whole pipeline, plugin authors' own tests, and CI. Not a real image model:
the "image" is the 3×S×S latent itself mapped to [0, 1].

This module is what registers them, and it imports no torch: the network lives in
plugins/toy_model.py, imported when the backbone is built (``ToyBackbone`` and ``ToyDenoiser`` are still
importable from here).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence

from pydantic import Field

from rats_core import hookimpl

if TYPE_CHECKING:
    from torch import Tensor

    from .toy_model import ToyBackbone

_MODEL_NAMES = ("ToyBackbone", "ToyDenoiser")


def __getattr__(name: str) -> Any:  # PEP 562: the heavy names, imported on first use
    if name in _MODEL_NAMES:
        return getattr(importlib.import_module(".toy_model", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def toy(
    resolution: Annotated[int, Field(gt=0, le=64)] = 8,
    interpolation: Literal["ve", "flow"] = "flow",
    seed: int = 0,
    path: str | None = None,
) -> ToyBackbone:
    """A tiny random pixel-space model for smoke tests (no weights needed)."""
    from .toy_model import ToyBackbone

    return ToyBackbone(resolution=resolution, interpolation=interpolation, seed=seed)


class Brightness:
    """``−(mean(image) − target)²``: prefers images of a given mean brightness."""

    def __init__(self, target: float = 0.75):
        self.target = target

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return -(images.mean(dim=(1, 2, 3)) - self.target) ** 2


def brightness(target: Annotated[float, Field(ge=0, le=1)] = 0.75) -> Brightness:
    """Toy reward: -(mean brightness - target)^2."""
    return Brightness(target)


class Smoothness:
    """Negative total variation: prefers smooth images."""

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        dx = (images[..., 1:] - images[..., :-1]).abs().mean(dim=(1, 2, 3))
        dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        return -(dx + dy)


def smoothness() -> Smoothness:
    """Toy reward: negative total variation."""
    return Smoothness()


@hookimpl
def register_backbones(register):
    register("toy", toy)


@hookimpl
def register_rewards(register):
    register("toy-brightness", brightness)
    register("toy-smoothness", smoothness)
