"""The DeepSpeed side of a run: the engine config filled from ``train:``, the LR schedule, and where a
ZeRO-3 run loads and partitions its networks."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch
from torch import nn

from rats_core.config import RatsConfig
from rats_core.errors import ConfigError
from rats_core.registry.plugins import get_registry


def deepspeed_config(cfg: RatsConfig, world_size: int) -> dict[str, Any]:
    """The user's ``deepspeed`` section, with batch sizes, precision and clipping filled from ``train``."""
    ds = json.loads(json.dumps(cfg.deepspeed))  # deep copy
    t = cfg.train
    ds.setdefault("train_micro_batch_size_per_gpu", t.batch_size)
    ds.setdefault("gradient_accumulation_steps", t.gradient_accumulation)
    ds.setdefault("train_batch_size", t.batch_size * t.gradient_accumulation * world_size)
    expected = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size
    if ds["train_batch_size"] != expected:
        raise ConfigError(
            f"deepspeed.train_batch_size ({ds['train_batch_size']}) must equal micro batch × accumulation × ranks "
            f"({expected}); leave batch sizes out of the deepspeed section to have them filled from train"
        )
    # Always set: DeepSpeed's own default is 1.0, so leaving it out would clip when max_grad_norm=0.
    ds.setdefault("gradient_clipping", t.max_grad_norm)
    # No bf16 section even for train.precision=bf16: DeepSpeed runs float32 (the trainable weights are
    # the masters) and the step computes under autocast; see rats_core/training/precision.py.
    ds.setdefault("zero_optimization", {"stage": 0})
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def lr_lambda(cfg: RatsConfig):
    t = cfg.train

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_scheduler == "constant":
            return 1.0
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if t.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def zero3_load_options(cfg: RatsConfig, device: torch.device) -> dict[str, Any] | None:
    """Under ZeRO-3 on a GPU the backbone loads into host memory (``device: cpu``) unless the
    config names a device: DeepSpeed then moves each rank's shard to the GPU, so the whole
    denoiser is never on one GPU."""
    stage = int((cfg.deepspeed.get("zero_optimization") or {}).get("stage", 0))
    if stage != 3 or device.type == "cpu" or cfg.backbone.options.get("device") is not None:
        return None
    schema = get_registry().get("backbones", cfg.backbone.name).schema
    return {"device": "cpu"} if "device" in getattr(schema, "model_fields", {}) else None


def partition_teacher(teacher: nn.Module, ds_config: dict[str, Any]):
    """The ZeRO-3 teacher: a second DeepSpeed engine without optimizer (DeepSpeed-Chat's pattern
    for reference/EMA models), partitioned like the student and gathered layer by layer when it
    runs. It takes the student's ZeRO settings, so the two are partitioned alike and each rank's
    EMA update of its own shards is all there is to update (rats_core/parallel/zero.py: ema_targets)."""
    import deepspeed

    config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler", "gradient_clipping")}
    zero_cfg = dict(config.get("zero_optimization") or {})
    zero_cfg.pop("offload_optimizer", None)
    config["zero_optimization"] = zero_cfg
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def quiet_deepspeed_logs() -> None:
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except Exception:  # pragma: no cover
        pass
