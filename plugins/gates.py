"""Reward-aware gates: how strongly each sample is pulled towards the teacher's trajectory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from rats_core import hookimpl

if TYPE_CHECKING:  # the gates use tensor methods only: listing or validating them imports no torch
    import torch


class SigmoidGate:
    """The paper's gate: ``g = sigmoid((R_T − R_S) / τ)``.

    Teacher better → g → 1 (shape strongly), equal → 0.5, student better → g → 0 (let the reward drive).
    """

    def __init__(self, tau: float = 1.0):
        self.tau = tau

    def __call__(self, teacher_reward: torch.Tensor, student_reward: torch.Tensor) -> torch.Tensor:
        return ((teacher_reward - student_reward) / self.tau).sigmoid()


class HardGate:
    """``g = 1[R_T > R_S + margin]``: imitate only while the teacher is clearly better."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    def __call__(self, teacher_reward: torch.Tensor, student_reward: torch.Tensor) -> torch.Tensor:
        return (teacher_reward > student_reward + self.margin).to(teacher_reward.dtype)


class ConstantGate:
    """``g = c`` for every sample: ``c = 1`` always distils, ``c = 0`` is reward-only training."""

    def __init__(self, c: float = 1.0):
        self.c = c

    def __call__(self, teacher_reward: torch.Tensor, student_reward: torch.Tensor) -> torch.Tensor:
        return teacher_reward.new_full(teacher_reward.shape, self.c)


def sigmoid(tau: Annotated[float, Field(gt=0)] = 1.0) -> SigmoidGate:
    """sigmoid((R_T - R_S) / tau) - the paper's gate.

    Args:
        tau: temperature in reward units; a reward gap of a few tau saturates the gate
    """
    return SigmoidGate(tau)


def hard(margin: float = 0.0) -> HardGate:
    """1 where R_T > R_S + margin, else 0.

    Args:
        margin: how much better the teacher's reward must be for the sample to be shaped
    """
    return HardGate(margin)


def constant(c: Annotated[float, Field(ge=0, le=1)] = 1.0) -> ConstantGate:
    """A fixed gate c (1: always distil, 0: reward only) for ablations.

    Args:
        c: the gate value for every sample
    """
    return ConstantGate(c)


@hookimpl
def register_gates(register):
    register("sigmoid", sigmoid)
    register("hard", hard)
    register("constant", constant)
