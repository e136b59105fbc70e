"""What PickScore and CLIPScore share: a transformers ``CLIPModel`` scoring the cosine of an image and its
prompt, with the image transform its processor config describes, done in torch.

The projections are applied explicitly (``visual_projection(vision_model(...).pooler_output)``) because
``get_image_features`` returns a tensor in transformers 4.x but an output object in 5.x.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from rats_core.errors import CheckpointError

from ._base import DType, FrozenReward
from ._preprocess import center_crop, normalize, resize_crop_normalize, resize_like_pil
from ._weights import WeightsHint, from_pretrained

#: CLIP's text context; longer prompts are truncated with the end token kept (``truncation=True``)
MAX_LENGTH = 77


def _field(obj: Any, key: str) -> Any:
    """``size``/``crop_size`` are dicts in transformers 4.x and ``SizeDict`` objects in 5.x."""
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


class CLIPCosine(FrozenReward):
    """A ``CLIPModel`` plus its tokenizer and image processor; :meth:`similarity` is ``cos(image, prompt)``.

    Subclasses turn the cosine into their score and call :meth:`freeze` once they have read what they
    need from the model in float32 (PickScore's ``logit_scale``).
    """

    def __init__(self, path: str, processor: str, *, what: str, weights: WeightsHint,
                 processor_hint: WeightsHint, dtype: DType = "float32"):
        super().__init__(dtype)
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model = from_pretrained(CLIPModel.from_pretrained, path, weights)
        if not isinstance(self.model, CLIPModel):
            raise CheckpointError(f"{what}: {path} is not a CLIPModel checkpoint")
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, processor, processor_hint)
        image_processor = from_pretrained(CLIPImageProcessor.from_pretrained, processor, processor_hint)
        self.shortest_edge = _field(image_processor.size, "shortest_edge")
        self.resize_to = (_field(image_processor.size, "height"), _field(image_processor.size, "width"))
        self.crop_size = _field(image_processor.crop_size, "height") if image_processor.do_center_crop else None
        self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)

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
        """Unit text features ``[B, D]`` (float32)."""
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        out = self.model.text_model(
            input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
        )
        return self.unit(self.model.text_projection(out.pooler_output))

    def encode_image(self, images: Tensor) -> Tensor:
        """Unit image features ``[B, D]`` (float32) of ``[B, 3, H, W]`` images in ``[0, 1]``."""
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        return self.unit(self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output))

    def similarity(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``[B]`` cosines of each image and its prompt, in float32 whatever the model's dtype (see _base.py);
        the text side is cached per prompt list."""
        text = self.cached(prompts, self.encode_text)
        return (self.encode_image(images) * text).sum(dim=-1)
