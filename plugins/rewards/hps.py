"""HPSv2 and HPSv2.1 (Wu et al. 2023) as differentiable rewards, scoring like the official ``hpsv2.score``.

The official scorer (tgxs002/HPSv2, ``hpsv2/img_score.py``) is an open_clip ``ViT-H-14`` whose weights
are replaced by the HPS checkpoint's ``state_dict``; the score is the dot product of the L2-normalised
image and text features (≈ 0.2–0.35; papers print it ×100). Its image transform is open_clip's
``preprocess_val`` with ``light_augmentation=True``, i.e. ``ToTensor → ResizeMaxSize(224) → Normalize``:
the *longer* side is resized to 224 (bicubic, on the tensor) and the image padded with black to a square
— not the resize-shorter-side-and-crop of plain CLIP.

The official ``ResizeMaxSize`` resizes with torchvision's tensor ``resize``, whose ``antialias`` default
became ``True`` in torchvision 0.17; ``antialias=False`` reproduces scores computed with older
torchvision (no antialiasing when shrinking).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import Tensor

from rats_core.errors import CheckpointError

from ._base import DType, FrozenReward
from ._preprocess import CLIP_MEAN, CLIP_STD, check_images, resize_longest_pad_normalize
from ._weights import load_state_dict, resolve_file, strip_prefix
from .locate import HPS as HPS_HINTS
from .options import HPS_ARCHITECTURE, HPS_FILENAMES

REPO_ID = "xswu/HPSv2"
FILENAMES = HPS_FILENAMES
ARCHITECTURE = HPS_ARCHITECTURE


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns that a model built with pretrained=None is random; the HPS weights follow."""
    root, flt = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


class HPS(FrozenReward):
    """``HPS(images[B,3,H,W] in [0,1], prompts) -> [B]``: cosine of image and text features (≈ 0.2–0.35)."""

    def __init__(
        self,
        version: str = "v2.1",
        path: str | None = None,
        architecture: str = ARCHITECTURE,
        antialias: bool = True,
        dtype: DType = "float32",
    ):
        super().__init__(dtype)
        import open_clip

        if architecture not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {architecture!r} (HPS uses {ARCHITECTURE})")
        filename = FILENAMES[version]
        checkpoint = resolve_file(path, HPS_HINTS[version])
        state = load_state_dict(checkpoint)
        state = strip_prefix(state.get("state_dict", state), "module.")
        # pretrained=None: build the bare architecture, then take every weight from the HPS checkpoint
        with _quiet_random_init():
            self.model = open_clip.create_model(architecture, pretrained=None, precision="fp32", device="cpu")
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{checkpoint} does not fit open_clip {architecture}: {str(exc).splitlines()[0][:300]}"
            ) from None
        self.tokenizer = open_clip.get_tokenizer(architecture)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.antialias = antialias
        self.freeze()

    def preprocess(self, images: Tensor) -> Tensor:
        """Official ``ResizeMaxSize(224, fill=0)`` + CLIP ``Normalize``, differentiable."""
        return resize_longest_pad_normalize(
            images, self.image_size, fill=0.0, antialias=self.antialias, mean=CLIP_MEAN, std=CLIP_STD
        )

    def encode_text(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return self.unit(self.model.encode_text(tokens))

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images, prompts, "hps")
        text = self.cached(prompts, self.encode_text)
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        image = self.model.encode_image(pixels)
        # normalised and summed in float32 whatever the model's dtype (see _base.py)
        return self.as_scores((self.unit(image) * text).sum(dim=-1))
