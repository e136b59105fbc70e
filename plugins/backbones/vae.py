"""The frozen image VAE of the diffusers backbones: loading it and the differentiable decode."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .devices import freeze, module_dtype
from .weights import Part, Source, load_part


def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """Differentiable VAE decode of model-space latents to images in [0, 1] (float32, latents' device)."""
    cfg_ = vae.config
    z = latents.to(next(vae.parameters()).device)
    mean = getattr(cfg_, "latents_mean", None)
    std = getattr(cfg_, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (z.dim() - 2)
        mean = torch.tensor(mean, device=z.device, dtype=z.dtype).reshape(shape)
        std = torch.tensor(std, device=z.device, dtype=z.dtype).reshape(shape)
        z = z * std / cfg_.scaling_factor + mean
    else:
        z = z / cfg_.scaling_factor + (getattr(cfg_, "shift_factor", None) or 0.0)
    image = vae.decode(z.to(module_dtype(vae)), return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1).to(latents.device)


def vae_scale_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def configure_vae(vae: nn.Module, slicing: bool, tiling: bool) -> None:
    if slicing:
        vae.enable_slicing()
    if tiling:
        vae.enable_tiling()


def load_vae(source: Source, part: Part, dtype: torch.dtype, variant: str | None, device: torch.device):
    """The frozen VAE. Those flagged ``force_upcast`` (SD/SDXL) overflow in fp16: kept in fp32 then
    (bf16 is fine)."""
    from diffusers import AutoencoderKL

    config = load_part(source, part, AutoencoderKL.load_config)
    if dtype == torch.float16 and config.get("force_upcast", False):
        dtype = torch.float32
    return freeze(load_part(source, part, AutoencoderKL.from_pretrained, dtype=dtype, variant=variant)).to(device)
