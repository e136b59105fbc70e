"""FLUX.1 (dev and schnell): ``FluxTransformer2DModel`` (rectified flow) + CLIP (pooled) + T5 + VAE.

Flow matching, ``x = (1 − σ)·x0 + σ·eps``; the transformer predicts the velocity ``eps − x0`` at
timestep ``σ`` (the pipeline's ``t / 1000``). Latents are kept unpacked, ``[B, 16, H/8, W/8]``, and
packed into 2×2 patches (with their image position ids) around each transformer call, as
``FluxPipeline`` does. σ schedules come from the model's ``FlowMatchEulerDiscreteScheduler`` with the
pipeline's resolution-dependent shift ``mu`` (FLUX.1-dev) or its static shift (schnell).

Guidance: FLUX.1-dev is guidance-distilled: ``guidance_scale`` is fed to its guidance embedding (the
pipeline's default is 3.5) and no second, unconditional pass is made. Models without a guidance
embedding (schnell) get true classifier-free guidance against the empty prompt when ``guidance_scale > 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rats_core.method.sigmas import x0_from_flow

from .devices import module_dtype
from .diffusers_backbone import DiffusersBackbone, check_resolution
from .options import DEFAULT_IDS, FluxOptions
from .sampling import calculate_shift, cfg, per_sample, to_device
from .text import load_tokenizer, tokenize
from .vae import vae_scale_factor
from .weights import Part, load_part

DEFAULT_ID = DEFAULT_IDS["flux"]

TRANSFORMER = Part("transformer", "the FLUX transformer, FluxTransformer2DModel")
VAE = Part("vae", "the VAE, AutoencoderKL")
TEXT_ENCODER = Part("text_encoder", "the CLIP text encoder")
TEXT_ENCODER_2 = Part("text_encoder_2", "the T5 text encoder")
TOKENIZER = Part("tokenizer", "the CLIP tokenizer")
TOKENIZER_2 = Part("tokenizer_2", "the T5 tokenizer")
SCHEDULER = Part("scheduler", "the scheduler config")

#: joint (double-stream) and single-stream blocks: attention incl. the text-stream projections,
#: both feed-forwards, and the single blocks' fused MLP and output projections
FLUX_LORA_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",
]


def pack(latents: Tensor) -> Tensor:
    """[B, C, H, W] → [B, H/2·W/2, 4C] (2×2 patches), FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack` for latents of ``height × width``."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Position ids [(H/2)(W/2), 3] of the packed latent tokens (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxBackbone(DiffusersBackbone):
    """FLUX.1 seen through RATS. ``cond`` holds the T5 ``prompt_embeds`` [B, L, 4096], the CLIP
    ``pooled_prompt_embeds`` [B, 768] and ``text_ids`` [L, 3]."""

    name = "flux"
    pipeline_class = "FluxPipeline"
    interpolation = "flow"

    def __init__(self, options: FluxOptions):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, T5EncoderModel

        self._locate(options, DEFAULT_ID, (TRANSFORMER, VAE, TEXT_ENCODER, TEXT_ENCODER_2, TOKENIZER, TOKENIZER_2,
                                          SCHEDULER))
        self.scheduler = load_part(self.source, SCHEDULER, FlowMatchEulerDiscreteScheduler.from_pretrained)
        self.max_sequence_length = options.max_sequence_length
        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        self.tokenizer_2 = load_tokenizer(self.source, TOKENIZER_2)
        self.text_encoder = self._load_text_encoder(TEXT_ENCODER, CLIPTextModel.from_pretrained)
        self.text_encoder_2 = self._load_text_encoder(TEXT_ENCODER_2, T5EncoderModel.from_pretrained)
        self.vae = self._load_vae(VAE)
        transformer = self.denoiser = self._load_denoiser(TRANSFORMER, FluxTransformer2DModel.from_pretrained)
        self.guidance_embeds = bool(transformer.config.guidance_embeds)
        self.vae_factor = vae_scale_factor(self.vae)
        self.latent_channels = transformer.config.in_channels // 4
        self.resolution = check_resolution(options.resolution or 1024, self.vae_factor * 2, self.name)
        self.lora_target_modules = list(FLUX_LORA_TARGETS)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder, self.text_encoder_2]

    # -- text

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        clip_ids = tokenize(self.tokenizer, prompts).input_ids
        pooled = self.text_encoder(clip_ids.to(self.device), output_hidden_states=False).pooler_output
        t5_ids = tokenize(self.tokenizer_2, prompts, self.max_sequence_length).input_ids
        embeds = self.text_encoder_2(t5_ids.to(self.device), output_hidden_states=False)[0]
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=embeds.dtype)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}

    # -- σ

    def mu(self) -> float:
        """The pipeline's shift for this resolution (image tokens = (H/16)·(W/16))."""
        side = self.resolution // self.vae_factor // 2
        c = self.scheduler.config
        return calculate_shift(side * side, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", 1.15))

    def sigmas(self, num_steps: int) -> Tensor:
        """FluxPipeline's schedule: ``linspace(1, 1/n, n)`` shifted by the scheduler, then 0."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        base = None if self.scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        if base is None:
            self.scheduler.set_timesteps(num_steps, mu=self.mu())
        else:
            self.scheduler.set_timesteps(sigmas=base, mu=self.mu())
        return self.scheduler.sigmas.detach().float().cpu().clone()

    def timestep(self, sigma: Tensor | float) -> Tensor:
        """The scheduler's timestep for σ (``σ · num_train_timesteps``); the transformer sees ``t / 1000``."""
        return torch.as_tensor(sigma, dtype=torch.float32) * self.scheduler.config.num_train_timesteps

    # -- the network

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                   guidance_scale: float = 1.0) -> Tensor:
        self._note_guidance(guidance_scale)
        b, _, h, w = x.shape
        s = per_sample(sigma, b, x.device)
        dtype = module_dtype(denoiser)
        cond = to_device(cond, x.device)
        true_cfg = guidance_scale > 1 and not self.guidance_embeds
        tokens = pack(x)
        t = self.timestep(s) / 1000
        if true_cfg:
            cond, (tokens, t) = self._guided(cond, tokens, t)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((tokens.shape[0],), float(guidance_scale), device=x.device, dtype=torch.float32)
        velocity = denoiser(
            hidden_states=tokens.to(dtype),
            timestep=t.to(dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(dtype),
            txt_ids=cond["text_ids"].to(dtype),
            img_ids=image_ids(h, w, x.device, dtype),
            return_dict=False,
        )[0].to(x.dtype)
        if true_cfg:
            velocity = cfg(*velocity.chunk(2), guidance_scale)
        return x0_from_flow(x, s, unpack(velocity, h, w))

    # -- export

    def _export_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any):
        from diffusers import FluxPipeline

        return FluxPipeline(scheduler=scheduler, vae=self.vae, text_encoder=self.text_encoder,
                            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
                            tokenizer_2=self.tokenizer_2, transformer=denoiser)

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(str(directory), transformer_lora_layers=state, safe_serialization=True)
        return True

    def sampling_kwargs(self, steps: int, guidance: float | None) -> dict[str, Any]:
        kwargs = {**super().sampling_kwargs(steps, guidance), "max_sequence_length": self.max_sequence_length}
        if not self.guidance_embeds:  # schnell-like: guidance_scale means nothing; CFG is the pipeline's true CFG
            g = kwargs.pop("guidance_scale", None)
            if g is not None and g > 1:
                kwargs.update(negative_prompt="", true_cfg_scale=g)
        return kwargs
