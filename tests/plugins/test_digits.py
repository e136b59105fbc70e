"""The digits world: shipped weights, the backbone protocol, rewards, metrics and prompts."""

from __future__ import annotations

import json

import pytest
import torch

from rats_core.method.sigmas import ddim_step
from rats_plugins.digits import data
from rats_plugins.digits.backbone import WEIGHTS_DIR, DigitsBackbone
from rats_plugins.digits.metrics import DigitFID, DigitJudge
from rats_plugins.digits.rewards import DigitConfidence, DigitSharpness


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return DigitsBackbone()


@pytest.fixture(scope="module")
def reward():
    return DigitConfidence()


@pytest.fixture(scope="module")
def heldout():
    x, y = data.load_split("heldout")
    return ((x + 1) / 2).expand(-1, 3, -1, -1), y  # as images in [0, 1]


# ---------------------------------------------------------------------------- data and prompts


def test_parse_digit_phrasings():
    assert data.parse_digit("a handwritten 7") == 7
    assert data.parse_digit("The digit SEVEN.") == 7
    assert data.parse_digit("a drawing of the number 0") == 0
    for template in data.TRAIN_TEMPLATES + data.HELDOUT_TEMPLATES:
        for d in range(10):
            assert data.parse_digit(data.prompt_for(d, template)) == d
    with pytest.raises(ValueError, match="no digit"):
        data.parse_digit("a photo of a cat")
    with pytest.raises(ValueError, match="several"):
        data.parse_digit("a 3 next to a 4")


def test_prompt_files_match_templates_and_phrasings_are_disjoint():
    train = (data.PROMPTS_DIR / "digits_train.txt").read_text().splitlines()
    held = (data.PROMPTS_DIR / "digits_heldout.txt").read_text().splitlines()
    assert train == data.train_prompts() and len(train) == 10 * len(data.TRAIN_TEMPLATES)
    assert held == data.heldout_prompts() and len(held) == 10 * len(data.HELDOUT_TEMPLATES)
    assert not set(train) & set(held)
    assert not set(data.TRAIN_TEMPLATES) & set(data.HELDOUT_TEMPLATES)


