"""Wan2.1 text-to-video: ``WanTransformer3DModel`` (flow matching) + UMT5 text encoder + ``AutoencoderKLWan``.

Flow matching, ``x = (1 − σ)·x0 + σ·eps``; the transformer predicts the velocity ``eps − x0`` at the
scheduler's timestep for σ. Latents are videos, ``[B, 16, F', H/8, W/8]`` with ``F' = (F − 1)/4 + 1``
latent frames for ``F`` video frames (the VAE compresses time 4× after the first frame, space 8×);
:meth:`WanBackbone.decode` returns frames ``[B, 3, F, H, W]`` in ``[0, 1]``.

σ's belong to the model's own scheduler: the Wan2.1 Diffusers repositories ship a
``UniPCMultistepScheduler`` with flow σ's and ``flow_shift`` (3.0 for 480p, 5.0 for 720p); its
``set_timesteps(n)`` gives ``shift(linspace(1, 1/1000, n + 1)[:n])`` followed by 0 — a trailing-style
schedule that starts at σ_max, which is what few-step students need — and the transformer sees the
scheduler's integer timesteps ``⌊σ·1000⌋``. The backbone keeps the same σ's and timesteps, and exports a
copy of that scheduler set to first order with its corrector off, which makes each of its steps the
deterministic DDIM (Euler) step RATS trains with: ``WanPipeline.from_pretrained(export)`` samples as the
student was trained.

Guidance is the pipeline's classifier-free guidance: ``uncond + g·(cond − uncond)`` against the
negative prompt (the empty prompt unless ``negative_prompt`` is set), evaluated in one batched pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rats_core.method.sigmas import x0_from_flow

from .devices import DTYPES, freeze, module_dtype
from .diffusers_backbone import DiffusersBackbone
from .lora import unwrap_denoiser
from .options import DEFAULT_IDS, WAN_NUM_FRAMES, WanOptions
from .sampling import SchedulerSigmas, cfg
from .text import load_tokenizer, tokenize
from .vae import configure_vae
from .weights import Part, load_part

DEFAULT_ID = DEFAULT_IDS["wan"]
#: frame height (px) and video frames when the config gives none (``rats estimate`` uses them too)
DEFAULT_HEIGHT = 480
DEFAULT_NUM_FRAMES = WAN_NUM_FRAMES

TRANSFORMER = Part("transformer", "the Wan transformer, WanTransformer3DModel")
VAE = Part("vae", "the video VAE, AutoencoderKLWan")
TEXT_ENCODER = Part("text_encoder", "the UMT5 text encoder")
TOKENIZER = Part("tokenizer", "the UMT5 tokenizer")
SCHEDULER = Part("scheduler", "the scheduler config")

#: self- and cross-attention projections and the feed-forward of every transformer block (the set the
#: diffusers Wan LoRA trainers and the step-distilled Wan LoRAs adapt)
WAN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


class WanSchedule(SchedulerSigmas):
    """σ's and timesteps of a Wan flow model, owned by diffusers' ``UniPCMultistepScheduler``.

    Built from the model's scheduler config (``flow_shift`` from a UniPC config, ``shift`` from a
    FlowMatchEuler one; ``flow_shift`` overrides both). σ's the scheduler produced map to exactly its
    timesteps; any other σ in [0, 1] maps by the same rule, ``⌊σ·num_train_timesteps⌋``.
    """

    def __init__(self, scheduler_config: dict[str, Any], flow_shift: float | None = None):
        from diffusers import UniPCMultistepScheduler

        config = dict(scheduler_config)
        shift = flow_shift if flow_shift is not None else config.get("flow_shift", config.get("shift", 3.0))
        if config.get("use_dynamic_shifting", False):
            raise ValueError("wan: schedulers with resolution-dependent (dynamic) shifting are not supported")
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.scheduler = UniPCMultistepScheduler(
            num_train_timesteps=self.num_train_timesteps, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=float(shift), final_sigmas_type="zero", predict_x0=True, solver_type="bh2",
            # first order without the UniC corrector: each step is exactly the DDIM (Euler) step
            solver_order=1, lower_order_final=True, disable_corrector=list(range(self.num_train_timesteps + 1)),
        )
        self.flow_shift = float(shift)
        self._known = {}

    def timestep(self, sigma: Tensor | float) -> Tensor:
        """The scheduler's timestep(s) for σ (same shape), float32."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32).detach().cpu()
        flat = [self._known.get(s, math.floor(s * self.num_train_timesteps)) for s in sigma.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.float32).reshape(sigma.shape)

    def export_scheduler(self):
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_config(self.scheduler.config)


