"""Exporting a trained diffusers backbone: a pipeline folder plain diffusers loads (LoRA merged), or the
LoRA alone, with ``rats_export.json`` saying how to sample as the student was trained.

Every component is saved in one dtype by casting the saved files (:func:`cast_saved_weights`), not the
live modules: the frozen text encoders and VAE are never copied in memory, and a module that keeps some
tensors in float32 beside 16-bit weights (Wan's transformer) is written in the one dtype all the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .devices import DTYPES
from .lora import lora_layers, lora_state_dict, merged_copy, save_peft_adapter, unwrap_denoiser

EXPORT_MANIFEST = "rats_export.json"


def export_backbone(backbone: Any, denoiser: nn.Module, directory: Path, *, steps: int,
                    lora_only: bool = False, guidance_scale: float | None = None, dtype: str | None = None) -> Path:
    """What :meth:`.diffusers_backbone.DiffusersBackbone.export` does (see there) for ``backbone``, one of them."""
    directory = Path(directory)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"export dtype must be one of fp32, bf16, fp16 (got {dtype!r})")
    target = DTYPES[dtype] if dtype is not None else torch.float32
    dtype_name = str(target).replace("torch.", "")
    base = unwrap_denoiser(denoiser)
    layers = lora_layers(base)
    if lora_only and not layers:
        raise ValueError("lora_only export needs a denoiser carrying a peft LoRA (train with student.lora)")
    directory.mkdir(parents=True, exist_ok=True)
    guidance = guidance_scale if guidance_scale is not None else backbone._trained_guidance
    scheduler = backbone._export_scheduler()
    call = backbone.sampling_kwargs(steps, guidance)
    args = ", ".join(f"{k}={v!r}" for k, v in call.items())
    loading = backbone.loading_kwargs()
    given = "".join(f", {k}={v!r}" for k, v in loading.items())
    info: dict[str, Any] = {
        "backbone": backbone.name,
        "source": backbone.source.model_id,
        "pipeline": backbone.pipeline_class,
        "num_inference_steps": int(steps),
        "guidance_scale": guidance,
        "height": backbone.resolution,
        "width": backbone.resolution,
        "dtype": dtype_name,
        "scheduler": {"class": type(scheduler).__name__, **{k: v for k, v in scheduler.config.items()
                                                           if not k.startswith("_") and _jsonable(v)}},
        "call": call,
        **({"from_pretrained": loading} if loading else {}),
    }
    if lora_only:
        state, ranks = lora_state_dict(layers)
        state = {k: v.to(target) for k, v in state.items()}
        diffusers_format = backbone._save_lora(directory, state)
        save_peft_adapter(directory, state, ranks)
        scheduler.save_pretrained(str(directory / "scheduler"))
        info.update(format="lora", base_model=backbone.source.model_id, diffusers_lora=diffusers_format,
                    rank=max(ranks.values()), modules=len(ranks))
        attach = ("pipe.load_lora_weights(DIR)" if diffusers_format else
                  "pipe.transformer = PeftModel.from_pretrained(pipe.transformer, DIR).merge_and_unload()")
        info["usage"] = (
            f"pipe = {backbone.pipeline_class}.from_pretrained(BASE_MODEL{given}); "
            f"pipe.scheduler = {type(scheduler).__name__}.from_pretrained(DIR, subfolder='scheduler'); "
            f"{attach}; image = pipe(prompt, {args}).images[0]"
        )
    else:
        model = merged_copy(base, layers) if layers else base
        pipe = backbone._export_pipeline(model, scheduler)
        pipe.save_pretrained(str(directory), safe_serialization=True)
        for name, component in pipe.components.items():
            if isinstance(component, nn.Module):
                cast_saved_weights(directory / name, target)
        info.update(format="pipeline", lora_merged=bool(layers))
        load = "" if target == torch.float32 else f", torch_dtype=torch.{dtype_name}"
        info["usage"] = (f"pipe = DiffusionPipeline.from_pretrained(DIR{given}{load}); "
                         f"image = pipe(prompt, {args}).images[0]")
    backbone._describe_export(info)
    write_manifest(directory, info)
    return directory


def cast_saved_weights(folder: Path, dtype: torch.dtype) -> None:
    """Rewrite the floating-point tensors of a saved component (``*.safetensors`` in ``folder``) in
    ``dtype``, and the ``dtype`` its transformers config records, so the folder loads in one dtype.
    A sharded component's index gets the new total size."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        if any(t.is_floating_point() and t.dtype != dtype for t in tensors.values()):
            tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
            tmp = f.with_name(f.name + ".tmp")
            save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
            tmp.replace(f)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    for index in folder.glob("*.safetensors.index.json"):
        data = json.loads(index.read_text())
        if data.get("metadata", {}).get("total_size") not in (None, total):
            data["metadata"]["total_size"] = total
            index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        keys = [k for k in ("dtype", "torch_dtype") if k in data]  # transformers 5.x / 4.x spelling
        if keys:
            data.update({k: str(dtype).replace("torch.", "") for k in keys})
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    (directory / EXPORT_MANIFEST).write_text(json.dumps(info, indent=2) + "\n")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
