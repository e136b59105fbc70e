"""PixArt-α and PixArt-Σ: ``PixArtTransformer2DModel`` (DiT) + T5 text encoder + VAE.

Which one is read from the folder's ``model_index.json`` (``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline``): it sets the default T5 length (120 / 300 tokens) and the export class.
eps-prediction seen in the ``ve`` convention, σ/timestep maths by ``EulerDiscreteScheduler`` built from
the model's scheduler config (trailing spacing by default). The transformers that predict a learned
variance (``out_channels = 2 × latent channels``) have the second half of their output dropped, as the
pipelines do; the 1024 px α model's resolution / aspect-ratio conditioning is passed when the
transformer uses it (``use_additional_conditions``).

Captions are not "cleaned" (the pipelines' optional ``clean_caption`` needs bs4 + ftfy); prompts go to
T5 as written.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rats_core.method.sigmas import ve_model_input

from .devices import module_dtype
from .diffusers_backbone import DiffusersBackbone, check_resolution
from .options import DEFAULT_IDS, PixArtOptions
from .sampling import VESchedule, cfg, ve_x0
from .text import load_tokenizer, tokenize
from .vae import vae_scale_factor
from .weights import Part, load_part

DEFAULT_ID = DEFAULT_IDS["pixart"]

TRANSFORMER = Part("transformer", "the PixArt transformer, PixArtTransformer2DModel")
VAE = Part("vae", "the VAE, AutoencoderKL")
TEXT_ENCODER = Part("text_encoder", "the T5 text encoder")
TOKENIZER = Part("tokenizer", "the T5 tokenizer")
SCHEDULER = Part("scheduler", "the scheduler config")

#: attention (self and cross) and the feed-forward of every block
PIXART_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


class PixArtBackbone(DiffusersBackbone):
    """PixArt-α/Σ seen through RATS. ``cond`` holds the T5 ``encoder_hidden_states`` [B, L, 4096] and
    their ``encoder_attention_mask`` [B, L]."""

    name = "pixart"
    interpolation = "ve"

    def __init__(self, options: PixArtOptions):
        from diffusers import EulerDiscreteScheduler, PixArtTransformer2DModel
        from transformers import T5EncoderModel

        self._locate(options, DEFAULT_ID, (TRANSFORMER, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER))
        self.sigma_variant = self.source.model_index.get("_class_name") == "PixArtSigmaPipeline"
        self.pipeline_class = "PixArtSigmaPipeline" if self.sigma_variant else "PixArtAlphaPipeline"
        self.max_sequence_length = options.max_sequence_length or (300 if self.sigma_variant else 120)
        self.schedule = VESchedule(load_part(self.source, SCHEDULER, EulerDiscreteScheduler.load_config),
                                   options.timestep_spacing)
        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        self.text_encoder = self._load_text_encoder(TEXT_ENCODER, T5EncoderModel.from_pretrained)
        self.vae = self._load_vae(VAE)
        transformer = self.denoiser = self._load_denoiser(TRANSFORMER, PixArtTransformer2DModel.from_pretrained)
        self.vae_factor = vae_scale_factor(self.vae)
        self.latent_channels = transformer.config.in_channels
        self.learned_sigma = transformer.config.out_channels == 2 * self.latent_channels
        # Student and teacher share the architecture: read it once from the base model (a wrapped
        # or LoRA'd copy may hide the attribute).
        self.resolution_conditioning = bool(transformer.use_additional_conditions)
        multiple = self.vae_factor * transformer.config.patch_size
        self.resolution = check_resolution(options.resolution or transformer.config.sample_size * self.vae_factor,
                                           multiple, self.name)
        self.lora_target_modules = list(PIXART_LORA_TARGETS)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        tokens = tokenize(self.tokenizer, prompts, self.max_sequence_length, add_special_tokens=True)
        mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return {"encoder_hidden_states": hidden, "encoder_attention_mask": mask}

    def _added_cond(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        if not self.resolution_conditioning:
            return {"resolution": None, "aspect_ratio": None}
        r = float(self.resolution)
        return {
            "resolution": torch.tensor([[r, r]], device=device, dtype=dtype).expand(batch, 2),
            "aspect_ratio": torch.tensor([[1.0]], device=device, dtype=dtype).expand(batch, 1),
        }

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                   guidance_scale: float = 1.0) -> Tensor:
        net = self._network_inputs(x, sigma, cond, guidance_scale, ve_model_input)
        dtype = module_dtype(denoiser)
        out = denoiser(
            net.x.to(dtype),
            encoder_hidden_states=net.cond["encoder_hidden_states"].to(dtype),
            encoder_attention_mask=net.cond["encoder_attention_mask"],
            timestep=net.t,
            added_cond_kwargs=self._added_cond(net.x.shape[0], x.device, dtype),
            return_dict=False,
        )[0].to(x.dtype)
        if self.learned_sigma:
            out = out.chunk(2, dim=1)[0]
        if net.guided:
            out = cfg(*out.chunk(2), guidance_scale)
        return ve_x0(self.schedule.prediction_type, x, net.sigma, out)

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any):
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        return cls(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae, transformer=denoiser,
                   scheduler=scheduler)

    def sampling_kwargs(self, steps: int, guidance: float | None) -> dict[str, Any]:
        # The student was trained at exactly height × width: no aspect-ratio binning (which also has no
        # bins for sizes other than PixArt's 256/512/1024 families); and on the prompts as written, which
        # the pipeline would otherwise "clean" (lower-casing, stripping URLs and punctuation) first.
        return {**super().sampling_kwargs(steps, guidance), "max_sequence_length": self.max_sequence_length,
                "use_resolution_binning": False, "clean_caption": False}
