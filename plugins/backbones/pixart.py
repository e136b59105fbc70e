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
from .plugin import pixart  # noqa: F401  (the factory lives in plugin.py)

DEFAULT_ID = "PixArt-alpha/PixArt-XL-2-512x512"

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
        max_sequence_length: int | None = None,
        variant: str | None = None,
        revision: str | None = None,
    ):
        from diffusers import EulerDiscreteScheduler, PixArtTransformer2DModel
        from transformers import T5EncoderModel

        self.device = resolve_device(device)
        parts = (TRANSFORMER, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER)
        self.source = locate_weights(path, DEFAULT_ID, parts, self.name, revision=revision, variant=variant)
        self.sigma_variant = self.source.model_index.get("_class_name") == "PixArtSigmaPipeline"
        self.pipeline_class = "PixArtSigmaPipeline" if self.sigma_variant else "PixArtAlphaPipeline"
        self.max_sequence_length = max_sequence_length or (300 if self.sigma_variant else 120)
        frozen = DTYPES[dtype]
        self.schedule = VESchedule(load_part(self.source, SCHEDULER, EulerDiscreteScheduler.load_config),
                                   timestep_spacing)
        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        encoder = load_part(self.source, TEXT_ENCODER, T5EncoderModel.from_pretrained, dtype=frozen, variant=variant,
                            transformers=True)
        self.text_encoder = freeze(encoder).to(self.device)
        self.vae = load_vae(self.source, VAE, frozen, variant, self.device)
        configure_vae(self.vae, vae_slicing, vae_tiling)
        transformer = load_part(self.source, TRANSFORMER, PixArtTransformer2DModel.from_pretrained,
                                dtype=DTYPES[denoiser_dtype], variant=variant)
        self.denoiser = transformer.to(self.device)
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.vae_factor = vae_scale_factor(self.vae)
        self.latent_channels = transformer.config.in_channels
        self.learned_sigma = transformer.config.out_channels == 2 * self.latent_channels
        # Student and teacher share the architecture: read it once from the base model (a wrapped
        # or LoRA'd copy may hide the attribute).
        self.resolution_conditioning = bool(transformer.use_additional_conditions)
        multiple = self.vae_factor * transformer.config.patch_size
        self.resolution = check_resolution(resolution or transformer.config.sample_size * self.vae_factor, multiple,
                                           self.name)
        self.lora_target_modules = list(PIXART_LORA_TARGETS)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return {"encoder_hidden_states": hidden, "encoder_attention_mask": mask}

    def sigmas(self, num_steps: int) -> Tensor:
        return self.schedule.sigmas(num_steps)

    def timestep(self, sigma: Tensor | float) -> Tensor:
        return self.schedule.timestep(torch.as_tensor(sigma, dtype=torch.float32).detach().cpu())

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
        out = denoiser(
            inp.to(dtype),
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=t,
            added_cond_kwargs=self._added_cond(inp.shape[0], x.device, dtype),
            return_dict=False,
        )[0].to(x.dtype)
        if self.learned_sigma:
            out = out.chunk(2, dim=1)[0]
        if guided:
            out = cfg(*out.chunk(2), guidance_scale)
        return ve_x0(self.schedule.prediction_type, x, s, out)

    def _export_scheduler(self):
        return self.schedule.export_scheduler()

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
