"""Combining several reward plugins into the one preference signal RATS optimises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .errors import PluginError, RatsError
from .interfaces import check_reward_output


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

    @property
    def _by(self) -> str:
        return f" (reward registered by plugin {self.plugin})" if self.plugin else ""

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        try:
            raw = self.reward(images, list(prompts))
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