def test_split_is_fixed_and_scaled():
    x, y = data.load_split("train")
    xh, yh = data.load_split("heldout")
    assert x.shape == (data.NUM_TRAIN, 1, 16, 16) and xh.shape == (1797 - data.NUM_TRAIN, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert set(yh.tolist()) == set(range(10))


# ---------------------------------------------------------------------------- backbone


def test_shipped_weights_load(backbone):
    info = json.loads((WEIGHTS_DIR / "rats_digits.json").read_text())
    assert backbone.resolution == info["resolution"] == 16
    assert backbone.interpolation == "ve"
    assert next(backbone.denoiser.parameters()).dtype == torch.float32
    for part in ("reward", "judge"):
        assert (WEIGHTS_DIR / part / "model.safetensors").is_file()


def test_sigmas_start_at_sigma_max_and_end_in_zero(backbone):
    for n in (1, 2, 4, 50):
        s = backbone.sigmas(n)
        assert s.shape == (n + 1,)
        assert s[-1] == 0 and torch.all(s[:-1] > s[1:])
        assert s[0] == pytest.approx(backbone.sigma_max, rel=1e-5)


def test_shapes_and_predict_x0_off_schedule(backbone):
    cond = backbone.encode_prompts(["a handwritten 3", "the numeral 8"])
    assert cond.shape[0] == 2 and cond.shape[-1] == backbone.denoiser.config.cross_attention_dim
    assert backbone.latent_shape(2) == (2, 1, 16, 16)
    x = torch.randn(backbone.latent_shape(2)) * 3.3
    with torch.no_grad():
        x0 = backbone.predict_x0(backbone.denoiser, x, torch.tensor(3.3), cond)  # 3.3 is on no schedule
        x0_b = backbone.predict_x0(backbone.denoiser, x, torch.tensor([3.3, 3.3]), cond)  # per-sample σ
        x0_g = backbone.predict_x0(backbone.denoiser, x, torch.tensor(3.3), cond, guidance_scale=3.0)
    assert x0.shape == x.shape and torch.isfinite(x0).all()
    torch.testing.assert_close(x0, x0_b)
    assert not torch.allclose(x0, x0_g)


def test_sigma_to_timestep_is_exact_on_the_schedule(backbone):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(backbone.scheduler.config)
    sched.set_timesteps(7)
    t = backbone.sigma_to_timestep(sched.sigmas[:-1])
    torch.testing.assert_close(t, sched.timesteps.float(), atol=1e-2, rtol=0)


def test_predict_x0_and_ddim_step_match_the_schedulers_euler_step(backbone):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(backbone.scheduler.config)
    sched.set_timesteps(4)
    cond = backbone.encode_prompts(["a handwritten 5"] * 2)
    x = torch.randn(backbone.latent_shape(2), generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    ours = x.clone()
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            eps = backbone.denoiser(sched.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
            x = sched.step(eps, t, x).prev_sample
            s, s_next = sched.sigmas[i], sched.sigmas[i + 1]
            x0 = backbone.predict_x0(backbone.denoiser, ours, s, cond)
            ours = ddim_step(ours, x0, s, s_next, "ve") if s_next > 0 else x0
            torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_decode_is_in_unit_range_and_differentiable(backbone):
    x0 = (torch.randn(backbone.latent_shape(2)) * 1.5).requires_grad_(True)
    images = backbone.decode(x0)
    assert images.shape == (2, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0


def test_export_round_trip(backbone, tmp_path):
    out = backbone.export(backbone.denoiser, tmp_path / "exp", steps=2)
    info = json.loads((out / "rats_digits.json").read_text())
    assert info["default_steps"] == 2 and info["format"] == "rats-digits"
    again = DigitsBackbone(out)
    x = torch.randn(backbone.latent_shape(1))
    cond = backbone.encode_prompts(["a handwritten 1"])
    with torch.no_grad():
        a = backbone.predict_x0(backbone.denoiser, x, torch.tensor(2.0), cond)
        b = again.predict_x0(again.denoiser, x, torch.tensor(2.0), again.encode_prompts(["a handwritten 1"]))
    torch.testing.assert_close(a, b)


def test_lora_export_round_trip(backbone, tmp_path):
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    net = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=backbone.lora_target_modules, init_lora_weights=False),
        copy.deepcopy(backbone.denoiser),
    )
    cond = backbone.encode_prompts(["a handwritten 1"])
    x = torch.randn(backbone.latent_shape(1))
    with torch.no_grad():
        want = backbone.predict_x0(net, x, torch.tensor(2.0), cond)
    lora_dir = backbone.export(net, tmp_path / "lora", steps=2, lora_only=True)
    assert (lora_dir / "adapter_model.safetensors").is_file()
    full_dir = backbone.export(net, tmp_path / "full", steps=2)
    for folder in (lora_dir, full_dir):
        again = DigitsBackbone(folder)
        with torch.no_grad():
            got = again.predict_x0(again.denoiser, x, torch.tensor(2.0), cond)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_missing_weights_and_wrong_resolution_are_user_errors(tmp_path):
    from rats_core.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="pretrain"):
        DigitsBackbone(tmp_path)
    with pytest.raises(ValueError, match="resolution"):
        DigitsBackbone(resolution=32)


# ---------------------------------------------------------------------------- rewards and metrics


def test_reward_is_differentiable_at_any_size(reward):
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    r = reward(images, ["a handwritten 3", "the digit four"])
    assert r.shape == (2,) and torch.all(r <= 0)
    r.sum().backward()
    assert images.grad.abs().sum() > 0


def test_reward_ranks_the_right_digit_above_a_wrong_one(reward, heldout):
    images, labels = heldout
    images, labels = images[:50], labels[:50]
    right = reward(images, [f"a handwritten {int(d)}" for d in labels])
    wrong = reward(images, [f"a handwritten {(int(d) + 3) % 10}" for d in labels])
    assert (right > wrong).float().mean() > 0.9
    big = torch.nn.functional.interpolate(images, size=64, mode="bilinear")
    assert (reward(big, [f"the digit {data.WORDS[int(d)]}" for d in labels]) > wrong).float().mean() > 0.9


def test_sharpness_reward():
    flat = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    crisp = (torch.rand(1, 1, 16, 16) > 0.5).float().expand(1, 3, 16, 16)
    s = DigitSharpness()
    assert s(crisp, ["a 1"]).item() == pytest.approx(1.0)
    assert s(flat, ["a 1"]).item() == pytest.approx(0.0)


def test_metrics_return_their_keys(heldout):
    images, labels = heldout
    prompts = [f"the numeral {int(d)}" for d in labels]
    acc = DigitJudge()(images, prompts)
    assert set(acc) == {"judge_accuracy"} and acc["judge_accuracy"] > 0.9
    marks = DigitJudge().marks(images[:4], prompts[:3] + [f"a {(int(labels[3]) + 1) % 10}"])
    assert [m[0] for m in marks[:3]] == [True] * 3  # (the judge reads these real digits right)
    assert marks[3] == (False, f"reads {int(labels[3])}")
    fid = DigitFID()
    real = fid(images, prompts)["fid"]
    noise = fid(torch.rand_like(images), prompts)["fid"]
    assert set(fid(images[:10], prompts[:10])) == {"fid"}
    assert real < 1e-6 < noise


def test_plugin_registers_everything():
    from rats_core.registry.plugins import get_registry

    reg = get_registry()
    assert "digits" in reg.components["backbones"]
    assert {"digit-confidence", "digit-sharpness"} <= set(reg.components["rewards"])
    assert {"digit-judge", "digit-fid"} <= set(reg.components["metrics"])


def test_experiment_config_validates():
    from pathlib import Path

    from rats_core.config import check_components, load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "experiments" / "digits.yaml")
    check_components(cfg)
    assert cfg.student.steps == 2 and cfg.teacher.steps == 50 and cfg.backbone.name == "digits"


def test_frechet_distance_matches_scipy_sqrtm():
    import numpy as np
    from scipy import linalg

    from rats_plugins.digits.metrics import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) @ rng.normal(size=(8, 8))
    m1, c1, m2, c2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    want = ((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(np.real(linalg.sqrtm(c1 @ c2)))
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-6)
