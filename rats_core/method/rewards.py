"""Combining several reward plugins into the one preference signal RATS optimises, and scoring videos
with image rewards (frame-wise, averaged)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from rats_core.errors import PluginError, RatsError
from rats_core.registry.interfaces import SCORES_VIDEO_ATTRIBUTE, check_reward_output

#: frames of a video an image reward scores by default: evenly spaced, so the reward's cost and memory
#: stay bounded however long the video (``frames=None``: every frame)
DEFAULT_REWARD_FRAMES = 8


def frame_indices(num_frames: int, frames: int | None = DEFAULT_REWARD_FRAMES) -> list[int]:
    """``frames`` evenly spaced frame indices of a ``num_frames`` video, first and last included (one
    frame: the middle one); every frame when ``frames`` is None or not smaller than ``num_frames``."""
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be >= 1 or None (every frame), got {frames}")
    if frames is None or frames >= num_frames:
        return list(range(num_frames))
    if frames == 1:
        return [(num_frames - 1) // 2]
    step = (num_frames - 1) / (frames - 1)
    return [int(i * step + 0.5) for i in range(frames)]


def video_frames(videos: Tensor, prompts: Sequence[str], frames: int | None = DEFAULT_REWARD_FRAMES
                 ) -> tuple[Tensor, list[str]]:
    """The frames :func:`frame_indices` picks from each video ``[B, 3, F, H, W]`` as one batch of images
    ``[B·n, 3, H, W]`` (video by video), with each frame's prompt (its video's)."""
    if videos.dim() != 5:
        raise ValueError(f"expected videos [B, 3, F, H, W], got shape {tuple(videos.shape)}")
    b, c, f, h, w = videos.shape
    index = frame_indices(f, frames)
    n = len(index)
    picked = videos[:, :, index] if n < f else videos
    return picked.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w), [p for p in prompts for _ in range(n)]


def score_frames(reward: Any, videos: Tensor, prompts: Sequence[str], frames: int | None = DEFAULT_REWARD_FRAMES,
                 name: str = "reward") -> Tensor:
    """An image reward applied to videos ``[B, 3, F, H, W]``: the mean of its scores over the frames
    :func:`frame_indices` picks, ``[B]``, differentiable. The picked frames of every video go to the
    reward as one batch of ``B·n`` images, each with its video's prompt (:func:`video_frames`)."""
    images, frame_prompts = video_frames(videos, prompts, frames)
    b = videos.shape[0]
    scores = check_reward_output(name, reward(images, frame_prompts), len(frame_prompts))
    return scores.reshape(b, -1).mean(dim=1)


@dataclass
class WeightedReward:
    name: str
    reward: Any
    weight: float = 1.0
    normalize: str = "none"
    mean: float = 0.0
    std: float = 1.0
    #: the plugin that registered the reward, named in every error about it
    plugin: str = ""
    #: videos: how many evenly spaced frames an image reward scores (None: every frame); see score_frames
    frames: int | None = DEFAULT_REWARD_FRAMES

    @property
    def _by(self) -> str:
        return f" (reward registered by plugin {self.plugin})" if self.plugin else ""

    @property
    def scores_video(self) -> bool:
        return bool(getattr(self.reward, SCORES_VIDEO_ATTRIBUTE, False))

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``[B]`` scores of images ``[B, 3, H, W]``, or of videos ``[B, 3, F, H, W]``: frame-wise (the mean
        over ``frames`` evenly spaced frames) unless the reward declares ``scores_video``."""
        try:
            if images.dim() == 5 and not self.scores_video:
                raw = score_frames(self.reward, images, prompts, self.frames, self.name)
            else:
                raw = self.reward(images, list(prompts))
        except PluginError as exc:  # e.g. a frame-wise score of the wrong shape: name the plugin too
            raise PluginError(f"{exc}{self._by}") from None
        except RatsError:
            raise
        except Exception as exc:
            raise PluginError(f"reward '{self.name}' raised {type(exc).__name__}: {exc}{self._by}") from exc
        try:
            return check_reward_output(self.name, raw, images.shape[0])
        except PluginError as exc:
            raise PluginError(f"{exc}{self._by}") from None

    def normalized(self, scores: Tensor) -> Tensor:
        return (scores - self.mean) / self.std if self.normalize == "fixed" else scores


class RewardSet:
    """``R = Σ_j w_j · norm_j(R_j(images, prompts))``, keeping each raw score for logging."""

    def __init__(self, rewards: list[WeightedReward]):
        if not rewards:
            raise ValueError("RewardSet needs at least one reward")
        self.rewards = rewards
        for r in rewards:
            if isinstance(r.reward, nn.Module):
                r.reward.requires_grad_(False)
                r.reward.eval()

    def to(self, device: torch.device | str) -> "RewardSet":
        for r in self.rewards:
            if hasattr(r.reward, "to"):
                moved = r.reward.to(device)
                r.reward = moved if moved is not None else r.reward
        return self

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        combined = None
        parts: dict[str, Tensor] = {}
        for r in self.rewards:
            s = r.score(images, prompts)
            parts[r.name] = s
            term = r.weight * r.normalized(s.float())
            combined = term if combined is None else combined + term
        assert combined is not None
        return combined, parts

    def check_differentiable(self, images: Tensor, prompts: Sequence[str]) -> None:
        """Raise PluginError naming a weighted reward whose score does not depend on the images."""
        images = images.detach().requires_grad_(True)
        for r in self.rewards:
            if r.weight == 0:
                continue
            s = r.score(images, prompts)
            if not s.requires_grad:
                raise PluginError(
                    f"reward '{r.name}' is not differentiable with respect to the images "
                    f"(its score has no gradient){r._by}; RATS needs a differentiable reward, "
                    f"or give it weight 0 to only log it"
                )
