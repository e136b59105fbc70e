"""σ-aligned multi-horizon trajectory matching: the per-sample shape loss ``L_shape``."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def horizon_distance(student_x0: Tensor, teacher_x0: Tensor, cosine_weight: float = 1.0, l2_weight: float = 1.0) -> Tensor:
    """``d = λ_cos·(1 − cos(S, T)) + λ_2·‖S − T‖² / dim`` per sample, on flattened latents. → ``[B]``."""
    s = student_x0.flatten(1).float()
    t = teacher_x0.flatten(1).float()
    d = s.new_zeros(s.shape[0])
    if cosine_weight:
        d = d + cosine_weight * (1 - F.cosine_similarity(s, t, dim=1, eps=1e-8))
    if l2_weight:
        d = d + l2_weight * (s - t).pow(2).sum(dim=1) / s.shape[1]
    return d


def shape_loss(
    student_x0: Mapping[int, Tensor],
    teacher_x0: Mapping[int, Tensor],
    horizons: list[tuple[int, float]],
    cosine_weight: float = 1.0,
    l2_weight: float = 1.0,
) -> Tensor:
    """``L_shape(i) = Σ_k w_k·d_k(i) / Σ_k w_k`` over the matched horizons. → ``[B]``.

    ``teacher_x0[k]`` is the teacher's x0-prediction at the student's σ_k.
    """
    total_w = sum(w for _, w in horizons)
    if total_w <= 0:
        raise ValueError("horizon weights sum to zero")
    acc = None
    for k, w in horizons:
        if w == 0:
            continue
        d = horizon_distance(student_x0[k], teacher_x0[k], cosine_weight, l2_weight)
        acc = w * d if acc is None else acc + w * d
    assert acc is not None
    return acc / total_w


def validate_horizons(horizons: list[tuple[int, float]], k_steps: int, name: str = "horizons") -> list[tuple[int, float]]:
    """Check a horizon schedule's output (plugins may be third-party); raise PluginError otherwise."""
    from rats_core.errors import PluginError

    try:
        out = [(int(k), float(w)) for k, w in horizons]
    except (TypeError, ValueError):
        raise PluginError(f"horizon schedule '{name}' must return [(step, weight), ...], got {horizons!r}") from None
    steps = [k for k, _ in out]
    if not out or len(set(steps)) != len(steps) or any(not 0 <= k < k_steps for k in steps):
        raise PluginError(
            f"horizon schedule '{name}' returned steps {steps}; need unique steps in 0..{k_steps - 1}"
        )
    if any(w < 0 or not torch.isfinite(torch.tensor(w)) for _, w in out) or sum(w for _, w in out) <= 0:
        raise PluginError(f"horizon schedule '{name}' returned weights {[w for _, w in out]}; need >= 0, sum > 0")
    return out
