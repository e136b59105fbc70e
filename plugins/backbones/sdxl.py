"""Stable Diffusion XL: the SD UNet with two CLIP text encoders, pooled text embeddings and
size/crop micro-conditioning (``add_time_ids``), as ``StableDiffusionXLPipeline`` computes them.

Text: the penultimate hidden states of both encoders, concatenated; the pooled embedding is the
projected output of the second. Micro-conditions: original size = target size = the training
resolution, crop (0, 0). With ``force_zeros_for_empty_prompt`` (SDXL base), the unconditional
branch of CFG is all zeros, like the pipeline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .options import DEFAULT_IDS, UNetOptions
from .sd15 import SCHEDULER, TEXT_ENCODER, TOKENIZER, UNET, VAE, SD15Backbone
from .text import clip_states, load_tokenizer
from .weights import Part

DEFAULT_ID = DEFAULT_IDS["sdxl"]

TEXT_ENCODER_2 = Part("text_encoder_2", "the second CLIP text encoder, with projection")
TOKENIZER_2 = Part("tokenizer_2", "the second CLIP tokenizer")


class SDXLBackbone(SD15Backbone):
    """SDXL seen through RATS. ``cond`` holds ``encoder_hidden_states`` [B, 77, D1+D2],
    ``text_embeds`` (pooled, [B, P]) and ``time_ids`` [B, 6]."""

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    default_id = DEFAULT_ID
    parts = (UNET, VAE, TEXT_ENCODER, TEXT_ENCODER_2, TOKENIZER, TOKENIZER_2, SCHEDULER)

    def __init__(self, options: UNetOptions):
        super().__init__(options)
        self.force_zeros_for_empty_prompt = bool(self.source.model_index.get("force_zeros_for_empty_prompt", True))

    def _load_text(self) -> None:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        self.tokenizer = load_tokenizer(self.source, TOKENIZER)
        self.tokenizer_2 = load_tokenizer(self.source, TOKENIZER_2)
        self.text_encoder = self._load_text_encoder(TEXT_ENCODER, CLIPTextModel.from_pretrained)
        self.text_encoder_2 = self._load_text_encoder(TEXT_ENCODER_2, CLIPTextModelWithProjection.from_pretrained)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder, self.text_encoder_2]

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            states, first = clip_states(tokenizer, encoder, prompts, self.device)
            if pooled is None and first.ndim == 2:  # the projection encoder's text_embeds
                pooled = first
            hidden.append(states)
        if pooled is None:
            raise ValueError("sdxl: neither text encoder returned pooled text embeddings")
        return {
            "encoder_hidden_states": torch.cat(hidden, dim=-1),
            "text_embeds": pooled,
            "time_ids": self.time_ids(len(prompts)),
        }

    def time_ids(self, batch_size: int) -> Tensor:
        """``original_size + crops_coords_top_left + target_size`` per image, as the pipeline builds it."""
        r = float(self.resolution)
        return torch.tensor([[r, r, 0.0, 0.0, r, r]], device=self.device).expand(batch_size, 6).contiguous()

    def _encode_negative(self) -> dict[str, Any]:
        neg = self.encode_prompts([""])
        if self.force_zeros_for_empty_prompt:
            neg["encoder_hidden_states"] = torch.zeros_like(neg["encoder_hidden_states"])
            neg["text_embeds"] = torch.zeros_like(neg["text_embeds"])
        return neg

    def _unet_kwargs(self, cond: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        return {
            "encoder_hidden_states": cond["encoder_hidden_states"].to(dtype),
            "added_cond_kwargs": {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)},
        }

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=denoiser, scheduler=scheduler,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
        )

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(str(directory), unet_lora_layers=state, safe_serialization=True)
        return True
