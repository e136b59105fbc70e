"""σ schedules, x0 parameterisations and classifier-free guidance, shared by the diffusers backbones.

The σ/timestep maths belongs to the model's own diffusers scheduler; what is here only asks it
(:class:`VESchedule`) or reproduces a pipeline's own rule (:func:`calculate_shift`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SchedulerSigmas:
    """σ's of ``self.scheduler.set_timesteps(n)``; each σ it gave is remembered with its exact timestep."""

    scheduler: Any
    _known: dict[float, float]

    def sigmas(self, num_steps: int) -> Tensor:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.scheduler.set_timesteps(num_steps)
        sigmas = self.scheduler.sigmas.detach().float().cpu().clone()
        for s, t in zip(sigmas[:-1].tolist(), self.scheduler.timesteps.cpu().tolist()):
            self._known[s] = float(t)
        return sigmas


class VESchedule(SchedulerSigmas):
    """The σ schedule of a discrete-time eps/v model, owned by diffusers' EulerDiscreteScheduler.

    The model's own scheduler config (betas, prediction type, ...) is kept; only the timestep spacing
    is set (``trailing`` by default, so few-step sampling starts at σ_max). Any σ in range maps to a
    (fractional) timestep by the scheduler's own rule, interpolating the training σ's in log-σ;
    σ's of a schedule this object produced map to exactly the scheduler's timesteps.
    """

    def __init__(self, scheduler_config: dict[str, Any], spacing: str = "trailing",
                 prediction_type: str | None = None):
        from diffusers import EulerDiscreteScheduler

        overrides: dict[str, Any] = {"timestep_spacing": spacing, "final_sigmas_type": "zero"}
        if prediction_type is not None:
            overrides["prediction_type"] = prediction_type
        self.scheduler = EulerDiscreteScheduler.from_config(dict(scheduler_config), **overrides)
        self.prediction_type: str = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported (epsilon, v_prediction, sample)")
        ac = self.scheduler.alphas_cumprod
        sig = ((1 - ac) / ac) ** 0.5  # float32, like the scheduler
        self._log_sigmas = sig.double().log()
        self.sigma_min = float(sig[0])
        self.sigma_max = float(sig[-1])
        self._continuous = self.scheduler.config.timestep_type == "continuous" and self.prediction_type == "v_prediction"
        self._known = {}

    def timestep(self, sigma: Tensor) -> Tensor:
        """Timestep(s) for σ (same shape), float32."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        if self._continuous:
            return 0.25 * sigma.clamp_min(1e-10).log()
        if sigma.numel() == 1 and float(sigma) in self._known:
            return torch.full_like(sigma, self._known[float(sigma)])
        log_sigmas = self._log_sigmas.to(sigma.device)
        log_sigma = sigma.double().clamp_min(1e-10).log().reshape(-1)
        dists = log_sigma[None, :] - log_sigmas[:, None]
        low = torch.cumsum((dists >= 0).int(), dim=0).argmax(dim=0).clamp(max=len(log_sigmas) - 2)
        high = low + 1
        lo, hi = log_sigmas[low], log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        t = (1 - w) * low + w * high
        return t.reshape(sigma.shape).float()

    def export_scheduler(self):
        """A fresh scheduler with the trained settings, for the exported pipeline."""
        from diffusers import EulerDiscreteScheduler

        return EulerDiscreteScheduler.from_config(self.scheduler.config)


def per_sample(value: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """A scalar or [B] tensor as a float32 [B] tensor on ``device``."""
    v = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    return v.expand(batch) if v.numel() == 1 else v


def ve_x0(prediction_type: str, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
    from rats_core.method.sigmas import x0_from_eps, x0_from_v

    if prediction_type == "epsilon":
        return x0_from_eps(x, sigma, output)
    if prediction_type == "v_prediction":
        return x0_from_v(x, sigma, output)
    return output  # "sample": the network predicts x0 itself


def cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    return uncond + scale * (cond - uncond)


def batch_cond(cond: dict[str, Any], negative: dict[str, Any], batch: int) -> dict[str, Any]:
    """``[negative ; cond]`` along the batch (negative is one row, expanded), as the pipelines do."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch:
            n = negative[k].to(v.device, v.dtype)
            out[k] = torch.cat([n.expand(batch, *n.shape[1:]), v], dim=0)
        else:
            out[k] = v
    return out


def to_device(cond: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in cond.items()}


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The FLUX / SD3 pipelines' resolution-dependent shift ``mu``: linear in the number of image tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


def guidance_batch(cond: dict[str, Any], negative: dict[str, Any], *inputs: Tensor) -> tuple[dict[str, Any], list[Tensor]]:
    """One batched pass for classifier-free guidance: ``[negative ; cond]`` and each input twice."""
    batch = inputs[0].shape[0]
    cond = batch_cond(cond, to_device(negative, inputs[0].device), batch)
    return cond, [torch.cat([t, t]) for t in inputs]
