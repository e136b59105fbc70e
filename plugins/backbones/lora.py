"""LoRA on a diffusers denoiser: finding peft's layers inside training wrappers, merging them into a
fresh copy of the weights, and writing them alone (peft's adapter format; diffusers' is each
pipeline's ``save_lora_weights``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def unwrap_denoiser(denoiser: nn.Module) -> nn.Module:
    """The diffusers model inside DDP / DeepSpeed / torch.compile / PeftModel wrappers (peft LoRA
    layers injected into it stay in place)."""
    m = denoiser
    for _ in range(8):
        name = type(m).__name__
        if name == "PeftModel" or hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()
        elif name in ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine", "FullyShardedDataParallel") \
                and isinstance(getattr(m, "module", None), nn.Module):
            m = m.module
        elif isinstance(getattr(m, "_orig_mod", None), nn.Module):
            m = m._orig_mod
        else:
            break
    return m


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers in ``model`` by module name; empty when it carries none (or peft is absent)."""
    try:
        from peft.tuners.lora import LoraLayer
    except Exception:  # pragma: no cover
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _active_adapters(layer: nn.Module) -> list[str]:
    active = layer.active_adapters if hasattr(layer, "active_adapters") else [layer.active_adapter]
    active = [a for a in ([active] if isinstance(active, str) else active) if a in layer.lora_A]
    if len(active) > 1:
        raise ValueError(f"export supports one active LoRA adapter, found {active}")
    if active and getattr(layer, "use_dora", {}).get(active[0], False):
        raise ValueError("export of DoRA adapters is not supported; train with plain LoRA")
    return active


@torch.no_grad()
def merged_state_dict(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The model's state dict with each LoRA merged into its base weight (the live model is untouched)."""
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        out[".".join(p for p in parts if p != "base_layer")] = value.detach()
    for name, layer in layers.items():
        if getattr(layer, "merged", False):
            continue  # peft already folded the adapter into the base weight
        for adapter in _active_adapters(layer):
            key = f"{name}.weight" if name else "weight"
            base = out[key]
            out[key] = (base.float() + layer.get_delta_weight(adapter).float().to(base.device)).to(base.dtype)
    return out


@torch.no_grad()
def merged_copy(model: nn.Module, layers: dict[str, nn.Module]) -> nn.Module:
    """A fresh diffusers model of the same class and config holding the merged weights (built on the
    meta device and filled by assignment, so no second random initialisation is paid for)."""
    state = merged_state_dict(model, layers)
    with torch.device("meta"):
        fresh = type(model).from_config(model.config)
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    if unexpected or [k for k in missing if k in dict(fresh.named_parameters())]:
        raise RuntimeError(f"merged LoRA state does not fit {type(model).__name__}: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, buf in list(fresh.named_buffers()):  # non-persistent buffers: take the live model's values
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            src = dict(model.named_buffers()).get(name)
            if src is not None:
                setattr(fresh.get_submodule(owner) if owner else fresh, leaf, src.detach().clone())
    return fresh.eval()


@torch.no_grad()
def lora_state_dict(layers: dict[str, nn.Module]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """LoRA weights in peft/diffusers naming (``{module}.lora_A.weight``), with each layer's scaling
    folded into ``lora_B`` so the file loads correctly with ``lora_alpha == r`` (no alpha metadata
    needed, rsLoRA and per-module alphas included). Also returns each module's rank."""
    state: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    for name, layer in layers.items():
        for adapter in _active_adapters(layer):
            a = layer.lora_A[adapter].weight
            b = layer.lora_B[adapter].weight
            scale = float(layer.scaling[adapter])
            state[f"{name}.lora_A.weight"] = a.detach().cpu().contiguous()
            state[f"{name}.lora_B.weight"] = (b.detach().float() * scale).to(b.dtype).cpu().contiguous()
            ranks[name] = int(a.shape[0])
    if not state:
        raise ValueError("the denoiser carries no active LoRA adapter")
    return state, ranks


def save_peft_adapter(directory: Path, state: dict[str, Tensor], ranks: dict[str, int]) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
    ``PeftModel.from_pretrained(pipe.transformer_or_unet, directory)``."""
    from collections import Counter

    from peft import LoraConfig
    from safetensors.torch import save_file

    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {name: rank for name, rank in ranks.items() if rank != r}
    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), init_lora_weights=False)
    config.save_pretrained(str(directory))
    save_file({f"base_model.model.{k}": v for k, v in state.items()}, str(directory / "adapter_model.safetensors"))
