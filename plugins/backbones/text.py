"""Text encoding for the diffusers backbones: loading the frozen tokenizers and encoders, and the
CLIP states the SDXL and SD3 pipelines build their prompt embeddings from."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .devices import freeze
from .weights import Part, Source, load_part


def load_tokenizer(source: Source, part: Part):
    from transformers import AutoTokenizer

    return load_part(source, part, AutoTokenizer.from_pretrained)


def load_text_encoder(source: Source, part: Part, loader: Callable[..., Any], dtype: torch.dtype,
                      variant: str | None, device: torch.device) -> nn.Module:
    """A frozen transformers text encoder (``loader`` is e.g. ``CLIPTextModel.from_pretrained``) on ``device``."""
    encoder = load_part(source, part, loader, dtype=dtype, variant=variant, transformers=True)
    return freeze(encoder).to(device)


def tokenize(tokenizer: Any, prompts: list[str], max_length: int | None = None, **kwargs: Any):
    """Padded to ``max_length`` (default: the tokenizer's) and truncated, as every pipeline tokenizes."""
    return tokenizer(prompts, padding="max_length", max_length=max_length or tokenizer.model_max_length,
                     truncation=True, return_tensors="pt", **kwargs)


def clip_states(tokenizer: Any, encoder: nn.Module, prompts: list[str], device: torch.device,
                max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """A CLIP encoder's penultimate hidden states ``[B, L, D]`` and its first output (the projected
    ``text_embeds`` ``[B, P]`` of a ``CLIPTextModelWithProjection``), as the SDXL and SD3 pipelines take them."""
    out = encoder(tokenize(tokenizer, prompts, max_length).input_ids.to(device), output_hidden_states=True)
    return out.hidden_states[-2], out[0]