def _clean(prompt: str) -> str:
    """WanPipeline's prompt cleaning (ftfy where installed, HTML unescape, whitespace)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(prompt)


class WanBackbone(DiffusersBackbone):
    """Wan2.1 T2V seen through RATS. ``cond`` is ``{"prompt_embeds": [B, L, D]}`` (UMT5 states, zeroed past
    each prompt's length, as the pipeline makes them)."""

    name = "wan"
    pipeline_class = "WanPipeline"
    interpolation = "flow"

    def __init__(self, options: WanOptions):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import UMT5EncoderModel

        self._locate(options, DEFAULT_ID, (TRANSFORMER, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER))
        self.schedule = WanSchedule(load_part(self.source, SCHEDULER, UniPCMultistepScheduler.load_config),
                                    options.flow_shift)
        self.max_sequence_length = options.max_sequence_length
        self.negative_prompt = options.negative_prompt
        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        self.text_encoder = self._load_text_encoder(TEXT_ENCODER, UMT5EncoderModel.from_pretrained)
        vae = load_part(self.source, VAE, AutoencoderKLWan.from_pretrained,
                        dtype=DTYPES[options.vae_dtype or options.dtype], variant=options.variant)
        self.vae = freeze(vae).to(self.device)
        configure_vae(self.vae, options.vae_slicing, options.vae_tiling)
        transformer = self.denoiser = self._load_denoiser(TRANSFORMER, WanTransformer3DModel.from_pretrained)
        self.latent_channels = int(transformer.config.in_channels)
        self.vae_factor = int(self.vae.config.scale_factor_spatial)
        self.temporal_factor = int(self.vae.config.scale_factor_temporal)
        multiple = self.vae_factor * int(transformer.config.patch_size[1])
        height = options.resolution or DEFAULT_HEIGHT
        width = options.width or height
        num_frames, decode_grad_frames = options.num_frames, options.decode_grad_frames
        for what, side in (("resolution", height), ("width", width)):
            if side <= 0 or side % multiple:
                raise ValueError(f"wan: {what} must be a positive multiple of {multiple}, got {side}")
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
            raise ValueError(f"wan: num_frames must be 1 + a multiple of {self.temporal_factor} "
                             f"(e.g. 17, 33, 49, 81), got {num_frames}")
        self.resolution, self.width, self.num_frames = height, width, num_frames
        if decode_grad_frames is not None and decode_grad_frames < 1:
            raise ValueError(f"wan: decode_grad_frames must be >= 1 or null (every latent frame), "
                             f"got {decode_grad_frames}")
        self.decode_grad_frames = decode_grad_frames
        self.lora_target_modules = list(WAN_LORA_TARGETS)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    # -- text

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        tokens = tokenize(self.tokenizer, [_clean(p) for p in prompts], self.max_sequence_length,
                          add_special_tokens=True, return_attention_mask=True)
        mask = tokens.attention_mask.to(self.device)
        states = self.text_encoder(tokens.input_ids.to(self.device), mask).last_hidden_state
        # the pipeline keeps each prompt's own tokens and zeroes the padding positions
        return {"prompt_embeds": states * mask.gt(0).unsqueeze(-1).to(states.dtype)}

    def _encode_negative(self) -> dict[str, Any]:
        return self.encode_prompts([self.negative_prompt])

    # -- latents and frames

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // self.temporal_factor + 1

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.latent_channels, self.latent_frames, self.resolution // self.vae_factor,
                self.width // self.vae_factor)

    def grad_latent_frames(self, latent_frames: int) -> list[int]:
        """The latent frames a differentiable decode keeps a gradient for (all unless ``decode_grad_frames``)."""
        from rats_core.method.rewards import frame_indices

        return frame_indices(latent_frames, self.decode_grad_frames)

    def decode(self, x0: Tensor) -> Tensor:
        """Latents ``[B, 16, F', h, w]`` to frames ``[B, 3, F, H, W]`` in [0, 1], differentiable
        (:func:`decode_frames` with this backbone's ``decode_grad_frames``)."""
        return decode_frames(self.vae, x0, self.decode_grad_frames)

    # -- the network

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                   guidance_scale: float = 1.0) -> Tensor:
        net = self._network_inputs(x, sigma, cond, guidance_scale)
        dtype = compute_dtype(denoiser)
        velocity = denoiser(hidden_states=net.x.to(dtype), timestep=net.t,
                            encoder_hidden_states=net.cond["prompt_embeds"].to(dtype), return_dict=False)[0].to(x.dtype)
        if net.guided:
            velocity = cfg(*velocity.chunk(2), guidance_scale)
        return x0_from_flow(x, net.sigma, velocity)

    # -- export

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any):
        from diffusers import WanPipeline

        return WanPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
                           transformer=denoiser, scheduler=scheduler)

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        from diffusers import WanPipeline

        WanPipeline.save_lora_weights(str(directory), transformer_lora_layers=state, safe_serialization=True)
        return True

    def sampling_kwargs(self, steps: int, guidance: float | None) -> dict[str, Any]:
        kwargs = {**super().sampling_kwargs(steps, guidance), "width": self.width, "num_frames": self.num_frames,
                  "max_sequence_length": self.max_sequence_length}
        # WanPipeline guides whenever guidance_scale > 1 (its default is 5.0): say 1.0 when the student had none
        kwargs["guidance_scale"] = float(guidance) if guidance is not None else 1.0
        if self.negative_prompt and kwargs["guidance_scale"] > 1:
            kwargs["negative_prompt"] = self.negative_prompt
        return kwargs

    def _describe_export(self, info: dict[str, Any]) -> None:
        """Frame count and size, the corrector in words, and ``video = pipe(...).frames[0]`` in the usage line."""
        info.update(width=self.width, num_frames=self.num_frames)
        if isinstance(info.get("scheduler", {}).get("disable_corrector"), list):  # 1001 step indices: say it
            info["scheduler"]["disable_corrector"] = "every step (first order: deterministic DDIM steps)"
        info["usage"] = info["usage"].replace("image = pipe(", "video = pipe(").replace(".images[0]", ".frames[0]")


