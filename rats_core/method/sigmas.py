"""σ-space maths shared by every backbone: interpolations, x0 conversions, DDIM steps, and the
σ-aligned teacher schedule.

``"ve"``:   ``x = x0 + σ·eps``            (eps-/v-prediction models seen in Karras/Euler form)
``"flow"``: ``x = (1 − σ)·x0 + σ·eps``    (rectified flow)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

INTERPOLATIONS = ("ve", "flow")


def _b(sigma: Tensor | float, like: Tensor) -> Tensor:
    """σ broadcastable against ``like`` (a scalar or a per-sample [B] tensor)."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return s.reshape(-1, *([1] * (like.dim() - 1))) if s.dim() == 1 else s


def initial_latents(noise: Tensor, sigma0: Tensor | float, interpolation: str) -> Tensor:
    """The latent at the schedule's first σ, from unit noise (x0 taken as 0: pure noise)."""
    if interpolation == "ve":
        return noise * _b(sigma0, noise)
    if interpolation == "flow":
        return noise * _b(sigma0, noise)
    raise ValueError(f"unknown interpolation {interpolation!r}")


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor | float, interpolation: str) -> Tensor:
    s = _b(sigma, x0)
    if interpolation == "ve":
        return x0 + s * noise
    if interpolation == "flow":
        return (1 - s) * x0 + s * noise
    raise ValueError(f"unknown interpolation {interpolation!r}")


def ddim_step(x: Tensor, x0: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, interpolation: str) -> Tensor:
    """Deterministic step from σ to σ_next given the x0-prediction (DDIM = Euler in these coordinates)."""
    s, sn = _b(sigma, x), _b(sigma_next, x)
    if interpolation == "ve":
        return x0 + (sn / s) * (x - x0)
    if interpolation == "flow":
        eps = (x - (1 - s) * x0) / s
        return (1 - sn) * x0 + sn * eps
    raise ValueError(f"unknown interpolation {interpolation!r}")


def x0_from_eps(x: Tensor, sigma: Tensor | float, eps: Tensor) -> Tensor:
    """eps-prediction → x0 in VE coordinates (``x = x0 + σ·eps``)."""
    return x - _b(sigma, x) * eps


def x0_from_v(x: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
    """v-prediction → x0 in VE coordinates; the network saw ``x / sqrt(σ² + 1)``."""
    s = _b(sigma, x)
    return x / (s**2 + 1) - v * s / (s**2 + 1).sqrt()


def x0_from_flow(x: Tensor, sigma: Tensor | float, velocity: Tensor) -> Tensor:
    """Flow velocity ``v = eps − x0`` → x0 (``x = (1 − σ)·x0 + σ·eps``)."""
    return x - _b(sigma, x) * velocity


def ve_model_input(x: Tensor, sigma: Tensor | float) -> Tensor:
    """What an eps/v network expects: ``x_t = x / sqrt(σ² + 1)`` (diffusers' ``scale_model_input``)."""
    return x / (_b(sigma, x) ** 2 + 1).sqrt()


@dataclass(frozen=True)
class AlignedSchedules:
    """Student and teacher σ schedules with the teacher step matching each student step."""

    student: Tensor  # [K+1]
    teacher: Tensor  # [N'+1]
    #: student step k -> teacher step index at (or nearest to) the same σ
    teacher_index: tuple[int, ...]
    exact: bool


def align_schedules(student: Tensor, teacher_base: Tensor, mode: str = "superset") -> AlignedSchedules:
    """Build the teacher schedule so its σ's line up with the student's.

    ``superset`` (default): every student σ_k (k < K) replaces the nearest σ of the teacher's own
    N-step schedule, so the teacher still takes N steps and visits each student σ exactly; if two
    student σ's would claim the same teacher step, the student σ is inserted instead (N grows).
    ``nearest``: keep the teacher's schedule and match each student step to the nearest teacher σ,
    warning when they differ.
    """
    student = student.detach().double().cpu()
    teacher = teacher_base.detach().double().cpu().clone()
    k_steps = len(student) - 1
    if mode == "nearest":
        index = [int(torch.argmin((teacher[:-1] - student[k]).abs())) for k in range(k_steps)]
        gaps = [abs(float(teacher[i] - student[k])) for k, i in enumerate(index)]
        exact = all(g <= 1e-6 * max(1.0, float(student[k])) for k, g in enumerate(gaps))
        if not exact:
            log.warning(
                "teacher schedule does not contain every student sigma; matching nearest (largest gap %.4g). "
                "Use teacher.alignment=superset for exact alignment.",
                max(gaps),
            )
        return AlignedSchedules(student.float(), teacher.float(), tuple(index), exact)
    if mode != "superset":
        raise ValueError(f"unknown alignment mode {mode!r}")
    values = teacher.tolist()
    taken: set[int] = set()
    for k in range(k_steps):
        target = float(student[k])
        free = [i for i in range(len(values) - 1) if i not in taken]
        i = min(free, key=lambda j: abs(values[j] - target)) if free else None
        ok = i is not None and (i == 0 or values[i - 1] > target) and values[i + 1] < target
        if ok:
            values[i] = target
            taken.add(i)
        else:
            values.append(target)
            values.sort(reverse=True)
            taken = {values.index(float(student[j])) for j in range(k + 1)}
    sched = torch.tensor(values, dtype=torch.float64)
    index = tuple(int(torch.nonzero(sched == student[k])[0]) for k in range(k_steps))
    return AlignedSchedules(student.float(), sched.float(), index, True)
