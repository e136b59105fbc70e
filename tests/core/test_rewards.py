"""Reward combination (rats_core/method/rewards.py) and the reward output contract (interfaces.check_reward_output)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rats_core.errors import PluginError
from rats_core.registry.interfaces import check_reward_output
from rats_core.method.rewards import RewardSet, WeightedReward

IMAGES = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0)])  # mean brightness 0, .5, 1
PROMPTS = ["a", "b", "c"]


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def constant_reward(value):
    return lambda images, prompts: torch.full((images.shape[0],), float(value))


def test_weighted_sum_with_fixed_normalisation():
    rs = RewardSet([
        WeightedReward("bright", brightness, weight=2.0),
        WeightedReward("ten", constant_reward(10.0), weight=0.5, normalize="fixed", mean=6.0, std=2.0),
    ])
    combined, parts = rs(IMAGES, PROMPTS)
    # 2·b + 0.5·(10 − 6)/2
    assert combined.tolist() == pytest.approx([0.0 + 1.0, 1.0 + 1.0, 2.0 + 1.0])
    # the parts are the raw (unweighted, unnormalised) scores
    assert parts["bright"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert parts["ten"].tolist() == [10.0, 10.0, 10.0]


def test_zero_weight_reward_is_logged_not_optimised():
    rs = RewardSet([WeightedReward("bright", brightness), WeightedReward("ten", constant_reward(10), weight=0.0)])
    combined, parts = rs(IMAGES, PROMPTS)
    assert combined.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert "ten" in parts


def test_normalize_none_ignores_mean_and_std():
    rs = RewardSet([WeightedReward("bright", brightness, mean=100.0, std=7.0)])
    assert rs(IMAGES, PROMPTS)[0].tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_combined_reward_is_differentiable():
    images = IMAGES.clone().requires_grad_(True)
    rs = RewardSet([WeightedReward("bright", brightness, weight=3.0)])
    combined, _ = rs(images, PROMPTS)
    combined.sum().backward()
    assert torch.allclose(images.grad, torch.full_like(images, 3.0 / 48))


def test_module_rewards_are_frozen_and_in_eval_mode():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, images, prompts):
            return self.lin(images.mean(dim=(2, 3))).squeeze(1)

    net = Net().train()
    rs = RewardSet([WeightedReward("net", net)])
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    assert rs.to("cpu") is rs


def test_empty_reward_set():
    with pytest.raises(ValueError, match="at least one reward"):
        RewardSet([])


@pytest.mark.parametrize(
    "output, match",
    [
        ([0.1, 0.2, 0.3], r"reward 'mine' returned list, expected a tensor of shape \[3\]"),
        (None, "reward 'mine' returned NoneType"),
        (torch.zeros(3, 1), r"reward 'mine' returned shape \(3, 1\), expected \[3\]"),
        (torch.zeros(2), r"reward 'mine' returned shape \(2,\), expected \[3\]"),
        (torch.zeros(()), r"reward 'mine' returned shape \(\), expected \[3\]"),
        (torch.tensor([0.0, float("nan"), 0.0]), "reward 'mine' returned non-finite"),
        (torch.tensor([0.0, float("inf"), 0.0]), "reward 'mine' returned non-finite"),
    ],
)
def test_check_reward_output_errors_name_the_plugin(output, match):
    with pytest.raises(PluginError, match=match):
        check_reward_output("mine", output, 3)


def test_check_reward_output_passes_good_scores_through():
    s = torch.tensor([1.0, 2.0, 3.0])
    assert check_reward_output("mine", s, 3) is s


def test_reward_set_applies_the_contract_and_wraps_plugin_exceptions():
    bad_shape = RewardSet([WeightedReward("bad-shape", lambda i, p: torch.zeros(len(p), 2))])
    with pytest.raises(PluginError, match="reward 'bad-shape' returned shape"):
        bad_shape(IMAGES, PROMPTS)

    def explode(images, prompts):
        raise RuntimeError("CUDA out of cheese")

    with pytest.raises(PluginError, match="reward 'boom' raised RuntimeError: CUDA out of cheese"):
        RewardSet([WeightedReward("boom", explode)])(IMAGES, PROMPTS)


def test_check_differentiable_names_the_culprit():
    ok = WeightedReward("bright", brightness)
    detached = WeightedReward("detached", lambda i, p: brightness(i, p).detach())
    RewardSet([ok]).check_differentiable(IMAGES, PROMPTS)
    with pytest.raises(PluginError, match="reward 'detached' is not differentiable"):
        RewardSet([ok, detached]).check_differentiable(IMAGES, PROMPTS)
    # a reward that is only logged (weight 0) need not be differentiable
    detached.weight = 0.0
    RewardSet([ok, detached]).check_differentiable(IMAGES, PROMPTS)


def test_rewards_frames_option_reaches_the_weighted_reward(tmp_path):
    """``rewards.N.frames`` (how many frames an image reward scores on video) is a config key of every
    reward, validated (> 0 or null) and handed to the reward's WeightedReward."""
    import yaml

    from rats_core.training.components import build_components
    from rats_core.config import load_config
    from rats_core.errors import ConfigError

    cfg = {"backbone": {"name": "toy"}, "student": {"steps": 2}, "teacher": {"steps": 4},
           "rewards": [{"name": "toy-brightness", "frames": 3}, {"name": "toy-smoothness", "frames": None},
                       {"name": "toy-brightness", "weight": 0.0}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rewards = build_components(load_config(path)).rewards.rewards
    assert [r.frames for r in rewards] == [3, None, 8]
    with pytest.raises(ConfigError, match="frames"):
        load_config(path, ["rewards.0.frames=0"])
