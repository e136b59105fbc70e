"""Two digit classifiers of different design, trained separately on the train split.

* :class:`RewardNet` — the **reward** model (``digit-confidence``): all-convolutional, SiLU
  activations (smooth, so the reward's gradient w.r.t. pixels is well behaved), global pooling.
  It has an 11th class, *degraded*, trained on train digits spoiled by :func:`degrade` (blurred,
  faded, noisy, or two digits blended), so its confidence in "a clean handwritten k" drops for the
  soft, washed-out images few-step samplers make — the way human-preference rewards punish blur.
* :class:`JudgeNet` — the **judge** (``digit-judge``, ``digit-fid``): LeNet-style, 5×5 convs, ReLU,
  max-pooling, a 64-d penultimate layer used as the feature space of the Fréchet distance. Different
  architecture, seed and augmentation from the reward, and never used in training, so that a student
  that merely fools the reward does not also fool the judge.

Both take ``[B, 1, R, R]`` in ``[-1, 1]`` (see :func:`rats_plugins.digits.data.to_classifier_input`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


#: index of the reward classifier's extra class for spoiled images
DEGRADED = 10


class RewardNet(nn.Module):
    def __init__(self, width: int = 32, resolution: int = 16, classes: int = 11):
        super().__init__()
        self.width, self.resolution, self.classes = width, resolution, classes
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(2 * w, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))

    def config(self) -> dict:
        return {"arch": "reward", "width": self.width, "resolution": self.resolution, "classes": self.classes}


class JudgeNet(nn.Module):
    def __init__(self, width: int = 16, features: int = 64, resolution: int = 16):
        super().__init__()
        self.width, self.num_features, self.resolution = width, features, resolution
        w = width
        self.conv1 = nn.Conv2d(1, w, 5, padding=2)
        self.conv2 = nn.Conv2d(w, 2 * w, 5, padding=2)
        side = resolution // 4
        self.fc = nn.Linear(2 * w * side * side, features)
        self.out = nn.Linear(features, 10)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate (64-d) representation: the Fréchet distance's feature space."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x))

    def config(self) -> dict:
        return {"arch": "judge", "width": self.width, "features": self.num_features, "resolution": self.resolution}


ARCHS = {"reward": RewardNet, "judge": JudgeNet}


def save_classifier(model: nn.Module, directory: Path, extra: dict | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config(), **(extra or {}))
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))


def load_classifier(directory: Path) -> nn.Module:
    """Load a classifier saved by :func:`save_classifier`, frozen and in eval mode."""
    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    arch = ARCHS[cfg["arch"]]
    kwargs = {k: v for k, v in cfg.items() if k in arch.__init__.__code__.co_varnames and k != "self"}
    model = arch(**kwargs)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------- augmentation


def augment(x: Tensor, generator: torch.Generator, *, rotate: float = 10.0, scale: float = 0.1,
            shift: float = 1.0, noise: float = 0.05) -> Tensor:
    """Light random affine jitter (degrees, relative scale, pixels) and Gaussian pixel noise."""
    b, _, h, _ = x.shape
    u = lambda: torch.rand(b, generator=generator) * 2 - 1  # noqa: E731
    ang = u() * rotate * torch.pi / 180
    s = 1 + u() * scale
    tx, ty = u() * shift * 2 / h, u() * shift * 2 / h
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with background (−1): shift the image to [0, 2] so zero padding is background
    y = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    if noise:
        y = y + noise * torch.randn(y.shape, generator=generator)
    return y.clamp(-1, 1)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int = 3) -> Tensor:
    """Separable Gaussian blur with one σ (pixels) per sample; the border is background (−1)."""
    k = torch.arange(-radius, radius + 1, dtype=x.dtype)
    w = torch.exp(-k[None] ** 2 / (2 * sigma[:, None] ** 2))
    w = w / w.sum(dim=1, keepdim=True)
    p = F.pad(x + 1, (radius, radius, radius, radius))
    h = torch.einsum("bchwk,bk->bchw", p.unfold(3, 2 * radius + 1, 1), w)
    return torch.einsum("bchwk,bk->bchw", h.unfold(2, 2 * radius + 1, 1), w) - 1


def degrade(x: Tensor, generator: torch.Generator) -> Tensor:
    """Spoil each image one way: blur (σ 0.5–1.5 px; 2 in 5), fade towards grey and soften (1 in 5),
    heavy pixel noise (1 in 5), or blend with another image of the batch (1 in 5)."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    def where(mask: Tensor, a: Tensor, other: Tensor) -> Tensor:
        return torch.where(mask[:, None, None, None], a, other)

    kind = torch.tensor([0, 0, 1, 2, 3])[torch.randint(0, 5, (b,), generator=generator)]
    out = where(kind == 0, gaussian_blur(x, u(0.5, 1.5)), x)
    c = u(0.3, 0.7)[:, None, None, None]
    out = where(kind == 1, gaussian_blur(x * c - 0.2 * (1 - c), u(0.3, 1.0)), out)
    out = where(kind == 2, x + u(0.2, 0.5)[:, None, None, None] * torch.randn(x.shape, generator=generator), out)
    out = where(kind == 3, 0.5 * (x + x[torch.randperm(b, generator=generator)]), out)
    return out.clamp(-1, 1)
