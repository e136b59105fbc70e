"""PickScore (Kirstain et al. 2023) as a differentiable reward, scoring like the official snippet.

The official scorer (yuvalkirstain/PickScore README) loads ``yuvalkirstain/PickScore_v1`` as a
transformers ``CLIPModel`` (a fine-tuned CLIP ViT-H/14) and the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, and scores

    score = logit_scale.exp() · cos(image_embeds, text_embeds)        (≈ 18–24)

with the processor's image transform (shorter side → 224, bicubic; centre crop 224 with transformers'
floor offset; CLIP mean/std) and text ``padding=True, truncation=True, max_length=77``. The
projections are applied explicitly (``visual_projection(vision_model(...).pooler_output)``) because
``get_image_features`` returns a tensor in transformers 4.x but an output object in 5.x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from rats_core.errors import CheckpointError

from ._base import DType, FrozenReward
from ._preprocess import center_crop, check_images, normalize, resize_crop_normalize, resize_like_pil
from ._weights import WeightsHint, from_pretrained
from .plugin import PICKSCORE_ID, pickscore  # noqa: F401  (the factory lives in plugin.py)

REPO_ID = PICKSCORE_ID
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MAX_LENGTH = 77

_WEIGHTS = WeightsHint("PickScore", REPO_ID, None, "path", "/models/PickScore_v1")
_PROCESSOR = WeightsHint(
    "PickScore's processor (tokenizer)", PROCESSOR, None, "processor", "/models/CLIP-ViT-H-14-processor",
    include=("*.json", "*.txt"),  # tokenizer + preprocessor config only, not the 4 GB of CLIP weights
)


def default_processor(path: str) -> str:
    """The model folder itself when it also holds a tokenizer and an image processor config (one folder
    with everything), otherwise the LAION processor the official snippet uses."""
    folder = Path(path).expanduser()
    has_tokenizer = (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
    has_image_config = (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file()
    return str(folder) if folder.is_dir() and has_tokenizer and has_image_config else PROCESSOR


def _field(obj: Any, key: str) -> Any:
    """``size``/``crop_size`` are dicts in transformers 4.x and ``SizeDict`` objects in 5.x."""
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


class PickScore(FrozenReward):
    """``PickScore(images[B,3,H,W] in [0,1], prompts) -> [B]``: ``logit_scale.exp() · cos`` (≈ 18–24)."""

    def __init__(self, path: str = REPO_ID, processor: str | None = None, dtype: DType = "float32"):
        super().__init__(dtype)
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        processor = processor or default_processor(path)
        self.model = from_pretrained(CLIPModel.from_pretrained, path, _WEIGHTS)
        if not isinstance(self.model, CLIPModel):
            raise CheckpointError(f"PickScore: {path} is not a CLIPModel checkpoint")
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, processor, _PROCESSOR)
        image_processor = from_pretrained(CLIPImageProcessor.from_pretrained, processor, _PROCESSOR)
        self.shortest_edge = _field(image_processor.size, "shortest_edge")
        self.resize_to = (_field(image_processor.size, "height"), _field(image_processor.size, "width"))
        self.crop_size = _field(image_processor.crop_size, "height") if image_processor.do_center_crop else None
        self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        # read before freeze() casts the model: a bf16 logit_scale is ln 100 -> 4.59375, scores 1.14 % low
        self.logit_scale = float(self.model.logit_scale.detach().double().exp())
        self.freeze()

    def preprocess(self, images: Tensor) -> Tensor:
        """The CLIP image processor (resize shorter side, centre crop, normalise), differentiable."""
        if self.shortest_edge and self.crop_size == self.shortest_edge:
            return resize_crop_normalize(
                images, self.shortest_edge, crop_offset="floor", mean=self.mean, std=self.std
            )
        # other processor configs: a fixed (h, w) resize, optionally cropped
        x = resize_like_pil(images, self.resize_to)
        if self.crop_size:
            x = center_crop(x, self.crop_size, "floor")
        return normalize(x, self.mean, self.std)

    def encode_text(self, prompts: list[str]) -> Tensor:
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        out = self.model.text_model(
            input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
        )
        return self.unit(self.model.text_projection(out.pooler_output))

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images, prompts, "pickscore")
        text = self.cached(prompts, self.encode_text)
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        image = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        # the scale and the cosine in float32 whatever the model's dtype (see _base.py)
        return self.as_scores(self.logit_scale * (self.unit(image) * text).sum(dim=-1))
