"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` (MMDiT, rectified flow) + CLIP-L + OpenCLIP-bigG +
T5-XXL + a 16-channel VAE, as ``StableDiffusion3Pipeline`` runs them.

Flow matching, ``x = (1 − σ)·x0 + σ·eps``; the transformer predicts the velocity ``eps − x0`` at timestep
``σ·1000``, so ``x0 = x − σ·v`` (as for FLUX). Latents are ``[B, 16, H/8, W/8]``; the transformer patchifies
them itself (no packing). σ's are the model's ``FlowMatchEulerDiscreteScheduler``'s ``set_timesteps(n)``,
the pipeline's own call: timesteps evenly spaced from 1000 down to the smallest training σ's, shifted by the
scheduler's ``shift`` (3.0 for SD3 / SD3.5; the ``shift`` option overrides it), then 0; a scheduler with
resolution-dependent shifting gets the pipeline's ``mu`` for the trained size. ``σ_0 = 1``, so few-step
students start from pure noise.

Text, as the pipeline builds it: both CLIP encoders' penultimate hidden states, concatenated (768 + 1280)
and zero-padded to T5's width (4096), followed along the sequence by T5-XXL's states (``max_sequence_length``
tokens) → ``prompt_embeds`` ``[B, 77 + 256, 4096]``; the two projected CLIP embeddings concatenated →
``pooled_prompt_embeds`` ``[B, 2048]``. With ``t5=false`` the T5 part is zeros and T5 is neither downloaded
nor loaded (``text_encoder_3=None``, which diffusers allows). Guidance is classifier-free against the empty
prompt (the pipeline's default negative prompt), in one batched pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rats_core.method.sigmas import x0_from_flow

from .devices import module_dtype
from .diffusers_backbone import DiffusersBackbone, check_resolution
from .options import DEFAULT_IDS, SD35Options
from .sampling import calculate_shift, cfg
from .text import clip_states, load_tokenizer, tokenize
from .vae import vae_scale_factor
from .weights import NOT_DOWNLOADED, Part, load_part

DEFAULT_ID = DEFAULT_IDS["sd35"]

TRANSFORMER = Part("transformer", "the MMDiT, SD3Transformer2DModel")
VAE = Part("vae", "the VAE, AutoencoderKL")
TEXT_ENCODER = Part("text_encoder", "the CLIP-L text encoder, with projection")
TEXT_ENCODER_2 = Part("text_encoder_2", "the OpenCLIP-bigG text encoder, with projection")
TEXT_ENCODER_3 = Part("text_encoder_3", "the T5-XXL text encoder (or set backbone.t5=false)")
TOKENIZER = Part("tokenizer", "the CLIP-L tokenizer")
TOKENIZER_2 = Part("tokenizer_2", "the OpenCLIP-bigG tokenizer")
TOKENIZER_3 = Part("tokenizer_3", "the T5 tokenizer (or set backbone.t5=false)")
SCHEDULER = Part("scheduler", "the scheduler config")

#: every MMDiT block: the joint attention of both streams (image q/k/v/out, text add_*_proj/to_add_out),
#: MMDiT-X's second, image-only attention (attn2, SD3.5 Medium's first 13 blocks) and both streams'
#: feed-forwards -- the set diffusers' SD3 LoRA trainer adapts, plus the feed-forwards a few-step student needs
SD3_LORA_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]


class FlowMatchSchedule:
    """σ's and timesteps of an SD3 model, owned by its ``FlowMatchEulerDiscreteScheduler``, set as
    ``StableDiffusion3Pipeline`` sets it: ``set_timesteps(n)`` (with ``mu`` for ``image_seq_len`` image
    tokens when the scheduler shifts by resolution). The transformer's timestep is ``σ · num_train_timesteps``
    for any σ (what the scheduler gives for its own σ's)."""

    def __init__(self, scheduler_config: dict[str, Any], shift: float | None, image_seq_len: int):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            dict(scheduler_config), **({"shift": float(shift)} if shift is not None else {}))
        c = self.scheduler.config
        self.mu = (calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                   c.get("base_shift", 0.5), c.get("max_shift", 1.16))
                   if c.get("use_dynamic_shifting", False) else None)

    def sigmas(self, num_steps: int) -> Tensor:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.scheduler.set_timesteps(num_steps, mu=self.mu)
        return self.scheduler.sigmas.detach().float().cpu().clone()

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma * self.scheduler.config.num_train_timesteps

    def export_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)