def compute_dtype(denoiser: nn.Module) -> torch.dtype:
    """The dtype the transformer computes in. Not its first parameter's: ``WanTransformer3DModel`` keeps
    ``scale_shift_table``, norms and the time embedder in fp32 beside bf16 weights; diffusers' ``dtype``
    skips those (what ``WanPipeline`` casts its inputs to)."""
    model = unwrap_denoiser(denoiser)
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else module_dtype(model)


def decode_frames(vae: nn.Module, x0: Tensor, decode_grad_frames: int | None = None) -> Tensor:
    """Wan latents ``[B, 16, F', h, w]`` to frames ``[B, 3, F, H, W]`` in [0, 1] through ``vae``
    (an ``AutoencoderKLWan``), differentiable.

    The VAE decodes one latent frame at a time (each yields 4 video frames, the first one 1), carrying a
    causal cache. With ``decode_grad_frames`` set, only that many evenly spaced latent frames are decoded
    with a gradient; the others are decoded without one (their values are exact, the cache they leave is
    a constant), which bounds the decode's activation memory, the largest part of a video step.
    ``rats estimate`` traces this same function on a meta-device VAE.
    """
    from rats_core.method.rewards import frame_indices

    c = vae.config
    z = x0.to(next(vae.parameters()).device)
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(c.latents_mean, device=z.device, dtype=z.dtype).reshape(shape)
    std = torch.tensor(c.latents_std, device=z.device, dtype=z.dtype).reshape(shape)
    z = (z * std + mean).to(module_dtype(vae))
    grad_frames = frame_indices(z.shape[2], decode_grad_frames)
    partial = torch.is_grad_enabled() and z.requires_grad and len(grad_frames) < z.shape[2]
    if partial and getattr(c, "patch_size", None) is None and not getattr(vae, "use_tiling", False):
        video = _decode_some_with_grad(vae, z, set(grad_frames))
    else:
        video = vae.decode(z, return_dict=False)[0]
    return (video.float() / 2 + 0.5).clamp(0, 1).to(x0.device)


def _decode_some_with_grad(vae: nn.Module, z: Tensor, grad_frames: set[int]) -> Tensor:
    """``AutoencoderKLWan._decode``'s frame loop (same values), with a gradient only for ``grad_frames``."""
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        outs = []
        for i in range(z.shape[2]):
            vae._conv_idx = [0]
            extra = {"first_chunk": True} if i == 0 else {}
            with torch.enable_grad() if i in grad_frames else torch.no_grad():
                outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                        **extra))
    finally:
        vae.clear_cache()
    return torch.cat(outs, 2).clamp(-1.0, 1.0)
