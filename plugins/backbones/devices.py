"""Devices and dtypes of the diffusers backbones: where the parts go and in which precision."""

from __future__ import annotations

import torch
from torch import nn

#: ``backbone.dtype`` / ``denoiser_dtype`` names (:data:`.options.DtypeName`) → torch dtypes
DTYPES = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        # the current CUDA device: under a launcher the trainer has set it to this rank's GPU already
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def module_dtype(module: nn.Module) -> torch.dtype:
    """The compute dtype of a (possibly wrapped) network: its first floating-point parameter's."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module