class SD35Backbone(DiffusersBackbone):
    """SD3 / SD3.5 seen through RATS. ``cond`` holds ``prompt_embeds`` [B, 77 + L, 4096] (CLIP-L ‖ CLIP-G,
    padded, then T5) and ``pooled_prompt_embeds`` [B, 2048]."""

    name = "sd35"
    pipeline_class = "StableDiffusion3Pipeline"
    interpolation = "flow"

    def __init__(self, options: SD35Options):
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, T5EncoderModel

        parts = (TRANSFORMER, VAE, TEXT_ENCODER, TEXT_ENCODER_2, TOKENIZER, TOKENIZER_2, SCHEDULER)
        t5 = (TEXT_ENCODER_3, TOKENIZER_3)
        self._locate(options, DEFAULT_ID, parts + t5 if options.t5 else parts,
                     skip=NOT_DOWNLOADED + (() if options.t5 else tuple(p.folder for p in t5)))
        self.max_sequence_length = options.max_sequence_length
        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        self.tokenizer_2 = load_tokenizer(self.source, TOKENIZER_2)
        self.text_encoder = self._load_text_encoder(TEXT_ENCODER, CLIPTextModelWithProjection.from_pretrained)
        self.text_encoder_2 = self._load_text_encoder(TEXT_ENCODER_2, CLIPTextModelWithProjection.from_pretrained)
        self.tokenizer_3 = load_tokenizer(self.source, TOKENIZER_3) if options.t5 else None
        self.text_encoder_3 = (self._load_text_encoder(TEXT_ENCODER_3, T5EncoderModel.from_pretrained)
                               if options.t5 else None)
        self.vae = self._load_vae(VAE)
        transformer = self.denoiser = self._load_denoiser(TRANSFORMER, SD3Transformer2DModel.from_pretrained)
        c = transformer.config
        self.joint_attention_dim = int(c.joint_attention_dim)
        self.vae_factor = vae_scale_factor(self.vae)
        self.latent_channels = int(c.in_channels)
        multiple = self.vae_factor * c.patch_size
        self.resolution = check_resolution(options.resolution or c.sample_size * self.vae_factor, multiple, self.name)
        if c.pos_embed_max_size is not None and self.resolution > c.pos_embed_max_size * multiple:
            raise ValueError(f"sd35: resolution {self.resolution} is larger than this transformer's positional table "
                             f"reaches ({c.pos_embed_max_size * multiple} px)")
        patches = (self.resolution // multiple) ** 2
        self.schedule = FlowMatchSchedule(load_part(self.source, SCHEDULER, FlowMatchEulerDiscreteScheduler.load_config),
                                          options.shift, patches)
        self.lora_target_modules = list(SD3_LORA_TARGETS)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3) if m is not None]

    # -- text

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        # the pipeline pads both CLIP prompts to the first tokenizer's length
        length = self.tokenizer.model_max_length
        (states, pooled), (states_2, pooled_2) = (
            clip_states(tokenizer, encoder, prompts, self.device, length)
            for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)))
        clip = torch.cat([states, states_2], dim=-1)
        t5 = self._t5_states(prompts, clip.dtype)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"prompt_embeds": torch.cat([clip, t5], dim=-2),
                "pooled_prompt_embeds": torch.cat([pooled, pooled_2], dim=-1)}

    def _t5_states(self, prompts: list[str], dtype: torch.dtype) -> Tensor:
        if self.text_encoder_3 is None:  # dropped: zeros of the transformer's text width, as the pipeline's
            return torch.zeros(len(prompts), self.max_sequence_length, self.joint_attention_dim, device=self.device,
                               dtype=dtype)
        ids = tokenize(self.tokenizer_3, prompts, self.max_sequence_length, add_special_tokens=True).input_ids
        return self.text_encoder_3(ids.to(self.device))[0]

    # -- the network

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                   guidance_scale: float = 1.0) -> Tensor:
        net = self._network_inputs(x, sigma, cond, guidance_scale)
        dtype = module_dtype(denoiser)
        velocity = denoiser(
            hidden_states=net.x.to(dtype),
            timestep=net.t,
            encoder_hidden_states=net.cond["prompt_embeds"].to(dtype),
            pooled_projections=net.cond["pooled_prompt_embeds"].to(dtype),
            return_dict=False,
        )[0].to(x.dtype)
        if net.guided:
            velocity = cfg(*velocity.chunk(2), guidance_scale)
        return x0_from_flow(x, net.sigma, velocity)

    # -- export

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=denoiser, scheduler=scheduler, vae=self.vae,
            text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3,
        )

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        from diffusers import StableDiffusion3Pipeline

        StableDiffusion3Pipeline.save_lora_weights(str(directory), transformer_lora_layers=state, safe_serialization=True)
        return True

    def loading_kwargs(self) -> dict[str, Any]:
        # a pipeline saved without T5 loads only when told so (its model_index still expects the component)
        return {} if self.text_encoder_3 is not None else {"text_encoder_3": None, "tokenizer_3": None}

    def sampling_kwargs(self, steps: int, guidance: float | None) -> dict[str, Any]:
        kwargs = {**super().sampling_kwargs(steps, guidance), "max_sequence_length": self.max_sequence_length}
        # StableDiffusion3Pipeline guides whenever guidance_scale > 1 (its default is 7.0): say 1.0 when the
        # student had none
        kwargs["guidance_scale"] = float(guidance) if guidance is not None else 1.0
        return kwargs
