"""CLIPScore (Hessel et al. 2021) as a differentiable reward and as an evaluation metric.

    clipscore(image, prompt) = w · max(cos(E_image, E_prompt), 0)

on a transformers ``CLIPModel``, by default ``openai/clip-vit-large-patch14`` as torchmetrics'
``CLIPScore``. ``w = 100`` is the scale torchmetrics reports (0…100; ≈ 25–35 for a matching prompt with
CLIP ViT-L/14); the paper defines ``w = 2.5``. The image transform is the model's processor config as
torchmetrics runs it (shorter side → 224 bicubic, centre crop with transformers' floor offset, CLIP
mean/std), done in torch; prompts are padded and truncated to 77 tokens keeping the end token (for a
prompt over 77 tokens torchmetrics cuts the ids instead, dropping the end token: only there do the two
differ).

The ``clipscore`` metric is the paper's corpus score: the mean over images of the per-image score.
torchmetrics clamps the mean instead of each image's cosine; the two agree whenever no cosine is
negative, which is the case for a real CLIP on real images.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._base import DType
from ._clip import CLIPCosine
from ._preprocess import check_images
from .locate import CLIPSCORE, CLIPSCORE_PROCESSOR
from .options import CLIP_ID

REPO_ID = CLIP_ID
_WEIGHTS = CLIPSCORE
_PROCESSOR = CLIPSCORE_PROCESSOR


class ClipScore(CLIPCosine):
    """``ClipScore(images[B,3,H,W] in [0,1], prompts) -> [B]``: ``w · max(cos, 0)`` (w = 100: 0…100)."""

    def __init__(self, path: str = REPO_ID, processor: str | None = None, w: float = 100.0, prefix: str = "",
                 dtype: DType = "float32"):
        super().__init__(path, processor or path, what="CLIPScore", weights=_WEIGHTS,
                         processor_hint=_PROCESSOR, dtype=dtype)
        self.w, self.prefix = float(w), prefix
        self.freeze()

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images, prompts, "clipscore")
        texts = [self.prefix + p for p in prompts] if self.prefix else prompts
        # an image whose cosine is negative scores 0 and gets no gradient (the definition's max)
        return self.as_scores(self.w * self.similarity(images, texts).clamp(min=0.0))


class ClipScoreMetric:
    """``{"clipscore": mean over images of w · max(cos, 0)}``, in batches of ``batch_size`` images."""

    def __init__(self, path: str = REPO_ID, processor: str | None = None, w: float = 100.0, prefix: str = "",
                 dtype: DType = "float32", batch_size: int = 32, device: str | None = None):
        self.score = ClipScore(path=path, processor=processor, w=w, prefix=prefix, dtype=dtype)
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @torch.no_grad()
    def per_image(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``[B]`` scores on the CPU."""
        check_images(images, prompts, "clipscore metric")
        self.score.to(self.device)
        prompts = list(prompts)
        parts = [self.score(images[i : i + self.batch_size], prompts[i : i + self.batch_size]).cpu()
                 for i in range(0, len(prompts), self.batch_size)]
        return torch.cat(parts)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        return {"clipscore": self.per_image(images, prompts).mean().item()}
