"""The precision policy: what is stored in which dtype, and what computes in which.

One rule set for every backbone, ZeRO stage and launcher (docs/config.md, "Precision"):

* **Trainable tensors are stored in float32** — a full fine-tune's denoiser, a LoRA run's adapters —
  whatever ``backbone.denoiser_dtype`` loaded them as. They are the optimizer's master weights, so their
  gradients and Adam moments are float32 too and small updates are never rounded away.
* **Frozen tensors keep the dtype they were loaded in** (``backbone.dtype`` for text encoders and VAE,
  ``backbone.denoiser_dtype`` for a LoRA run's base weights, each reward's ``dtype``).
* **The teacher stores float32** wherever it tracks the student (the EMA), so ``(1 − μ)·Δ`` is not lost
  to bf16 rounding; it shares or copies frozen tensors as they are.
* **Compute**: ``train.precision: bf16`` runs every network call of a step — student rollout, teacher
  rollout, decode, rewards — under ``torch.autocast(bf16)``; ``fp32`` computes in the weights' dtype (a
  bf16 frozen base still computes in bf16). On CUDA, float32 matmuls use TF32 unless ``train.tf32: false``.
* DeepSpeed itself runs in float32 (no ``bf16``/``fp16`` section): mixed precision is autocast's job
  here, so there is one dtype story for checkpoints, the EMA and exports.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

log = logging.getLogger("rats")

COMPUTE_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` (``None``: no autocast)."""
    return COMPUTE_DTYPES[precision]


def eval_precision(cfg) -> str:
    """``fp32`` or ``bf16``: what held-out evaluation computes in (``eval.precision``; ``train`` follows
    ``train.precision``, so the student is judged as it was trained)."""
    chosen = getattr(getattr(cfg, "eval", None), "precision", "train")
    return cfg.train.precision if chosen == "train" else chosen


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context every network call of a training step runs in."""
    dtype = compute_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def upcast_trainable(module: nn.Module) -> list[str]:
    """Store every trainable parameter of ``module`` in float32 (in place); the names that changed.

    peft creates adapters in the base layer's dtype and a bf16 ``denoiser_dtype`` loads bf16 weights:
    without this, AdamW would update bf16 tensors directly and lose every update below bf16's
    resolution (about 0.4 % of the weight)."""
    changed = []
    for name, p in module.named_parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            changed.append(name)
    return changed


def enable_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later): ~8x the fp32 throughput
    for the parts autocast leaves in float32, at 10-bit mantissa inputs."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def dtype_report(module: nn.Module) -> dict[str, dict[str, int]]:
    """``{"trainable": {dtype: tensors}, "frozen": {...}}``: what a run stores, for logs and tests."""
    out: dict[str, dict[str, int]] = {"trainable": {}, "frozen": {}}
    for p in module.parameters():
        kind = "trainable" if p.requires_grad else "frozen"
        key = str(p.dtype).replace("torch.", "")
        out[kind][key] = out[kind].get(key, 0) + 1
    return out
