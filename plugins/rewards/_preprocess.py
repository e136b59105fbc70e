"""Differentiable image preprocessing that reproduces the official reward pipelines.

The official scorers take a PIL image and run torchvision / transformers transforms on it. The reward
plugins get ``[B, 3, H, W]`` tensors in ``[0, 1]`` with gradient, so the same steps are done here with
torch ops:

* **resize**: ``F.interpolate(mode="bicubic", antialias=True)``. With ``antialias=True`` PyTorch uses
  PIL's bicubic kernel (a = −0.5) and PIL's support widening when shrinking, and it *is* what
  torchvision's tensor ``Resize`` runs. For the PIL pipelines (:func:`resize_like_pil`) it is applied
  as PIL does: width first, then height, clipping to ``[0, 1]`` after each pass; what is left is PIL's
  rounding to uint8 (≤ 1 grey level);
* **output sizes and crop offsets** use each pipeline's own integer arithmetic (torchvision rounds the
  centre-crop offset, transformers floors it), so the same pixels are kept;
* **normalise** with the pipeline's mean and std.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: OpenAI CLIP normalisation, used by ImageReward (BLIP), HPSv2 and PickScore alike.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: Tensor, prompts: Sequence[str], name: str) -> None:
    """Raise ValueError unless ``images`` is ``[B, 3, H, W]`` with one prompt per image."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected images of shape [B, 3, H, W] in [0, 1], got {shape}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{name}: got {images.shape[0]} images but {len(prompts)} prompts")


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output ``(h, w)`` of "resize the shorter side to ``size``, keep the aspect ratio".

    Same arithmetic in torchvision's ``Resize(int)`` and transformers' ``shortest_edge``: the long
    side is truncated, not rounded.
    """
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize(images: Tensor, size: tuple[int, int], antialias: bool = True) -> Tensor:
    """Bicubic resize to ``size = (h, w)``; a no-op when the size already matches (as in PIL)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    # bicubic needs a floating dtype; keep float32 precision for half inputs
    dtype = images.dtype
    x = images.float() if dtype in (torch.float16, torch.bfloat16) else images
    out = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return out.to(dtype)


def resize_like_pil(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``PIL.Image.resize(size[::-1], BICUBIC)`` on ``[0, 1]`` tensors: separable passes, horizontal first,
    each clipped to ``[0, 1]`` as PIL's 8-bit intermediate image is (bicubic overshoots at edges)."""
    height, width = images.shape[-2:]
    x = images
    if width != size[1]:
        x = resize(x, (height, size[1])).clamp(0.0, 1.0)
    if height != size[0]:
        x = resize(x, size).clamp(0.0, 1.0)
    return x


def center_crop(images: Tensor, size: int, offset: Literal["round", "floor"]) -> Tensor:
    """Crop the central ``size × size`` square.

    ``offset="round"`` is torchvision's ``CenterCrop`` (``int(round((H − size) / 2))``, Python's
    round-half-to-even), ``"floor"`` is transformers' image processors (``(H − size) // 2``).
    """
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}×{size} from a {height}×{width} image")
    if offset == "round":
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x − mean) / std`` per channel, in float32 for half inputs (the network casts after)."""
    if images.dtype in (torch.float16, torch.bfloat16):
        images = images.float()
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    return (images - m) / s


def resize_crop_normalize(
    images: Tensor,
    size: int,
    *,
    crop_offset: Literal["round", "floor"],
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Tensor:
    """``Resize(size, bicubic) → CenterCrop(size) → Normalize`` on a PIL image: the CLIP/BLIP evaluation
    transform of torchvision (``crop_offset="round"``) and of transformers' processors (``"floor"``)."""
    h, w = shortest_edge_size(images.shape[-2], images.shape[-1], size)
    x = resize_like_pil(images, (h, w))
    return normalize(center_crop(x, size, crop_offset), mean, std)


def resize_longest_pad_normalize(
    images: Tensor,
    size: int,
    *,
    fill: float = 0.0,
    antialias: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Tensor:
    """HPSv2's evaluation transform: ``ToTensor → ResizeMaxSize(size) → Normalize``.

    The longer side becomes ``size`` (the other ``round(side · size / longest)``), bicubic on the
    tensor without clamping (torchvision's tensor ``resize``), then the image is padded with ``fill``
    to a square, the odd pixel going right/bottom, and normalised — padding happens in ``[0, 1]``
    space, before normalisation, as in the official code.
    """
    height, width = images.shape[-2:]
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    x = resize(images, (new_h, new_w), antialias=antialias)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return normalize(x, mean, std)
