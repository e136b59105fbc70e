"""What a config's models need: each part's parameters, and the traces of the forward passes that keep a
graph in a RATS step (the student's gradient steps, the VAE decode, each reward on the decoded images).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from rats_core.config import RatsConfig
from rats_core.estimate.architectures import (
    REWARD_ARCHS,
    VIDEO_DENOISERS,
    build_part,
    count_params,
    dtype_bytes,
    load_arch,
    lora_trainable,
    to_dtype,
)
from rats_core.estimate.tracing import Trace, trace
from rats_core.registry.interfaces import SCORES_VIDEO_ATTRIBUTE

# ----------------------------------------------------------------------------- denoiser inputs


def text_length(cfg: RatsConfig, spec: dict[str, Any]) -> int:
    opts = cfg.backbone.options
    if spec["class"] in ("FluxTransformer2DModel", "WanTransformer3DModel"):  # T5 / UMT5, padded to 512
        return int(opts.get("max_sequence_length") or 512)
    if spec["class"] == "SD3Transformer2DModel":  # 77 CLIP tokens, then T5's (256, as StableDiffusion3Pipeline)
        return 77 + int(opts.get("max_sequence_length") or 256)
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
    elif cls == "SD3Transformer2DModel":  # unpacked latents; CLIP ‖ T5 states and pooled CLIP (backbones/sd35.py)
        x = t(batch, c.in_channels, height, width)
        args = dict(hidden_states=x, encoder_hidden_states=t(batch, text_len, c.joint_attention_dim),
                    pooled_projections=t(batch, c.pooled_projection_dim), timestep=t(batch, dt=torch.float32))
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


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers warns about dtype casts of freshly built (meta) models: noise for an estimate."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


@dataclasses.dataclass
class Measured:
    name: str
    params: int
    param_bytes: int
    act: int = 0


class BackboneModel:
    """What the estimate needs from a backbone: parameter counts per part and the traces."""

    def __init__(self):
        self.arch_name = ""
        self.published: dict[str, Any] = {}
        self.denoiser_params = 0
        self.trainable = 0
        self.frozen: list[Measured] = []
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
    def from_arch(cls, arch: dict[str, Any], cfg: RatsConfig) -> "BackboneModel":
        self = cls()
        self.arch_name = arch["name"]
        self.published = arch.get("published", {})
        opts = cfg.backbone.options
        frozen_dtype = to_dtype(opts.get("dtype"), torch.float32)
        den_dtype = to_dtype(opts.get("denoiser_dtype"), torch.float32)
        spec = arch["parts"]["denoiser"]
        den = build_part(spec)
        self.denoiser_params = count_params(den)
        if cfg.student.lora is not None:
            den.requires_grad_(False)
            self.trainable = lora_trainable(den, cfg, cfg.backbone.name, None)
        else:
            self.trainable = self.denoiser_params
        vae_dtype = to_dtype(opts.get("vae_dtype"), frozen_dtype)
        vae = build_part(arch["parts"]["vae"], dtype=vae_dtype)
        video = spec["class"] in VIDEO_DENOISERS
        if video:  # a causal video VAE: space and time compression from its config
            factor = int(vae.config.scale_factor_spatial)
        else:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # the denoiser's own size only when neither the config nor the arch gives one (FLUX's has none)
        self.resolution = int(cfg.backbone.resolution or arch.get("resolution") or
                              (video_module(spec["class"]).DEFAULT_HEIGHT if video else den.config.sample_size * factor))
        self.side = self.resolution // factor
        width = int(opts.get("width") or self.resolution) if video else self.resolution
        latent_hw = (self.side, width // factor)
        latent_frames = 1
        if video:  # F video frames are (F - 1) / t + 1 latent frames (plugins/backbones/wan.py)
            self.frames = int(opts.get("num_frames") or arch.get("num_frames") or
                              video_module(spec["class"]).DEFAULT_NUM_FRAMES)
            latent_frames = (self.frames - 1) // int(vae.config.scale_factor_temporal) + 1
        for role, part in arch["parts"].items():
            if role == "denoiser" or (role == "text_encoder_3" and opts.get("t5") is False):  # sd35 without T5
                continue
            dt = vae_dtype if role == "vae" else frozen_dtype
            m = vae if role == "vae" else build_part(part, dtype=dt)
            self.frozen.append(Measured(role, count_params(m), count_params(m) * dtype_bytes(dt)))
        # bf16: every call runs under autocast (activations mostly bf16); fp32: the stored dtype, which
        # is float32 for trained weights and denoiser_dtype for a LoRA run's base
        compute = torch.bfloat16 if cfg.train.precision == "bf16" else (
            den_dtype if cfg.student.lora is not None else torch.float32)
        den.to(compute)
        if opts.get("gradient_checkpointing"):
            den.enable_gradient_checkpointing()
        text_len = text_length(cfg, spec)
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
            decode = video_decode(spec["class"], vae, grad_frames)
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
    def built(cls, cfg: RatsConfig) -> "BackboneModel":
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
            self.frozen.append(Measured(type(m).__name__, sum(p.numel() for p in ps),
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


def video_module(denoiser: str):
    """The backbone module of a video denoiser class (its defaults and its decode)."""
    if denoiser not in VIDEO_DENOISERS:
        raise ValueError(f"no video recipe for denoiser class {denoiser}")
    return importlib.import_module(VIDEO_DENOISERS[denoiser])


def video_decode(denoiser: str, vae: nn.Module, decode_grad_frames: int | None) -> Callable[[Tensor], Tensor]:
    """The video backbone's own differentiable decode (its per-frame gradient option included), run on the
    meta-built VAE: no backbone is constructed, so no weights are looked for."""
    decode_frames = video_module(denoiser).decode_frames
    return lambda z: decode_frames(vae, z, decode_grad_frames)


def images_per_sample(bb: "BackboneModel", frames: int | None) -> int:
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


def measure_reward(cfg: RatsConfig, i: int, bb: BackboneModel, notes: list[str]) -> Measured:
    r = cfg.rewards[i]
    b = cfg.train.batch_size
    per = images_per_sample(bb, r.frames)  # videos: an image reward scores b·per frames in one batch
    dtype = to_dtype(r.options.get("dtype"), torch.float32)
    arch_name = REWARD_ARCHS.get(r.name)
    arch = load_arch(arch_name) if arch_name is not None else None
    path = r.options.get("clip" if arch_name == "aesthetic" else "path")  # its local model, if one is named
    local = cfg.resolve_path(path) if isinstance(path, str) else None
    if arch_name == "hps" and r.options.get("architecture", "ViT-H-14") != "ViT-H-14":
        arch_name = None  # another open_clip model: built for real below
    elif arch_name in ("pickscore", "clipscore", "aesthetic") and local is not None and (local / "config.json").is_file():
        own = json.loads((local / "config.json").read_text())  # that model's own architecture
        if arch_name == "aesthetic":  # its vision tower and projection only
            vision = {**own.get("vision_config", {}), "projection_dim": own.get("projection_dim", 512)}
            arch["parts"]["vision"]["config"] = vision
            arch["parts"]["head"]["config"]["sizes"][0] = vision["projection_dim"]
        else:
            arch["parts"]["model"]["config"] = own
        arch["image_size"] = (own.get("vision_config") or {}).get("image_size", arch["image_size"])
    if arch_name is not None:
        mods = {role: build_part(spec, dtype=dtype) for role, spec in arch["parts"].items()}
        params = sum(count_params(m) for m in mods.values())
        side = int(arch.get("image_size", 224))
        img = torch.zeros(b * per, 3, side, side, device="meta", dtype=dtype, requires_grad=True)
        fn = _reward_forward(arch_name, mods, img, arch)
        act = trace(fn, list(mods.values()), [], [img]).saved
        return Measured(f"reward {r.name}", params, params * dtype_bytes(dtype), act)
    from rats_core.registry.plugins import get_registry

    try:
        opts = dict(r.options)
        reward = get_registry().build("rewards", r.name, opts, f"rewards.{i}")
    except Exception as exc:  # weights missing, or anything a third-party factory raises
        notes.append(f"reward '{r.name}' could not be built to count it ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120]}); not included")
        return Measured(f"reward {r.name}", 0, 0, 0)
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
    return Measured(f"reward {r.name}", params, pbytes, act)


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
    if arch_name in ("pickscore", "clipscore"):
        m = mods["model"]
        return lambda: m.visual_projection(m.vision_model(pixel_values=img).pooler_output)
    if arch_name == "aesthetic":
        return lambda: mods["head"](torch.nn.functional.normalize(mods["vision"](pixel_values=img).image_embeds, dim=-1))
    raise ValueError(arch_name)
