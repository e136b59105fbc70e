"""Deterministic rollouts of a backbone's network over a σ schedule, keeping x0-predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rats_core.method.sigmas import ddim_step, initial_latents
from rats_core.registry.interfaces import Backbone


@dataclass
class Rollout:
    sigmas: Tensor
    #: x0-prediction at each kept step index (all steps unless ``keep`` was given)
    x0: dict[int, Tensor] = field(default_factory=dict)
    #: the final latent at σ = 0
    final: Tensor | None = None
    #: the (detached) latent at σ_j before step j, for each step index in ``keep_states``
    states: dict[int, Tensor] = field(default_factory=dict)


def rollout(
    backbone: Backbone,
    denoiser: nn.Module,
    noise: Tensor | None,
    cond: Any,
    sigmas: Tensor,
    *,
    guidance_scale: float = 1.0,
    grad_steps: int = 0,
    local_grad_steps: Iterable[int] = (),
    keep: Iterable[int] | None = None,
    checkpointing: bool = False,
    keep_states: Iterable[int] = (),
    start: Tensor | None = None,
) -> Rollout:
    """Sample from ``noise`` along ``sigmas`` with deterministic DDIM steps.

    Gradient, DRaFT-K style: only the last ``grad_steps`` steps are differentiated *through the
    trajectory* (earlier steps run under ``no_grad``). Steps listed in ``local_grad_steps`` (the
    matched horizons) also keep the gradient of their own network evaluation, but their input is a
    detached state and their output is detached before it moves the trajectory on, so no gradient
    crosses steps outside the last ``grad_steps``. ``grad_steps=0`` and no local steps: no gradient.

    ``start``: begin from this latent at ``sigmas[0]`` instead of the noise scaled to it (a
    continuation of another trajectory); ``keep_states``: keep the latent before those steps.
    """
    n = len(sigmas) - 1
    first_chain = n - grad_steps
    local = set(local_grad_steps)
    keep_set = set(range(n)) if keep is None else set(keep)
    x = initial_latents(noise, sigmas[0], backbone.interpolation) if start is None else start
    keep_state_set = set(keep_states)
    out = Rollout(sigmas=sigmas)
    # Read once: testing `sigmas[j + 1] > 0` on a GPU tensor every step would synchronise each step.
    last_step = [s > 0 for s in sigmas.tolist()[1:]]
    dtype = _param_dtype(denoiser)
    grad_enabled = torch.is_grad_enabled()
    for j in range(n):
        sigma, sigma_next = sigmas[j], sigmas[j + 1]
        chain = j >= first_chain
        with_grad = chain or j in local
        if not chain:
            x = x.detach()
        if j in keep_state_set:
            out.states[j] = x.detach()
        with torch.enable_grad() if with_grad and grad_enabled else torch.no_grad():
            if with_grad and checkpointing and grad_enabled:
                x0 = checkpoint(
                    _predict, backbone, denoiser, x, sigma, cond, guidance_scale, dtype, use_reentrant=False
                )
            else:
                x0 = _predict(backbone, denoiser, x, sigma, cond, guidance_scale, dtype)
        if j in keep_set:
            out.x0[j] = x0
        step_x0 = x0 if chain else x0.detach()
        x = ddim_step(x, step_x0, sigma, sigma_next, backbone.interpolation) if last_step[j] else step_x0
    out.final = x
    return out


def _predict(
    backbone: Backbone,
    denoiser: nn.Module,
    x: Tensor,
    sigma: Tensor,
    cond: Any,
    guidance_scale: float,
    dtype: torch.dtype | None = None,
) -> Tensor:
    dtype = dtype or _param_dtype(denoiser)
    if dtype in (torch.bfloat16, torch.float16) and not torch.is_autocast_enabled(x.device.type):
        # A low-precision network (e.g. DeepSpeed bf16) sees float32 latents and text features:
        # autocast casts them at each op, so backbones need no dtype plumbing of their own.
        with torch.autocast(x.device.type, dtype=dtype):
            return backbone.predict_x0(denoiser, x, sigma, cond, guidance_scale=guidance_scale).to(x.dtype)
    # Under the trainer's bf16 autocast the network returns bf16: the trajectory stays in x's dtype.
    return backbone.predict_x0(denoiser, x, sigma, cond, guidance_scale=guidance_scale).to(x.dtype)


def _param_dtype(module: nn.Module) -> torch.dtype | None:
    """The network's compute dtype: a 16-bit one if any of its weights is 16-bit (a LoRA on a bf16 base
    has float32 adapters and bf16 base weights; diffusers keeps a few modules of 16-bit models in
    float32), else the first parameter's."""
    first = None
    for p in module.parameters():
        if p.dtype in (torch.bfloat16, torch.float16):
            return p.dtype
        if first is None:
            first = p.dtype
    return first


@torch.no_grad()
def sample(
    backbone: Backbone,
    denoiser: nn.Module,
    prompts: list[str],
    steps: int,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
    cond: Any = None,
    decode: bool = True,
) -> Tensor:
    """Plain K-step sampling (no gradient): images in [0, 1], or latents when ``decode=False``."""
    if noise is None:
        noise = torch.randn(backbone.latent_shape(len(prompts)), generator=generator)
    device = next(iter(denoiser.parameters())).device
    noise = noise.to(device)
    if cond is None:
        cond = backbone.encode_prompts(prompts)
    r = rollout(backbone, denoiser, noise, cond, backbone.sigmas(steps).to(device), guidance_scale=guidance_scale, keep=())
    return backbone.decode(r.final) if decode else r.final

