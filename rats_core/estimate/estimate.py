"""``rats estimate``: per-rank memory of a training run, before anything is downloaded or allocated.

Model states come exactly from the architecture: every part (denoiser, text encoders, VAE, reward towers)
is built on the meta device from its config — a local diffusers folder's ``config.json`` files when
``backbone.path`` is one, otherwise the architecture shipped in ``rats_plugins.archs`` — so parameter
counts are exact and nothing is allocated. Bytes per parameter follow the trainer's precision policy
(:data:`POLICY`), and the ZeRO stage decides what is divided by the number of ranks.

Activations come from a trace on the meta device at the config's real resolution and batch: the forward
passes that keep a graph in a RATS step (the student's gradient steps, the differentiable VAE decode,
each weighted reward on the decoded images) run on meta tensors while ``torch.autograd.graph.
saved_tensors_hooks`` adds up the bytes autograd keeps for backward (each storage once, parameters
excluded). Attention is counted as a fused (flash / memory-efficient) kernel keeps it — q, k, v, the
output and a float32 log-sum-exp — which is what PyTorch uses on CUDA in bf16 and on CPU. Gradient
checkpointing is followed as the trainer does it: a checkpointed call keeps only its inputs, and the
backward recomputes one checkpointed unit at a time (its saved set is added once, the largest one).

What is *not* in the figures: the CUDA context and allocator fragmentation (add 1–3 GB on a GPU), the
transient working memory of single kernels (e.g. cuDNN convolution workspaces), and DeepSpeed buffers
other than the ZeRO reduce bucket. Backbones and rewards without a shipped architecture (the toy and
digits models, third-party plugins) are built for real on the CPU and traced the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from rats_core.config import RatsConfig
from rats_core.errors import ConfigError
from rats_core.registry.interfaces import SCORES_VIDEO_ATTRIBUTE

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

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
#: backbone name -> (module, attribute) holding the default LoRA target module names
_LORA_TARGETS = {
    "sd15": ("rats_plugins.backbones.sd15", "UNET_LORA_TARGETS"),
    "sdxl": ("rats_plugins.backbones.sd15", "UNET_LORA_TARGETS"),
    "pixart": ("rats_plugins.backbones.pixart", "PIXART_LORA_TARGETS"),
    "flux": ("rats_plugins.backbones.flux", "FLUX_LORA_TARGETS"),
    "wan": ("rats_plugins.backbones.wan", "WAN_LORA_TARGETS"),
}
#: denoisers whose latents are videos ``[B, C, F', h, w]`` (their VAE decodes frames ``[B, 3, F, H, W]``) ->
#: the backbone module with their defaults (DEFAULT_HEIGHT, DEFAULT_NUM_FRAMES) and decode (decode_frames)
_VIDEO_DENOISERS = {"WanTransformer3DModel": "rats_plugins.backbones.wan"}
#: reward name -> shipped architecture
REWARD_ARCHS = {"imagereward": "imagereward", "hpsv2": "hps", "hpsv2.1": "hps", "hps": "hps",
                "pickscore": "pickscore"}


def _dtype(name: Any, default: torch.dtype = torch.float32) -> torch.dtype:
    if name is None:
        return default
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPE_NAMES[str(name)]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r} (use fp32, bf16 or fp16)") from None


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


# ----------------------------------------------------------------------------- architectures


def load_arch(name: str) -> dict[str, Any]:
    """A shipped architecture (``rats_plugins.archs``) by name."""
    from rats_plugins import archs

    return archs.load(name)


def arch_from_folder(folder: Path) -> dict[str, Any] | None:
    """The parts of a local diffusers pipeline folder, from its ``config.json`` files (no weights read)."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return None
    parts: dict[str, Any] = {}
    roles = {"unet": "denoiser", "transformer": "denoiser", "vae": "vae", "text_encoder": "text_encoder",
             "text_encoder_2": "text_encoder_2"}
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


# ----------------------------------------------------------------------------- the activation trace


