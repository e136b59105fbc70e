"""What a config names, built: the backbone, rewards, gate and horizon schedule, and LoRA injection.

Used by the trainer, ``rats eval/sample/export`` (through rats_core/evaluation/runs.py) and ``rats estimate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from rats_core.config import RatsConfig
from rats_core.errors import ConfigError
from rats_core.method.rewards import RewardSet, WeightedReward
from rats_core.registry.plugins import get_registry


@dataclass
class Components:
    backbone: Any
    rewards: RewardSet | None
    gate: Any
    horizons: Any


def build_components(cfg: RatsConfig, *, rewards: bool = True,
                     backbone_options: dict[str, Any] | None = None) -> Components:
    """Instantiate the backbone, rewards, gate and horizon schedule a config names.

    ``rewards=False`` builds no reward model (``Components.rewards`` is None; exports need none);
    ``backbone_options`` are set on top of the config's (the trainer loads a ZeRO-3 denoiser into host
    memory with ``device: cpu``)."""
    registry = get_registry()
    options = {**_resolve_paths(cfg, cfg.backbone.options), **(backbone_options or {})}
    backbone = registry.build("backbones", cfg.backbone.name, options, "backbone")
    reward_set = None if not rewards else RewardSet(
        [
            WeightedReward(
                name=r.name,
                reward=registry.build("rewards", r.name, _resolve_paths(cfg, r.options), f"rewards.{i}"),
                weight=r.weight,
                normalize=r.normalize,
                mean=r.mean,
                std=r.std,
                plugin=registry.get("rewards", r.name).plugin,
                frames=r.frames,
            )
            for i, r in enumerate(cfg.rewards)
        ]
    )
    gate = registry.build("gates", cfg.gate.name, cfg.gate.options, "gate")
    horizons = registry.build("horizons", cfg.horizons.name, cfg.horizons.options, "horizons")
    return Components(backbone, reward_set, gate, horizons)


def _resolve_paths(cfg: RatsConfig, options: dict[str, Any]) -> dict[str, Any]:
    """``path`` options that name an existing file relative to the config are resolved against it;
    anything else (hub ids) passes through."""
    out = dict(options)
    p = out.get("path")
    if isinstance(p, str) and not os.path.isabs(p) and (p.startswith(".") or os.sep in p):
        candidate = cfg.resolve_path(p)
        if candidate.exists() and not Path(p).exists():
            out["path"] = str(candidate)
    return out


def apply_lora(denoiser: nn.Module, lora: Any, default_targets: list[str]) -> nn.Module:
    """Inject a peft LoRA adapter and freeze everything else."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora.target_modules or default_targets
    if not targets:
        raise ConfigError("student.lora: the backbone names no LoRA target modules; set student.lora.target_modules")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
    try:
        denoiser = inject_adapter_in_model(config, denoiser)
    except ValueError as exc:
        raise ConfigError(f"student.lora.target_modules: {exc}") from None
    for name, p in denoiser.named_parameters():
        p.requires_grad_("lora_" in name)
    return denoiser


