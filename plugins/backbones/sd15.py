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

from rats_core.method.sigmas import ve_model_input

from .devices import module_dtype
from .diffusers_backbone import DiffusersBackbone, check_resolution
from .options import DEFAULT_IDS, UNetOptions
from .sampling import VESchedule, cfg, ve_x0
from .text import load_tokenizer, tokenize
from .vae import vae_scale_factor
from .weights import Part, load_part

DEFAULT_ID = DEFAULT_IDS["sd15"]

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

    def __init__(self, options: UNetOptions):
        from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

        self._locate(options, self.default_id, self.parts)
        self.schedule = VESchedule(load_part(self.source, SCHEDULER, EulerDiscreteScheduler.load_config),
                                   options.timestep_spacing, options.prediction_type)
        self._load_text()
        self.vae = self._load_vae(VAE)
        unet = self.denoiser = self._load_denoiser(UNET, UNet2DConditionModel.from_pretrained)
        self.vae_factor = vae_scale_factor(self.vae)
        self.latent_channels = unet.config.in_channels
        multiple = self.vae_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        self.resolution = check_resolution(options.resolution or unet.config.sample_size * self.vae_factor, multiple,
                                           self.name)
        self.lora_target_modules = list(UNET_LORA_TARGETS)

    # -- text

    def _load_text(self) -> None:
        from transformers import CLIPTextModel

        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        self.text_encoder = self._load_text_encoder(TEXT_ENCODER, CLIPTextModel.from_pretrained)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        tokens = tokenize(self.tokenizer, prompts)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return {"encoder_hidden_states": hidden}

    # -- the network

    def _unet_kwargs(self, cond: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": cond["encoder_hidden_states"].to(dtype)}

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                   guidance_scale: float = 1.0) -> Tensor:
        net = self._network_inputs(x, sigma, cond, guidance_scale, ve_model_input)
        dtype = module_dtype(denoiser)
        out = denoiser(net.x.to(dtype), net.t, **self._unet_kwargs(net.cond, dtype), return_dict=False)[0].to(x.dtype)
        if net.guided:
            out = cfg(*out.chunk(2), guidance_scale)
        return ve_x0(self.schedule.prediction_type, x, net.sigma, out)

    # -- export

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
