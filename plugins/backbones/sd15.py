"""Stable Diffusion 1.x / 2.x: ``UNet2DConditionModel`` + one CLIP text encoder + VAE.

eps- and v-prediction models alike: the prediction type comes from the model's scheduler config
(``prediction_type``), so SD1.5 and the SD2.x v-models both work. Seen in the ``ve`` convention
(``x = x0 + σ·eps``, network input ``x / sqrt(σ² + 1)``), with the σ/timestep maths done by diffusers'
``EulerDiscreteScheduler`` built from the model's own scheduler config, trailing spacing by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rats_core.sigmas import ve_model_input

from ._diffusers_common import (
    DTYPES,
    DiffusersBackbone,
    Part,
    VESchedule,
    batch_cond,
    cfg,
    check_resolution,
    configure_vae,
    freeze,
    load_part,
    load_tokenizer,
    load_vae,
    locate_weights,
    module_dtype,
    per_sample,
    resolve_device,
    to_device,
    vae_scale_factor,
    ve_x0,
)
from .plugin import sd15  # noqa: F401  (the factory lives in plugin.py)

DEFAULT_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

UNET = Part("unet", "the UNet, UNet2DConditionModel")
VAE = Part("vae", "the VAE, AutoencoderKL")
TEXT_ENCODER = Part("text_encoder", "the CLIP text encoder")
TOKENIZER = Part("tokenizer", "the CLIP tokenizer")
SCHEDULER = Part("scheduler", "the scheduler config")

#: peft target names for a UNet: attention, feed-forward, resnet convs and time projections
#: (the set LCM-LoRA distillation adapts; few-step students need more than attention alone).
UNET_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]


class SD15Backbone(DiffusersBackbone):
    """SD1.x/2.x seen through RATS. ``cond`` is ``{"encoder_hidden_states": [B, 77, D]}``."""

    name = "sd15"
    pipeline_class = "StableDiffusionPipeline"
    interpolation = "ve"
    default_id = DEFAULT_ID
    parts = (UNET, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER)

    def __init__(
        self,
        path: str | None = None,
        *,
        resolution: int | None = None,
        device: str | None = None,
        dtype: str = "fp32",
        denoiser_dtype: str = "fp32",
        gradient_checkpointing: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        timestep_spacing: str = "trailing",
        prediction_type: str | None = None,
        variant: str | None = None,
        revision: str | None = None,
    ):
        from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

        self.device = resolve_device(device)
        self.source = locate_weights(path, self.default_id, self.parts, self.name, revision=revision, variant=variant)
        frozen = DTYPES[dtype]
        self.schedule = VESchedule(load_part(self.source, SCHEDULER, EulerDiscreteScheduler.load_config),
                                   timestep_spacing, prediction_type)
        self._load_text(frozen, variant)
        self.vae = load_vae(self.source, VAE, frozen, variant, self.device)
        configure_vae(self.vae, vae_slicing, vae_tiling)
        unet = load_part(self.source, UNET, UNet2DConditionModel.from_pretrained, dtype=DTYPES[denoiser_dtype],
                         variant=variant)
        self.denoiser = unet.to(self.device)
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.vae_factor = vae_scale_factor(self.vae)
        self.latent_channels = unet.config.in_channels
        multiple = self.vae_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        self.resolution = check_resolution(resolution or unet.config.sample_size * self.vae_factor, multiple, self.name)
        self.lora_target_modules = list(UNET_LORA_TARGETS)

    # -- text

    def _load_text(self, dtype: torch.dtype, variant: str | None) -> None:
        from transformers import CLIPTextModel

        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        encoder = load_part(self.source, TEXT_ENCODER, CLIPTextModel.from_pretrained, dtype=dtype, variant=variant,
                            transformers=True)
        self.text_encoder = freeze(encoder).to(self.device)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def _tokens(self, tokenizer: Any, prompts: list[str]):
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        tokens = self._tokens(self.tokenizer, prompts)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return {"encoder_hidden_states": hidden}

    # -- σ and the network

    def sigmas(self, num_steps: int) -> Tensor:
        return self.schedule.sigmas(num_steps)

    def timestep(self, sigma: Tensor | float) -> Tensor:
        """The (fractional) UNet timestep for σ, as the scheduler maps it."""
        return self.schedule.timestep(torch.as_tensor(sigma, dtype=torch.float32).detach().cpu())

    def _unet_kwargs(self, cond: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": cond["encoder_hidden_states"].to(dtype)}

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                   guidance_scale: float = 1.0) -> Tensor:
        self._note_guidance(guidance_scale)
        b = x.shape[0]
        s = per_sample(sigma, b, x.device)
        t = per_sample(self.timestep(sigma), b, x.device)
        inp = ve_model_input(x, s)
        cond = to_device(cond, x.device)
        guided = guidance_scale > 1
        if guided:
            cond = batch_cond(cond, to_device(self.negative_cond(), x.device), b)
            inp, t = torch.cat([inp, inp]), torch.cat([t, t])
        dtype = module_dtype(denoiser)
        out = denoiser(inp.to(dtype), t, **self._unet_kwargs(cond, dtype), return_dict=False)[0].to(x.dtype)
        if guided:
            out = cfg(*out.chunk(2), guidance_scale)
        return ve_x0(self.schedule.prediction_type, x, s, out)

    # -- export

    def _export_scheduler(self):
        return self.schedule.export_scheduler()

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=denoiser,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(str(directory), unet_lora_layers=state, safe_serialization=True)
        return True
