"""Horizon schedules: which student steps are matched to the teacher at the same σ, and their weights.

Step ``k`` (0 ≤ k < K) is the student's k-th network evaluation, at ``σ_k``; the last one (k = K − 1)
predicts the final image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from rats_core import hookimpl

if TYPE_CHECKING:  # in annotations only: listing or validating the schedules imports no torch
    import torch


class AllSteps:
    """Every student step, with uniform or linearly increasing ("late") weights."""

    def __init__(self, weighting: str = "uniform"):
        self.weighting = weighting

    def __call__(self, student_sigmas: torch.Tensor) -> list[tuple[int, float]]:
        k = len(student_sigmas) - 1
        if self.weighting == "late":
            return [(i, float(i + 1)) for i in range(k)]
        return [(i, 1.0) for i in range(k)]


class LastSteps:
    """The last ``n`` student steps (``n = 1``: match only the final prediction)."""

    def __init__(self, n: int = 1):
        self.n = n

    def __call__(self, student_sigmas: torch.Tensor) -> list[tuple[int, float]]:
        k = len(student_sigmas) - 1
        return [(i, 1.0) for i in range(max(0, k - self.n), k)]


class FirstSteps:
    """The first ``n`` student steps: shape the coarse layout only (an ablation)."""

    def __init__(self, n: int = 1):
        self.n = n

    def __call__(self, student_sigmas: torch.Tensor) -> list[tuple[int, float]]:
        k = len(student_sigmas) - 1
        return [(i, 1.0) for i in range(min(self.n, k))]


class ExplicitSteps:
    """Steps and weights given in the config; negative steps count from the end (−1 = last)."""

    def __init__(self, steps: list[int], weights: list[float] | None = None):
        self.steps = list(steps)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.steps)

    def __call__(self, student_sigmas: torch.Tensor) -> list[tuple[int, float]]:
        k = len(student_sigmas) - 1
        out: dict[int, float] = {}
        for s, w in zip(self.steps, self.weights):
            idx = s + k if s < 0 else s
            if not 0 <= idx < k:
                raise ValueError(f"horizon step {s} is outside the student's {k} steps")
            out[idx] = out.get(idx, 0.0) + float(w)
        return sorted(out.items())


def all_steps(weighting: Literal["uniform", "late"] = "uniform") -> AllSteps:
    """Every student step (uniform or linearly increasing weights) - the paper's multi-horizon matching.

    Args:
        weighting: uniform (every step weighs 1) or late (step k weighs k + 1: later steps count more)
    """
    return AllSteps(weighting)


def last(n: Annotated[int, Field(gt=0)] = 1) -> LastSteps:
    """The last n student steps.

    Args:
        n: how many of the final student steps are matched (1: only the final prediction)
    """
    return LastSteps(n)


def first(n: Annotated[int, Field(gt=0)] = 1) -> FirstSteps:
    """The first n student steps (ablation).

    Args:
        n: how many of the first student steps are matched
    """
    return FirstSteps(n)


def explicit(
    steps: Annotated[list[int], Field(min_length=1)],
    weights: list[Annotated[float, Field(ge=0)]] | None = None,
) -> ExplicitSteps:
    """Explicit student steps and weights, e.g. steps: [0, -1], weights: [0.5, 1.0].

    Args:
        steps: student steps to match; negative ones count from the end (-1 = last)
        weights: one weight per step (default: all 1)
    """
    if weights is not None and len(weights) != len(steps):
        raise ValueError(f"{len(steps)} steps but {len(weights)} weights")
    if weights is not None and not any(w > 0 for w in weights):
        raise ValueError("at least one horizon weight must be positive")
    return ExplicitSteps(steps, weights)


@hookimpl
def register_horizons(register):
    register("all", all_steps)
    register("last", last)
    register("first", first)
    register("explicit", explicit)
