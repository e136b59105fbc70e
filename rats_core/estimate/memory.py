"""The estimate: model states by the precision policy, activations from the traces, and what each ZeRO
stage divides by the number of ranks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from rats_core.config import RatsConfig
from rats_core.errors import ConfigError
from rats_core.estimate.architectures import (
    LORA_TARGETS,
    arch_from_folder,
    dtype_bytes,
    load_arch,
    shipped_for,
    to_dtype,
)
from rats_core.estimate.measure import BackboneModel, Measured, measure_reward, quiet_libraries

GiB = 1024**3

#: the precision policy the figures assume (printed with every estimate)
POLICY = (
    "rats_core/training/precision.py: trainable tensors stored fp32 (they are the masters) + fp32 grads + fp32 Adam "
    "m,v = 16 B/param, plus DeepSpeed's fp32 partition copy at ZeRO-1/2; train.precision=bf16 computes under "
    "torch.autocast, which caches a bf16 copy of each trainable weight for the step (+2 B/param). LoRA base "
    "weights stay in backbone.denoiser_dtype; the EMA teacher's tracked tensors are fp32 (a LoRA teacher "
    "shares the frozen base below ZeRO-3; under ZeRO-3 the teacher is its own copy, partitioned like the "
    "student). Frozen parts (text encoders, VAE, rewards) in their configured dtype."
)
ACTIVATIONS_METHOD = (
    "meta-device trace at the config's resolution and batch: bytes autograd saves for backward "
    "(fused attention assumed), checkpointing as configured. A lower bound: a real backward peaked at "
    "1.2x (SD1.5 VAE decode) and 1.4x (SD1.5 UNet, LoRA) the traced figure on CPU at 256 px "
    "(benchmarks/README.md, not yet checked on a GPU); CUDA context, allocator fragmentation and kernel "
    "workspaces not included"
)
#: GPU sizes the table is checked against; cards sold as "24/40/80 GB" hold that many GiB (A100 80 GB:
#: 81920 MiB), less what the CUDA context takes (not in the figures)
CARDS_GB = (24, 40, 80)
#: share of a card the figures may fill: the CUDA context, allocator fragmentation and kernel workspaces
#: are not in them (1-3 GB in practice), so "fits" keeps 10 % of the card for those
HEADROOM = 0.9

# ----------------------------------------------------------------------------- the estimate


@dataclasses.dataclass
class Part:
    """One line of the table: a group of tensors with how ZeRO treats it."""

    name: str
    bytes: float
    #: which ZeRO stage first partitions it over ranks (4: never)
    partitioned_from: int = 4
    #: "gpu" or "cpu" (offloaded)
    where: str = "gpu"
    note: str = ""


@dataclasses.dataclass
class Estimate:
    config: str
    backbone: str
    architecture: str
    ranks: int
    stage: int
    params: dict[str, int]
    published: dict[str, dict[str, Any]]
    parts: dict[int, list[Part]]
    notes: list[str]
    #: image side in pixels the activations were traced at
    resolution: int = 0
    #: what :meth:`with_ranks` needs to redo the arithmetic without tracing again
    _inputs: tuple = dataclasses.field(default=(), repr=False)

    def with_ranks(self, ranks: int) -> "Estimate":
        """The same run on ``ranks`` ranks (model states re-divided; activations per rank unchanged)."""
        cfg, source, bb, rewards, notes = self._inputs
        return _assemble(cfg, ranks, source, bb, rewards, notes)

    def per_rank(self, stage: int, where: str = "gpu") -> float:
        return sum(p.bytes for p in self.parts[stage] if p.where == where)

    def fits(self, stage: int) -> dict[str, bool]:
        total = self.per_rank(stage)
        return {f"{gb}GB": total <= HEADROOM * gb * GiB for gb in CARDS_GB}

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "backbone": self.backbone,
            "architecture": self.architecture,
            "ranks": self.ranks,
            "resolution": self.resolution,
            "zero_stage": self.stage,
            "params": self.params,
            "published": self.published,
            "policy": POLICY,
            "activations_method": ACTIVATIONS_METHOD,
            "stages": {
                str(s): {
                    "per_rank_gib": round(self.per_rank(s) / GiB, 3),
                    "cpu_offload_gib": round(self.per_rank(s, "cpu") / GiB, 3),
                    "fits": self.fits(s),
                    "parts_gib": {p.name: round(p.bytes / GiB, 3) for p in self.parts[s]},
                    "offloaded": [p.name for p in self.parts[s] if p.where == "cpu"],
                }
                for s in sorted(self.parts)
            },
            "notes": self.notes,
        }


def _zero(cfg: RatsConfig) -> dict[str, Any]:
    return dict(cfg.deepspeed.get("zero_optimization") or {})


def _offload(zero: dict[str, Any], key: str) -> bool:
    off = zero.get(key)
    return isinstance(off, dict) and off.get("device", "none") in ("cpu", "nvme")


def student_grad_evals(cfg: RatsConfig) -> int:
    """Student network calls that keep a graph: the last K_grad steps plus the matched horizons."""
    k = cfg.student.steps
    chain = set(range(k - cfg.student.grad_steps, k))
    if cfg.loss.alpha <= 0 or not getattr(cfg.student, "horizon_gradients", True):
        return len(chain)
    try:
        from rats_core.registry.plugins import get_registry

        horizons = get_registry().build("horizons", cfg.horizons.name, cfg.horizons.options, "horizons")
        matched = {int(j) for j, w in horizons(torch.linspace(1.0, 0.0, k + 1)) if w > 0}
    except Exception:  # an unusual schedule: assume every step is matched (an upper bound)
        matched = set(range(k))
    return len(chain | matched)


def estimate(cfg: RatsConfig, ranks: int = 1, source: str = "config") -> Estimate:
    """Per-rank memory of training ``cfg`` on ``ranks`` ranks, for its ZeRO stage and the others."""
    if ranks < 1:
        raise ConfigError(f"--ranks must be at least 1 (got {ranks})")
    name = cfg.backbone.name
    arch = None
    path = cfg.backbone.path
    notes: list[str] = []
    if path:
        local = cfg.resolve_path(path) if not Path(path).expanduser().exists() else Path(path).expanduser()
        if local.is_dir():
            arch = arch_from_folder(local)
    if arch is None and name in LORA_TARGETS:
        arch = load_arch(shipped_for(name, path))
        if path and str(path).lower() != str(arch.get("model", "")).lower():  # e.g. the 14B Wan, PixArt-Σ
            notes.append(f"backbone.path {path} is not a local folder: counted with the shipped architecture of "
                         f"{arch['model']}; pass a local copy (backbone.path=/models/...) to count that model")
    with quiet_libraries():
        if arch is not None:
            model = BackboneModel.from_arch(arch, cfg)
        else:
            model = BackboneModel.built(cfg)
            notes.append(f"backbone '{name}' has no shipped architecture: built for real on the CPU and traced there")
        rewards = [measure_reward(cfg, i, model, notes) for i in range(len(cfg.rewards))]
    return _assemble(cfg, ranks, source, model, rewards, notes)


def _assemble(cfg: RatsConfig, ranks: int, source: str, bb: BackboneModel, rewards: list[Measured],
              notes: list[str]) -> Estimate:
    zero = _zero(cfg)
    stage = int(zero.get("stage", 0))
    bf16 = cfg.train.precision == "bf16"
    lora = cfg.student.lora is not None
    den_dtype = to_dtype(cfg.backbone.options.get("denoiser_dtype"), torch.float32)
    pt = bb.trainable
    # LoRA adds adapters on top of the base: the base is all of the denoiser's own parameters
    base_params = bb.denoiser_params if lora else 0
    off_opt = _offload(zero, "offload_optimizer")
    off_param = _offload(zero, "offload_param")

    n_grad = student_grad_evals(cfg)
    g = bb.eval_grad
    assert g is not None and bb.eval_nograd is not None and bb.decode is not None
    if cfg.student.gradient_checkpointing:
        student_act = n_grad * g.inputs + g.saved + g.max_unit
        how = f"{n_grad} checkpointed student call(s): inputs kept, one recomputed in backward"
    else:
        student_act = n_grad * g.saved + g.max_unit
        how = f"{n_grad} student call(s) keeping their graph"
    reward_act = sum(r.act for r in rewards)
    # a no-gradient forward (teacher or student step) holds its input, output and a few working tensors
    nograd_peak = 4 * bb.eval_nograd.largest_output

    parts: dict[int, list[Part]] = {}
    for s in (0, 1, 2, 3):
        rows: list[Part] = []
        p_where = "cpu" if (off_param and s == 3) else "gpu"
        o_where = "cpu" if (off_opt and s >= 1) else "gpu"
        div = lambda from_stage: ranks if s >= from_stage else 1  # noqa: E731
        rows.append(Part("trainable weights (fp32)", pt * 4 / div(3), 3, p_where, "the masters"))
        rows.append(Part("gradients (fp32)", pt * 4 / div(2), 2, o_where if s >= 2 else "gpu"))
        rows.append(Part("Adam m, v (fp32)", pt * 8 / div(1), 1, o_where))
        if s in (1, 2):  # measured on CPU ranks (benchmarks/README.md, "Memory"); ZeRO-3 steps in place
            rows.append(Part("ZeRO fp32 partition copy", pt * 4 / ranks, 1, o_where,
                             "DeepSpeed's flat fp32 copy of the optimizer's partition"))
        if bf16:
            rows.append(Part("bf16 autocast weight copies", pt * 2, 4, "gpu",
                             "torch.autocast caches a bf16 cast of each trainable weight for the step"))
        if lora:
            rows.append(Part("frozen denoiser base", base_params * dtype_bytes(den_dtype) / div(3), 3, p_where,
                             str(den_dtype).replace("torch.", "")))
        if cfg.teacher.kind in ("ema", "frozen"):
            if lora:
                teacher = pt * 4 + (base_params * dtype_bytes(den_dtype) if s == 3 else 0)
                tnote = "fp32 adapters" + ("; own copy of the base under ZeRO-3" if s == 3 else "; base shared")
            else:
                teacher = pt * 4
                tnote = "full fp32 copy"
            rows.append(Part(f"teacher ({cfg.teacher.kind})", teacher / div(3), 3, "gpu", tnote))
        for f in bb.frozen:
            rows.append(Part(f"frozen {f.name}", f.param_bytes, 4, "gpu"))
        for r in rewards:
            rows.append(Part(r.name, r.param_bytes, 4, "gpu"))
        if s in (1, 2):
            bucket = float(zero.get("reduce_bucket_size", 5e8))
            # gradients are fp32 under the precision policy (DeepSpeed runs without a bf16 section)
            rows.append(Part("ZeRO reduce bucket", min(bucket, pt) * 4, 4, "gpu", "reduce_bucket_size"))
        if s == 3:
            live = float(zero.get("stage3_prefetch_bucket_size", 5e7))
            rows.append(Part("ZeRO-3 gathered params", min(live, bb.denoiser_params) * 4, 4, "gpu",
                             "stage3_prefetch_bucket_size"))
        rows.append(Part("activations: student", student_act, 4, "gpu", how))
        rows.append(Part("activations: VAE decode", bb.decode.saved, 4, "gpu", bb.decode_note))
        rows.append(Part("activations: rewards", reward_act, 4, "gpu"))
        rows.append(Part("no-grad forward peak", nograd_peak, 4, "gpu", "teacher/student sampling steps"))
        parts[s] = rows

    params = {"denoiser": bb.denoiser_params, "trainable": pt}
    for f in bb.frozen:
        params[f.name] = f.params
    for r in rewards:
        params[r.name] = r.params
    published = {}
    for k, v in bb.published.items():
        if k in params:
            published[k] = {**v, "ratio": round(params[k] / v["params"], 4)}
    notes = [*notes]
    return Estimate(source, cfg.backbone.name, bb.arch_name, ranks, stage, params, published, parts, notes,
                    resolution=bb.resolution, _inputs=(cfg, source, bb, rewards, notes))
