"""The digits world's data: scikit-learn's bundled 8×8 handwritten digits and the prompts that name them.

Everything here is offline: ``sklearn.datasets.load_digits`` ships its 1797 images inside the wheel.

Images are upscaled bilinearly to ``resolution`` (16 by default) and scaled to ``[-1, 1]`` (−1 is the
background, +1 the ink), one channel.

Split (fixed, by position, no randomness): the first 1437 images (80 %) are **train**, the last 360
are **held-out**. The set is ordered roughly by writer, so the held-out images come mostly from
writers the models never saw. Every model here (diffusion base, reward, judge) trains on the train
split only; the held-out images are the reference set of the ``digit-fid`` metric.

Prompts name a digit with several phrasings. The **phrasings** (templates) are split too: the
diffusion model and the RATS training prompts use :data:`TRAIN_TEMPLATES`; evaluation uses
:data:`HELDOUT_TEMPLATES`, whose wording the model has never seen (unknown words map to the text
encoder's UNK token, so only the digit itself carries over).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_TRAIN = 1437
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: ``{num}`` is the numeral ("7"), ``{word}`` the English word ("seven")
TRAIN_TEMPLATES = (
    "a handwritten {num}",
    "the digit {word}",
    "a drawing of the number {num}",
    "handwritten digit {word}",
    "the number {num} written by hand",
    "a scanned digit {num}",
    "a {word}",
)
HELDOUT_TEMPLATES = (
    "a sketch of the digit {word}",
    "the numeral {num}",
    "an image of a handwritten {word}",
)

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "experiments" / "prompts"


def prompt_for(digit: int, template: str) -> str:
    return template.format(num=str(digit), word=WORDS[digit])


def make_prompts(templates: Sequence[str]) -> list[str]:
    """Every template for every digit, phrasing-major: ``[t0(0), t0(1), …, t0(9), t1(0), …]``
    (so any ten consecutive prompts cover all ten digits)."""
    return [prompt_for(d, t) for t in templates for d in range(10)]


def train_prompts() -> list[str]:
    return make_prompts(TRAIN_TEMPLATES)


def heldout_prompts() -> list[str]:
    return make_prompts(HELDOUT_TEMPLATES)


_WORD_TO_DIGIT = {w: i for i, w in enumerate(WORDS)}
_TOKEN = re.compile(r"[a-z]+|\d")


def tokenize(prompt: str) -> list[str]:
    """Lower-case words and single numerals: ``"The number 7!"`` → ``["the", "number", "7"]``."""
    return _TOKEN.findall(prompt.lower())


def parse_digit(prompt: str) -> int:
    """The digit a prompt names (``"a handwritten 7"`` → 7, ``"the digit seven"`` → 7).

    Raises ``ValueError`` when the prompt names no digit, or more than one different digit.
    """
    found = set()
    for tok in tokenize(prompt):
        if tok.isdigit():
            found.add(int(tok))
        elif tok in _WORD_TO_DIGIT:
            found.add(_WORD_TO_DIGIT[tok])
    if len(found) != 1:
        what = "no digit" if not found else f"several digits {sorted(found)}"
        raise ValueError(f"prompt {prompt!r} names {what}; digits prompts must name exactly one digit 0-9")
    return found.pop()


def parse_digits(prompts: Sequence[str]) -> Tensor:
    """``[B]`` long tensor of the digits the prompts name."""
    return torch.tensor([parse_digit(p) for p in prompts], dtype=torch.long)


@lru_cache(maxsize=4)
def _load(resolution: int) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def load_split(split: str = "train", resolution: int = 16) -> tuple[Tensor, Tensor]:
    """Images ``[N, 1, R, R]`` in ``[-1, 1]`` and labels ``[N]`` of the ``train`` or ``heldout`` split."""
    x, y = _load(resolution)
    if split == "train":
        return x[:NUM_TRAIN].clone(), y[:NUM_TRAIN].clone()
    if split == "heldout":
        return x[NUM_TRAIN:].clone(), y[NUM_TRAIN:].clone()
    raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")


def to_classifier_input(images: Tensor, resolution: int = 16) -> Tensor:
    """``[B, 3 or 1, H, W]`` in ``[0, 1]`` → ``[B, 1, R, R]`` in ``[-1, 1]``, with differentiable ops."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 3, H, W] (or [B, 1, H, W]), got {tuple(images.shape)}")
    x = images.float().mean(dim=1, keepdim=True)
    if x.shape[-2:] != (resolution, resolution):
        shrink = x.shape[-1] > resolution or x.shape[-2] > resolution
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink)
    return x * 2 - 1


def write_prompt_files(directory: Path = PROMPTS_DIR) -> tuple[Path, Path]:
    """(Re)write ``digits_train.txt`` and ``digits_heldout.txt``, one prompt per line."""
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / "digits_train.txt"
    held = directory / "digits_heldout.txt"
    train.write_text("\n".join(train_prompts()) + "\n", encoding="utf-8")
    held.write_text("\n".join(heldout_prompts()) + "\n", encoding="utf-8")
    return train, held
