"""PickScore (Kirstain et al. 2023) as a differentiable reward, scoring like the official snippet.

The official scorer (yuvalkirstain/PickScore README) loads ``yuvalkirstain/PickScore_v1`` as a
transformers ``CLIPModel`` (a fine-tuned CLIP ViT-H/14) and the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, and scores

    score = logit_scale.exp() · cos(image_embeds, text_embeds)        (≈ 18–24)

with the processor's image transform (shorter side → 224, bicubic; centre crop 224 with transformers'
floor offset; CLIP mean/std) and text ``padding=True, truncation=True, max_length=77`` — the CLIP
scoring it shares with CLIPScore is in _clip.py.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ._base import DType
from ._clip import CLIPCosine
from ._preprocess import check_images
from .locate import PICKSCORE, PICKSCORE_PROCESSOR, PICKSCORE_PROCESSOR_ID, pickscore_processor
from .options import PICKSCORE_ID

REPO_ID = PICKSCORE_ID
PROCESSOR = PICKSCORE_PROCESSOR_ID

_WEIGHTS = PICKSCORE
_PROCESSOR = PICKSCORE_PROCESSOR


default_processor = pickscore_processor  # (where PickScore's tokenizer and image processor come from)


class PickScore(CLIPCosine):
    """``PickScore(images[B,3,H,W] in [0,1], prompts) -> [B]``: ``logit_scale.exp() · cos`` (≈ 18–24)."""

    def __init__(self, path: str = REPO_ID, processor: str | None = None, dtype: DType = "float32"):
        super().__init__(path, processor or default_processor(path), what="PickScore", weights=_WEIGHTS,
                         processor_hint=_PROCESSOR, dtype=dtype)
        # read before freeze() casts the model: a bf16 logit_scale is ln 100 -> 4.59375, scores 1.14 % low
        self.logit_scale = float(self.model.logit_scale.detach().double().exp())
        self.freeze()

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images, prompts, "pickscore")
        # the scale and the cosine in float32 whatever the model's dtype (see _base.py)
        return self.as_scores(self.logit_scale * self.similarity(images, prompts))