class SavedTensorCounter:
    """Adds up the bytes autograd saves for backward, each storage once, parameters excluded.

    Use :meth:`unit` around a gradient-checkpointed call: what it saves is not kept (only its inputs
    are), but its total is remembered as the recompute peak of the backward.
    """

    def __init__(self, exclude: list[Tensor]):
        self.exclude = {self._key(p) for p in exclude}
        self.stack: list[dict[Any, int]] = [{}]
        self.max_unit = 0

    @staticmethod
    def _key(t: Tensor) -> Any:
        try:
            s = t.untyped_storage()
            return (s._cdata, t.device.type)
        except (RuntimeError, NotImplementedError):
            return (id(t), t.device.type)

    def _pack(self, t: Tensor) -> Tensor:
        key = self._key(t)
        if key not in self.exclude:
            try:
                nbytes = t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):
                nbytes = t.numel() * t.element_size()
            self.stack[-1][key] = max(self.stack[-1].get(key, 0), nbytes)
        return t

    @property
    def total(self) -> int:
        return sum(self.stack[0].values())

    @contextlib.contextmanager
    def active(self) -> Iterator["SavedTensorCounter"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    def checkpoint(self, module: Callable, *args: Any, **kwargs: Any) -> Any:
        """Drop-in for diffusers' ``_gradient_checkpointing_func``: a checkpointed unit."""
        self.stack.append({})
        out = module(*args, **kwargs)
        unit = self.stack.pop()
        self.max_unit = max(self.max_unit, sum(unit.values()))
        for a in list(args) + list(kwargs.values()):  # checkpoint keeps its tensor inputs
            if isinstance(a, Tensor):
                self._pack(a)
        return out


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel keeps for backward: q, k, v, the output and the fp32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, out_shape):
        out = q.new_empty(out_shape)
        lse = torch.empty(out_shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the trace never runs backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    out_shape = tuple(query.shape[:-1]) + (value.shape[-1],)
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return _FusedAttention.apply(query, key, value, out_shape)
    return query.new_empty(out_shape)


@contextlib.contextmanager
def _trace_patches() -> Iterator[None]:
    """Fused attention during a trace (the meta kernel of SDPA would keep the full attention matrix)."""
    import torch.nn.functional as F

    old = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = old


@dataclasses.dataclass
class Trace:
    #: bytes saved for backward by one call (checkpointed units counted by their inputs only)
    saved: int
    #: the largest checkpointed unit's saved bytes (recomputed in backward), 0 without checkpointing
    max_unit: int
    #: bytes of the call's tensor inputs (what an outer checkpoint keeps)
    inputs: int
    #: the largest tensor any submodule returned (for the no-gradient working set)
    largest_output: int


def trace(fn: Callable[[], Any], modules: list[nn.Module], checkpointed: list[nn.Module] = (),
          inputs: list[Tensor] = ()) -> Trace:
    """Run ``fn`` once (on meta tensors, or small real ones) and measure what it keeps for backward."""
    params = [p for m in modules for p in m.parameters()] + [b for m in modules for b in m.buffers()]
    counter = SavedTensorCounter(params)
    largest = [0]

    def hook(_m, _i, out):
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [h for m in modules for h in (mod.register_forward_hook(hook) for mod in m.modules())]
    old_funcs = []
    for m in checkpointed:
        for sub in m.modules():
            if hasattr(sub, "gradient_checkpointing") and getattr(sub, "gradient_checkpointing", False):
                old_funcs.append((sub, getattr(sub, "_gradient_checkpointing_func", None)))
                sub._gradient_checkpointing_func = counter.checkpoint
    try:
        with _trace_patches(), counter.active(), torch.enable_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
        for sub, f in old_funcs:
            sub._gradient_checkpointing_func = f
    return Trace(counter.total, counter.max_unit, sum(t.numel() * t.element_size() for t in inputs), largest[0])


# ----------------------------------------------------------------------------- denoiser inputs


def _text_length(cfg: RatsConfig, spec: dict[str, Any]) -> int:
    opts = cfg.backbone.options
    if spec["class"] in ("FluxTransformer2DModel", "WanTransformer3DModel"):  # T5 / UMT5, padded to 512
        return int(opts.get("max_sequence_length") or 512)
    if spec["class"].startswith("PixArt"):
        path = str(cfg.backbone.path or "")
        return int(opts.get("max_sequence_length") or (300 if "sigma" in path.lower() else 120))
    return 77


def denoiser_call(spec: dict[str, Any], module: nn.Module, batch: int, side: int | tuple[int, int], text_len: int,
                  device: torch.device, dtype: torch.dtype, grad_input: bool = False, frames: int = 1):
    """A zero-argument function running ``module`` once on inputs shaped like the backbone's, and them.

    ``side``: the latent side, or (height, width); ``frames``: latent frames of a video denoiser."""
    c = module.config
    cls = spec["class"]
    height, width = (side, side) if isinstance(side, int) else side

    def t(*shape, dt=dtype):
        return torch.zeros(shape, device=device, dtype=dt)

    if cls == "UNet2DConditionModel":
        x = t(batch, c.in_channels, height, width)
        args = dict(sample=x, timestep=t(batch, dt=torch.float32),
                    encoder_hidden_states=t(batch, text_len, c.cross_attention_dim))
        if c.addition_embed_type == "text_time":
            pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
            args["added_cond_kwargs"] = {"text_embeds": t(batch, pooled), "time_ids": t(batch, 6)}
    elif cls == "PixArtTransformer2DModel":
        x = t(batch, c.in_channels, height, width)
        added = {"resolution": None, "aspect_ratio": None}
        if getattr(module, "use_additional_conditions", False):
            added = {"resolution": t(batch, 2), "aspect_ratio": t(batch, 1)}
        args = dict(hidden_states=x, encoder_hidden_states=t(batch, text_len, c.caption_channels),
                    timestep=t(batch, dt=torch.float32), added_cond_kwargs=added)
    elif cls == "FluxTransformer2DModel":
        tokens = (height // 2) * (width // 2)
        x = t(batch, tokens, c.in_channels)
        args = dict(hidden_states=x, encoder_hidden_states=t(batch, text_len, c.joint_attention_dim),
                    pooled_projections=t(batch, c.pooled_projection_dim), timestep=t(batch, dt=torch.float32),
                    img_ids=t(tokens, 3), txt_ids=t(text_len, 3))
        if c.guidance_embeds:
            args["guidance"] = t(batch, dt=torch.float32)
    elif cls == "WanTransformer3DModel":  # latents [B, C, F', h, w], UMT5 states (plugins/backbones/wan.py)
        x = t(batch, c.in_channels, frames, height, width)
        args = dict(hidden_states=x, timestep=t(batch, dt=torch.float32),
                    encoder_hidden_states=t(batch, text_len, c.text_dim))
    else:
        raise ValueError(f"no input recipe for denoiser class {cls}")
    if grad_input:
        x.requires_grad_(True)
    inputs = [v for v in args.values() if isinstance(v, Tensor)]
    return (lambda: module(**args, return_dict=False)), inputs


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


def _lora_trainable(module: nn.Module, cfg: RatsConfig, backbone: str, default: list[str] | None) -> int:
    """Adapter parameters peft would add, counted on the (meta) module it is injected into."""
    from rats_core.training.components import apply_lora

    targets = default
    if targets is None and backbone in _LORA_TARGETS:
        mod, attr = _LORA_TARGETS[backbone]
        targets = list(getattr(importlib.import_module(mod), attr))
    apply_lora(module, cfg.student.lora, targets or [])
    return count_params(module, trainable_only=True)


def _student_grad_evals(cfg: RatsConfig) -> int:
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
    if arch is None and name in _LORA_TARGETS:
        arch = load_arch(name)
        if path and str(path).lower() != str(arch.get("model", "")).lower():  # e.g. the 14B Wan, PixArt-Σ
            notes.append(f"backbone.path {path} is not a local folder: counted with the shipped architecture of "
                         f"{arch['model']}; pass a local copy (backbone.path=/models/...) to count that model")
    with _quiet_libraries():
        if arch is not None:
            model = _BackboneModel.from_arch(arch, cfg)
        else:
            model = _BackboneModel.built(cfg)
            notes.append(f"backbone '{name}' has no shipped architecture: built for real on the CPU and traced there")
        rewards = [_reward_model(cfg, i, model, notes) for i in range(len(cfg.rewards))]
    return _assemble(cfg, ranks, source, model, rewards, notes)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers warns about dtype casts of freshly built (meta) models: noise for an estimate."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


@dataclasses.dataclass
class _Measured:
    name: str
    params: int
    param_bytes: int
    act: int = 0


class _BackboneModel:
    """What the estimate needs from a backbone: parameter counts per part and the traces."""

    def __init__(self):
        self.arch_name = ""
        self.published: dict[str, Any] = {}
        self.denoiser_params = 0
        self.trainable = 0
        self.frozen: list[_Measured] = []
        self.side = 0
        self.resolution = 0
        self.eval_grad: Trace | None = None
        self.eval_nograd: Trace | None = None
        self.decode: Trace | None = None
        self.image_side = 0
        #: video backbones: frames of a decoded clip (0: images) and the frame height
        self.frames = 0
        self.image_height = 0
        #: what the decode trace ran on, for the table
        self.decode_note = ""
        self.device = torch.device("meta")

    @classmethod
    def from_arch(cls, arch: dict[str, Any], cfg: RatsConfig) -> "_BackboneModel":
        self = cls()
        self.arch_name = arch["name"]
        self.published = arch.get("published", {})
        opts = cfg.backbone.options
        frozen_dtype = _dtype(opts.get("dtype"), torch.float32)
        den_dtype = _dtype(opts.get("denoiser_dtype"), torch.float32)
        spec = arch["parts"]["denoiser"]
        den = build_part(spec)
        self.denoiser_params = count_params(den)
        if cfg.student.lora is not None:
            den.requires_grad_(False)
            self.trainable = _lora_trainable(den, cfg, cfg.backbone.name, None)
        else:
            self.trainable = self.denoiser_params
        vae_dtype = _dtype(opts.get("vae_dtype"), frozen_dtype)
        vae = build_part(arch["parts"]["vae"], dtype=vae_dtype)
        video = spec["class"] in _VIDEO_DENOISERS
        if video:  # a causal video VAE: space and time compression from its config
            factor = int(vae.config.scale_factor_spatial)
        else:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # the denoiser's own size only when neither the config nor the arch gives one (FLUX's has none)
        self.resolution = int(cfg.backbone.resolution or arch.get("resolution") or
                              (_video_module(spec["class"]).DEFAULT_HEIGHT if video else den.config.sample_size * factor))
        self.side = self.resolution // factor
        width = int(opts.get("width") or self.resolution) if video else self.resolution
        latent_hw = (self.side, width // factor)
        latent_frames = 1
        if video:  # F video frames are (F - 1) / t + 1 latent frames (plugins/backbones/wan.py)
            self.frames = int(opts.get("num_frames") or arch.get("num_frames") or
                              _video_module(spec["class"]).DEFAULT_NUM_FRAMES)
            latent_frames = (self.frames - 1) // int(vae.config.scale_factor_temporal) + 1
        for role, part in arch["parts"].items():
            if role == "denoiser":
                continue
            dt = vae_dtype if role == "vae" else frozen_dtype
            m = vae if role == "vae" else build_part(part, dtype=dt)
            self.frozen.append(_Measured(role, count_params(m), count_params(m) * _bytes(dt)))
        # bf16: every call runs under autocast (activations mostly bf16); fp32: the stored dtype, which
        # is float32 for trained weights and denoiser_dtype for a LoRA run's base
        compute = torch.bfloat16 if cfg.train.precision == "bf16" else (
            den_dtype if cfg.student.lora is not None else torch.float32)
        den.to(compute)
        if opts.get("gradient_checkpointing"):
            den.enable_gradient_checkpointing()
        text_len = _text_length(cfg, spec)
        b = cfg.train.batch_size
        # classifier-free guidance doubles the batch (FLUX.1-dev is guidance-distilled: one pass)
        bs = b * (2 if cfg.student.guidance_scale > 1 and spec["class"] != "FluxTransformer2DModel" else 1)
        den.train()
        fn, inputs = denoiser_call(spec, den, bs, latent_hw, text_len, self.device, compute, frames=latent_frames)
        self.eval_grad = trace(fn, [den], [den], inputs)
        den.eval()
        tb = b * (2 if cfg.teacher.guidance_scale > 1 and spec["class"] != "FluxTransformer2DModel" else 1)
        with torch.no_grad():
            fn, inputs = denoiser_call(spec, den, tb, latent_hw, text_len, self.device, compute, frames=latent_frames)
            self.eval_nograd = trace(lambda: _no_grad(fn), [den], [], inputs)
        if video:
            z = torch.zeros(b, int(vae.config.z_dim), latent_frames, *latent_hw, device=self.device, dtype=vae_dtype,
                            requires_grad=True)
            grad_frames = opts.get("decode_grad_frames")
            decode = _video_decode(spec["class"], vae, grad_frames)
            self.decode = trace(lambda: decode(z), [vae], [], [z])
            kept = latent_frames if grad_frames is None else min(int(grad_frames), latent_frames)
            self.decode_note = (f"batch {b}, {self.frames} frames of {self.resolution}x{width} px, "
                                f"{kept} of {latent_frames} latent frames with a gradient")
        else:
            z = torch.zeros(b, vae.config.latent_channels, *latent_hw, device=self.device, dtype=vae_dtype,
                            requires_grad=True)
            self.decode = trace(lambda: vae.decode(z, return_dict=False), [vae], [], [z])
            self.decode_note = f"batch {b}, {self.resolution} px"
        self.image_side = width
        self.image_height = self.resolution
        return self

    @classmethod
    def built(cls, cfg: RatsConfig) -> "_BackboneModel":
        """Backbones without an architecture file: build for real (on the CPU) and trace there."""
        from rats_core.registry.plugins import get_registry
        from rats_core.training.components import apply_lora

        self = cls()
        self.arch_name = f"{cfg.backbone.name} (built)"
        self.device = torch.device("cpu")
        opts = dict(cfg.backbone.options)
        opts.pop("device", None)
        bb = get_registry().build("backbones", cfg.backbone.name, opts, "backbone")
        den = bb.denoiser
        self.denoiser_params = count_params(den)
        if cfg.student.lora is not None:
            den.requires_grad_(False)
            den = apply_lora(den, cfg.student.lora, list(getattr(bb, "lora_target_modules", [])))
            self.trainable = count_params(den, trainable_only=True)
        else:
            den.requires_grad_(True)
            self.trainable = self.denoiser_params
        seen = {id(p) for p in den.parameters()}
        frozen_mods = []
        if callable(getattr(bb, "frozen_modules", None)):
            frozen_mods = list(bb.frozen_modules())
        else:
            frozen_mods = [v for v in vars(bb).values() if isinstance(v, nn.Module) and v is not den]
        for i, m in enumerate(frozen_mods):
            ps = [p for p in m.parameters() if id(p) not in seen]
            seen.update(id(p) for p in ps)
            self.frozen.append(_Measured(type(m).__name__, sum(p.numel() for p in ps),
                                         sum(p.numel() * p.element_size() for p in ps)))
        b = cfg.train.batch_size
        noise = torch.zeros(bb.latent_shape(b))
        cond = bb.encode_prompts(_prompts(cfg, b))
        sigma = bb.sigmas(2)[0]
        self.resolution = int(getattr(bb, "resolution", noise.shape[-1]))
        x = noise.clone()
        self.eval_grad = trace(lambda: bb.predict_x0(den, x, sigma, cond, guidance_scale=cfg.student.guidance_scale),
                               [den] + frozen_mods, [den], [x])
        with torch.no_grad():
            self.eval_nograd = trace(lambda: bb.predict_x0(den, x, sigma, cond), [den] + frozen_mods, [], [x])
        z = noise.clone().requires_grad_(True)
        self.decode = trace(lambda: bb.decode(z), frozen_mods, [], [z])
        with torch.no_grad():
            shape = bb.decode(noise[:1]).shape
        self.image_side, self.image_height = int(shape[-1]), int(shape[-2])
        if len(shape) == 5:  # a video backbone: [B, 3, F, H, W]
            self.frames = int(shape[2])
            self.decode_note = f"batch {b}, {self.frames} frames of {self.image_height}x{self.image_side} px"
        else:
            self.decode_note = f"batch {b}, {self.resolution} px"
        return self


def _video_module(denoiser: str):
    """The backbone module of a video denoiser class (its defaults and its decode)."""
    if denoiser not in _VIDEO_DENOISERS:
        raise ValueError(f"no video recipe for denoiser class {denoiser}")
    return importlib.import_module(_VIDEO_DENOISERS[denoiser])


def _video_decode(denoiser: str, vae: nn.Module, decode_grad_frames: int | None) -> Callable[[Tensor], Tensor]:
    """The video backbone's own differentiable decode (its per-frame gradient option included), run on the
    meta-built VAE: no backbone is constructed, so no weights are looked for."""
    decode_frames = _video_module(denoiser).decode_frames
    return lambda z: decode_frames(vae, z, decode_grad_frames)


def _images_per_sample(bb: "_BackboneModel", frames: int | None) -> int:
    """Images a reward scores per sample: 1, or for videos the frames :func:`rats_core.method.rewards.score_frames`
    picks (``rewards.N.frames`` evenly spaced ones)."""
    if not bb.frames:
        return 1
    from rats_core.method.rewards import frame_indices

    return len(frame_indices(bb.frames, frames))


def _prompts(cfg: RatsConfig, n: int) -> list[str]:
    """``n`` of the config's training prompts (plugins may parse them, e.g. the digits rewards)."""
    from rats_core.prompts import load_prompts

    try:
        prompts = load_prompts(cfg.data.prompts, cfg.base_dir, "data.prompts")
    except Exception:
        prompts = ["a photo of a cat"]
    return [prompts[i % len(prompts)] for i in range(n)]


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def _reward_model(cfg: RatsConfig, i: int, bb: _BackboneModel, notes: list[str]) -> _Measured:
    r = cfg.rewards[i]
    b = cfg.train.batch_size
    per = _images_per_sample(bb, r.frames)  # videos: an image reward scores b·per frames in one batch
    dtype = _dtype(r.options.get("dtype"), torch.float32)
    arch_name = REWARD_ARCHS.get(r.name)
    arch = load_arch(arch_name) if arch_name is not None else None
    path = r.options.get("path")
    local = cfg.resolve_path(path) if isinstance(path, str) else None
    if arch_name == "hps" and r.options.get("architecture", "ViT-H-14") != "ViT-H-14":
        arch_name = None  # another open_clip model: built for real below
    elif arch_name == "pickscore" and local is not None and (local / "config.json").is_file():
        own = json.loads((local / "config.json").read_text())  # that model's own architecture
        arch["parts"]["model"]["config"] = own
        arch["image_size"] = (own.get("vision_config") or {}).get("image_size", arch["image_size"])
    if arch_name is not None:
        mods = {role: build_part(spec, dtype=dtype) for role, spec in arch["parts"].items()}
        params = sum(count_params(m) for m in mods.values())
        side = int(arch.get("image_size", 224))
        img = torch.zeros(b * per, 3, side, side, device="meta", dtype=dtype, requires_grad=True)
        fn = _reward_forward(arch_name, mods, img, arch)
        act = trace(fn, list(mods.values()), [], [img]).saved
        return _Measured(f"reward {r.name}", params, params * _bytes(dtype), act)
    from rats_core.registry.plugins import get_registry

    try:
        opts = dict(r.options)
        reward = get_registry().build("rewards", r.name, opts, f"rewards.{i}")
    except Exception as exc:  # weights missing, or anything a third-party factory raises
        notes.append(f"reward '{r.name}' could not be built to count it ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120]}); not included")
        return _Measured(f"reward {r.name}", 0, 0, 0)
    mods = _modules_of(reward)
    params = sum(count_params(m) for m in mods)
    pbytes = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
    width = bb.image_side or bb.resolution
    height = bb.image_height or width
    prompts = _prompts(cfg, b)
    if bb.frames and getattr(reward, SCORES_VIDEO_ATTRIBUTE, False):  # scores whole clips
        img = torch.rand(b, 3, bb.frames, height, width, requires_grad=True)
    else:
        img = torch.rand(b * per, 3, height, width, requires_grad=True)
        prompts = [p for p in prompts for _ in range(per)]
    act = trace(lambda: reward(img, prompts), mods, [], [img]).saved
    notes.append(f"reward '{r.name}' has no shipped architecture: built for real on the CPU and traced there")
    return _Measured(f"reward {r.name}", params, pbytes, act)


def _modules_of(obj: Any) -> list[nn.Module]:
    if isinstance(obj, nn.Module):
        return [obj]
    out = []
    for v in vars(obj).values() if hasattr(obj, "__dict__") else []:
        if isinstance(v, nn.Module):
            out.append(v)
    return out


def _reward_forward(arch_name: str, mods: dict[str, nn.Module], img: Tensor, arch: dict[str, Any]):
    """The part of a reward that the decoded images' gradient flows through."""
    b = img.shape[0]
    if arch_name == "imagereward":
        length = arch["parts"]["text"].get("text_length", 35)

        def fn():
            emb = mods["vision"](pixel_values=img)[0]
            ids = torch.zeros(b, length, dtype=torch.long, device=img.device)
            # no mask: the real one is all ones up to the prompt's length (a meta mask cannot be inspected)
            hidden = mods["text"](input_ids=ids, encoder_hidden_states=emb, return_dict=False)[0]
            return mods["mlp"](hidden[:, 0])

        return fn
    if arch_name == "hps":
        return lambda: mods["model"].encode_image(img)
    if arch_name == "pickscore":
        m = mods["model"]
        return lambda: m.visual_projection(m.vision_model(pixel_values=img).pooler_output)
    raise ValueError(arch_name)


def _assemble(cfg: RatsConfig, ranks: int, source: str, bb: _BackboneModel, rewards: list[_Measured],
              notes: list[str]) -> Estimate:
    zero = _zero(cfg)
    stage = int(zero.get("stage", 0))
    bf16 = cfg.train.precision == "bf16"
    lora = cfg.student.lora is not None
    den_dtype = _dtype(cfg.backbone.options.get("denoiser_dtype"), torch.float32)
    pt = bb.trainable
    # LoRA adds adapters on top of the base: the base is all of the denoiser's own parameters
    base_params = bb.denoiser_params if lora else 0
    off_opt = _offload(zero, "offload_optimizer")
    off_param = _offload(zero, "offload_param")

    n_grad = _student_grad_evals(cfg)
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
            rows.append(Part("frozen denoiser base", base_params * _bytes(den_dtype) / div(3), 3, p_where,
                             str(den_dtype).replace("torch.", "")))
        if cfg.teacher.kind in ("ema", "frozen"):
            if lora:
                teacher = pt * 4 + (base_params * _bytes(den_dtype) if s == 3 else 0)
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


# ----------------------------------------------------------------------------- output


def format_table(est: Estimate) -> str:
    stages = sorted(est.parts)
    # small models (the toy and digits runs) in MiB, so their figures are not all 0.0
    unit, scale = ("GiB", GiB) if max(est.per_rank(s) for s in stages) >= GiB else ("MiB", 1024**2)

    def _gb(x: float) -> str:
        return f"{x / scale:.1f}"

    names = [p.name for p in est.parts[est.stage]]
    for s in stages:
        names += [p.name for p in est.parts[s] if p.name not in names]
    head = f"{'per rank, ' + unit:<28}" + "".join(f"{'ZeRO-' + str(s) + ('*' if s == est.stage else ''):>9}" for s in stages)
    lines = [
        f"{est.config}: backbone {est.backbone} ({est.architecture}), {est.ranks} rank(s); "
        f"denoiser {est.params['denoiser'] / 1e6:,.1f} M params, trainable {est.params['trainable'] / 1e6:,.2f} M",
        head,
    ]
    for n in names:
        row = f"{n:<28}"
        for s in stages:
            part = next((p for p in est.parts[s] if p.name == n), None)
            row += f"{'-' if part is None else _gb(part.bytes) + ('c' if part.where == 'cpu' else ''):>9}"
        lines.append(row)
    lines.append(f"{'TOTAL on the GPU':<28}" + "".join(f"{_gb(est.per_rank(s)):>9}" for s in stages))
    for gb in CARDS_GB:
        lines.append(f"{'fits ' + str(gb) + ' GB':<28}" + "".join(
            f"{'yes' if est.fits(s)[f'{gb}GB'] else 'no':>9}" for s in stages))
    lines.append("* the config's stage; c: offloaded to CPU memory (not in the GPU total); "
                 f"fits: the total within {HEADROOM:.0%} of the card (the rest for the CUDA context)")
    for k, v in est.published.items():
        lines.append(f"{k}: {est.params[k]:,} params; published {v['params']:,.0f} ({v['source']}); "
                     f"ratio {v['ratio']}")
    lines.append(f"policy: {POLICY}")
    lines.append(f"activations: {ACTIVATIONS_METHOD}")
    lines.extend(f"note: {n}" for n in est.notes)
    return "\n".join(lines)


def markdown(est: Estimate, ranks: tuple[int, ...] = (1, 2, 8)) -> str:
    """The "will it fit" table of docs/backbones.md: GiB per GPU for each ZeRO stage and rank count, with
    the smallest of the 24/40/80 GB cards it fits (— for none)."""
    stages = sorted(est.parts)
    lines = ["| GPUs | " + " | ".join(f"ZeRO-{s}" + (" (config)" if s == est.stage else "") for s in stages) + " |",
             "|---" * (len(stages) + 1) + "|"]
    for n in ranks:
        e = est.with_ranks(n)
        cells = []
        for s in stages:
            fits = [gb for gb in CARDS_GB if e.fits(s)[f"{gb}GB"]]
            cells.append(f"{e.per_rank(s) / GiB:.1f} GiB → {fits[0]} GB" if fits else f"{e.per_rank(s) / GiB:.1f} GiB → —")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validate_line(cfg: RatsConfig, source: str) -> str:
    """``rats validate``'s one line; never fails the validation (weights it would have to build may be
    missing, a third-party backbone may not build off its device)."""
    try:
        return one_line(estimate(cfg, source=source))
    except Exception as exc:  # noqa: BLE001 - an estimate is a hint; validation already passed
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return f"estimate: not available for this config ({reason})"


def one_line(est: Estimate) -> str:
    """What ``rats validate`` prints for a GPU config."""
    total = est.per_rank(est.stage)
    fits = [f"{gb} GB" for gb in CARDS_GB if est.fits(est.stage)[f"{gb}GB"]]
    where = f"fits a {fits[0]} card" if fits else f"needs more than {CARDS_GB[-1]} GB"
    return (f"estimate: ~{total / GiB:.0f} GiB per GPU at ZeRO-{est.stage} on {est.ranks} rank(s), {where} "
            f"(rats estimate {est.config} for the table)")


# ----------------------------------------------------------------------------- the command


def gpu_config(cfg: RatsConfig) -> bool:
    """Whether a config will train on a GPU: ``train.device`` names one, or is unset where one is present."""
    device = cfg.train.device
    if device is None:
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def cmd_estimate(args) -> int:
    from rats_core.config import load_config

    cfg = load_config(args.config, args.overrides)
    ranks = default_ranks(args.ranks)
    est = estimate(cfg, ranks=ranks[0], source=args.config)
    if args.json:
        print(json.dumps(est.to_dict(), indent=2))
    elif args.markdown:
        print(markdown(est))
    else:
        print("\n\n".join(format_table(est.with_ranks(n) if n != ranks[0] else est) for n in ranks))
    return 0


def default_ranks(given: int | None) -> tuple[int, ...]:
    """``--ranks`` when given, else the launcher's ``WORLD_SIZE`` (torchrun, deepspeed), else 1 and 8: on one
    rank ZeRO-3 looks the worst choice (its teacher copy is not divided), which it is not on several."""
    if given is not None:
        return (given,)
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) >= 1:
        return (int(world),)
    return (1, 8)
