"""Architectures: a part (denoiser, text encoder, VAE, reward tower) built on the meta device from
the architecture shipped in ``rats_plugins.archs`` or a local diffusers folder's ``config.json``, and its
parameter count.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rats_core.config import RatsConfig
from rats_core.errors import ConfigError

DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
#: backbone name -> (module, attribute) holding the default LoRA target module names
LORA_TARGETS = {
    "sd15": ("rats_plugins.backbones.sd15", "UNET_LORA_TARGETS"),
    "sdxl": ("rats_plugins.backbones.sd15", "UNET_LORA_TARGETS"),
    "pixart": ("rats_plugins.backbones.pixart", "PIXART_LORA_TARGETS"),
    "flux": ("rats_plugins.backbones.flux", "FLUX_LORA_TARGETS"),
    "sd35": ("rats_plugins.backbones.sd35", "SD3_LORA_TARGETS"),
    "wan": ("rats_plugins.backbones.wan", "WAN_LORA_TARGETS"),
}
#: denoisers whose latents are videos ``[B, C, F', h, w]`` (their VAE decodes frames ``[B, 3, F, H, W]``) ->
#: the backbone module with their defaults (DEFAULT_HEIGHT, DEFAULT_NUM_FRAMES) and decode (decode_frames)
VIDEO_DENOISERS = {"WanTransformer3DModel": "rats_plugins.backbones.wan"}
#: reward name -> shipped architecture
REWARD_ARCHS = {"imagereward": "imagereward", "hpsv2": "hps", "hpsv2.1": "hps", "hps": "hps",
                "pickscore": "pickscore", "aesthetic": "aesthetic", "clipscore": "clipscore"}


def to_dtype(name: Any, default: torch.dtype = torch.float32) -> torch.dtype:
    if name is None:
        return default
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPE_NAMES[str(name)]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r} (use fp32, bf16 or fp16)") from None


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


# ----------------------------------------------------------------------------- architectures


def load_arch(name: str) -> dict[str, Any]:
    """A shipped architecture (``rats_plugins.archs``) by name."""
    from rats_plugins import archs

    return archs.load(name)


def shipped_for(backbone: str, path: Any) -> str:
    """The shipped architecture to count for ``backbone`` at ``backbone.path``: the one whose ``model`` is that
    Hub id (e.g. ``sd35-large`` for stabilityai/stable-diffusion-3.5-large), else the backbone's own."""
    from rats_plugins import archs

    for name in archs.names():
        if name == backbone or name.startswith(backbone + "-"):
            if path and str(load_arch(name).get("model", "")).lower() == str(path).lower():
                return name
    return backbone


def arch_from_folder(folder: Path) -> dict[str, Any] | None:
    """The parts of a local diffusers pipeline folder, from its ``config.json`` files (no weights read)."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return None
    parts: dict[str, Any] = {}
    roles = {"unet": "denoiser", "transformer": "denoiser", "vae": "vae", "text_encoder": "text_encoder",
             "text_encoder_2": "text_encoder_2", "text_encoder_3": "text_encoder_3"}
    for sub, role in roles.items():
        f = folder / sub / "config.json"
        if not f.is_file():
            continue
        cfg = json.loads(f.read_text())
        if "_class_name" in cfg:
            parts[role] = {"folder": sub, "library": "diffusers", "class": cfg["_class_name"], "config": cfg}
        else:
            arch = (cfg.get("architectures") or [None])[0]
            parts[role] = {"folder": sub, "library": "transformers", "class": arch, "config": cfg}
    if "denoiser" not in parts:
        return None
    return {"name": folder.name, "kind": "backbone", "model": str(folder), "parts": parts, "published": {}}


def build_part(spec: dict[str, Any], device: str | torch.device = "meta", dtype: torch.dtype | None = None) -> nn.Module:
    """One part of an architecture, built from its config with random (or, on meta, no) weights.

    >>> unet = build_part(load_arch("sd15")["parts"]["denoiser"])          # meta: counts, no memory
    >>> sum(p.numel() for p in unet.parameters())
    859520964
    """
    lib, cls, cfg = spec["library"], spec["class"], spec["config"]
    with torch.device(device):
        if lib == "diffusers":
            import diffusers

            module = getattr(diffusers, cls).from_config(cfg)
        elif lib == "transformers":
            import transformers

            klass = getattr(transformers, cls)
            module = klass(klass.config_class.from_dict(cfg), **spec.get("kwargs", {}))
        elif lib == "open_clip":
            import open_clip

            module = open_clip.model.CLIP(**cfg)
        elif lib == "rats" and cls == "ImageRewardMLP":
            from rats_plugins.rewards.imagereward import MLPHead

            module = MLPHead(cfg["sizes"])
        else:
            raise ValueError(f"unknown architecture part {lib}:{cls}")
    if dtype is not None:
        module.to(dtype)
    return module.eval()


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    seen: set[int] = set()
    n = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def lora_trainable(module: nn.Module, cfg: RatsConfig, backbone: str, default: list[str] | None) -> int:
    """Adapter parameters peft would add, counted on the (meta) module it is injected into."""
    from rats_core.training.components import apply_lora

    targets = default
    if targets is None and backbone in LORA_TARGETS:
        mod, attr = LORA_TARGETS[backbone]
        targets = list(getattr(importlib.import_module(mod), attr))
    apply_lora(module, cfg.student.lora, targets or [])
    return count_params(module, trainable_only=True)
