"""The LAION aesthetic predictor v2 ("improved aesthetic predictor") as a differentiable reward.

The official predictor (christophschuhmann/improved-aesthetic-predictor, ``simple_inference.py``) embeds
the image with OpenAI's CLIP ViT-L/14 (``clip.load("ViT-L/14")``: its preprocess is
``Resize(224, bicubic) → CenterCrop(224) → ToTensor → Normalize(CLIP)`` on the PIL image),
L2-normalises the 768-d embedding and runs ``sac+logos+ava1-l14-linearMSE.pth``, an MLP of five Linear
layers with dropouts between them and no activation:

    score = MLP(e / ‖e‖),   e = CLIP ViT-L/14 image embedding       (≈ 1–10; ≈ 5–6.5 for typical images)

Here the CLIP is the same network as a transformers ``CLIPModel`` (``openai/clip-vit-large-patch14``); only
its vision tower and projection are kept. The head is ImageReward's :class:`MLPHead` (same layout,
``layers.{0,2,4,6,7}``), kept in float32 like every score-setting part (see _base.py). The prompt is not
used: aesthetics is a property of the image alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from rats_core.errors import CheckpointError

from ._base import DType, FrozenReward, float32_compute
from ._preprocess import CLIP_MEAN, CLIP_STD, check_images, resize_crop_normalize
from ._weights import from_pretrained, load_state_dict, resolve_file, strip_prefix
from .imagereward import _MLP_LINEARS, MLPHead
from .locate import AESTHETIC_CLIP, AESTHETIC_HEAD, AESTHETIC_REPO, AESTHETIC_URL
from .options import AESTHETIC_FILENAME, CLIP_ID

FILENAME = AESTHETIC_FILENAME
REPO = AESTHETIC_REPO
URL = AESTHETIC_URL

_HEAD = AESTHETIC_HEAD
_CLIP = AESTHETIC_CLIP


def load_head(checkpoint: Path) -> MLPHead:
    """The official MLP from its state dict, sized from the tensor shapes (768 → 1024 → 128 → 64 → 16 → 1)."""
    state = strip_prefix(load_state_dict(checkpoint), "module.")
    expected = {f"layers.{i}.{p}" for i in _MLP_LINEARS for p in ("weight", "bias")}
    if set(state) != expected:
        raise CheckpointError(
            f"{checkpoint}: not the linear aesthetic predictor (expected the keys {sorted(expected)}, found "
            f"{sorted(state)[:10]}); the ReLU variants (ava+logos-l14-reluMSE.pth) have other keys and are "
            f"not supported: use {FILENAME}"
        )
    sizes = [state["layers.0.weight"].shape[1]] + [state[f"layers.{i}.weight"].shape[0] for i in _MLP_LINEARS]
    head = MLPHead(sizes)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: {str(exc).splitlines()[0][:300]}") from None
    if sizes[-1] != 1:
        raise CheckpointError(f"{checkpoint}: the head outputs {sizes[-1]} values, a score is 1")
    return head


class Aesthetic(FrozenReward):
    """``Aesthetic(images[B,3,H,W] in [0,1], prompts) -> [B]``: the LAION aesthetic score (≈ 1–10)."""

    float32_modules = ("head",)

    def __init__(self, path: str | None = None, clip: str = CLIP_ID, dtype: DType = "float32"):
        super().__init__(dtype)
        from transformers import CLIPModel

        checkpoint = resolve_file(path, _HEAD)
        head = load_head(checkpoint)
        model = from_pretrained(CLIPModel.from_pretrained, clip, _CLIP)
        if not isinstance(model, CLIPModel):
            raise CheckpointError(f"aesthetic: {clip} is not a CLIPModel checkpoint")
        if model.config.projection_dim != head.layers[0].in_features:
            raise CheckpointError(
                f"aesthetic: {clip} gives {model.config.projection_dim}-d image embeddings, the predictor "
                f"{checkpoint} takes {head.layers[0].in_features}-d ones (it was trained on CLIP ViT-L/14)"
            )
        # the text tower is never used: keep only what embeds an image
        self.vision, self.projection, self.head = model.vision_model, model.visual_projection, head
        self.image_size = int(model.config.vision_config.image_size)
        self.freeze()

    def preprocess(self, images: Tensor) -> Tensor:
        """OpenAI CLIP's ``Resize(224, BICUBIC) → CenterCrop(224) → Normalize``, differentiable."""
        return resize_crop_normalize(images, self.image_size, crop_offset="round", mean=CLIP_MEAN, std=CLIP_STD)

    def embed(self, images: Tensor) -> Tensor:
        """Unit CLIP image embeddings ``[B, 768]`` (float32)."""
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        return self.unit(self.projection(self.vision(pixel_values=pixels).pooler_output))

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images, prompts, "aesthetic")
        embedding = self.embed(images)
        with float32_compute(embedding.device):  # the head is the score: float32 (see _base.py)
            return self.as_scores(self.head(embedding))
