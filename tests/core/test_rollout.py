"""Gradient truncation of student rollouts (rats_core/method/rollout.py).

Semantics under test (rollout's docstring): the last ``grad_steps`` steps are differentiated through
the trajectory; each step in ``local_grad_steps`` keeps the gradient of its *own* network evaluation
only (detached input, detached contribution to the trajectory); everything else runs without
gradient. ``SpyBackbone`` (conftest.py) numbers the network evaluations of one rollout and records
which of them are in the autograd graph and which ones backward reaches.
"""

from __future__ import annotations

import pytest
import torch

from rats_core.method.objective import ObjectiveSettings, RatsObjective
from rats_core.method.rewards import RewardSet, WeightedReward
from rats_core.method.rollout import rollout, sample
from rats_core.method.sigmas import ddim_step, initial_latents
from rats_plugins.gates import sigmoid
from rats_plugins.horizons import first
from rats_plugins.toy import Brightness, ToyBackbone

K = 4


@pytest.fixture(params=["ve", "flow"])
def spy(request, spy_backbone_cls):
    return spy_backbone_cls(ToyBackbone(interpolation=request.param))


def _run(b, grad_steps=0, local=(), keep=None, checkpointing=False, noise=None):
    torch.manual_seed(1)
    noise = torch.randn(b.latent_shape(2)) if noise is None else noise
    cond = b.encode_prompts(["a red cat", "a blue dog"])
    if hasattr(b, "reset"):
        b.reset()
    return rollout(b, b.denoiser, noise, cond, b.sigmas(K), grad_steps=grad_steps,
                   local_grad_steps=local, keep=keep, checkpointing=checkpointing)


@pytest.mark.parametrize("grad_steps", [1, 2, 3, 4])
def test_final_sample_gets_gradient_from_the_last_k_grad_steps_only(spy, grad_steps):
    r = _run(spy, grad_steps=grad_steps)
    chain = set(range(K - grad_steps, K))
    assert spy.steps_with_graph() == chain
    spy.denoiser.zero_grad()
    r.final.sum().backward()
    assert spy.steps_reached_by_backward() == chain
    assert all(n == 1 for n in spy.backward_hits.values())
    assert all(p.grad is not None for p in spy.denoiser.parameters())


@pytest.mark.parametrize("local", [(0, 1), (1, 2), (0, 2)])
def test_local_steps_keep_only_their_own_evaluation(spy, local):
    """Step 2 is the one just before the chain (the last step, K_grad = 1): its output feeds the chain's
    input directly, so only its own detach keeps the final sample from reaching it."""
    r = _run(spy, grad_steps=1, local=local)
    assert spy.steps_with_graph() == {*local, K - 1}
    # backward from a local step's prediction stops at that step: its input was detached
    for j in local:
        spy.backward_hits.clear()
        r.x0[j].sum().backward(retain_graph=True)
        assert spy.steps_reached_by_backward() == {j}
    spy.backward_hits.clear()
    # and the final sample does not see the local steps at all
    r.final.sum().backward()
    assert spy.steps_reached_by_backward() == {K - 1}


def test_a_local_step_inside_the_chain_is_part_of_the_chain(spy):
    r = _run(spy, grad_steps=2, local=(2,))
    assert spy.steps_with_graph() == {2, 3}
    r.final.sum().backward()
    assert spy.steps_reached_by_backward() == {2, 3}


def test_grad_steps_zero_means_no_gradient(spy):
    r = _run(spy, grad_steps=0)
    assert spy.steps_with_graph() == set()
    assert not r.final.requires_grad
    assert not any(t.requires_grad for t in r.x0.values())


def test_outer_no_grad_wins(spy):
    with torch.no_grad():
        r = _run(spy, grad_steps=K, local=(0,))
    assert spy.steps_with_graph() == set() and not r.final.requires_grad


def test_keep_selects_the_predictions_returned(spy):
    assert sorted(_run(spy).x0) == list(range(K))
    assert sorted(_run(spy, keep=[1, 3]).x0) == [1, 3]
    assert _run(spy, keep=()).x0 == {}


@pytest.mark.parametrize("interp", ["ve", "flow"])
def test_parameter_gradient_equals_the_truncated_reference(interp):
    """Gradients equal a hand-written reference: plain no-grad states, the last 2 steps
    differentiated from a detached state, and steps 0 and 1 differentiated alone."""
    b = ToyBackbone(interpolation=interp)
    torch.manual_seed(1)
    noise = torch.randn(b.latent_shape(2))
    cond = b.encode_prompts(["a", "b"])
    sigmas = b.sigmas(K)
    params = list(b.denoiser.parameters())

    r = rollout(b, b.denoiser, noise, cond, sigmas, grad_steps=2, local_grad_steps=(0, 1))
    loss = r.final.pow(2).sum() + r.x0[0].sum() + 3 * r.x0[1].mean()
    got = torch.autograd.grad(loss, params)

    with torch.no_grad():
        states = [initial_latents(noise, sigmas[0], interp)]
        for j in range(K - 1):
            x0 = b.predict_x0(b.denoiser, states[-1], sigmas[j], cond)
            states.append(ddim_step(states[-1], x0, sigmas[j], sigmas[j + 1], interp))
    x = states[K - 2]
    for j in (K - 2, K - 1):
        x0 = b.predict_x0(b.denoiser, x, sigmas[j], cond)
        x = ddim_step(x, x0, sigmas[j], sigmas[j + 1], interp) if sigmas[j + 1] > 0 else x0
    ref_loss = (x.pow(2).sum() + b.predict_x0(b.denoiser, states[0], sigmas[0], cond).sum()
                + 3 * b.predict_x0(b.denoiser, states[1], sigmas[1], cond).mean())
    want = torch.autograd.grad(ref_loss, params)

    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("interp", ["ve", "flow"])
def test_checkpointing_gives_the_same_loss_and_gradients(interp):
    b = ToyBackbone(interpolation=interp)
    params = list(b.denoiser.parameters())
    results = []
    for checkpointing in (False, True):
        r = _run(b, grad_steps=2, local=(0,), checkpointing=checkpointing)
        loss = r.final.pow(2).mean() + r.x0[0].abs().mean()
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for a, c in zip(g0, g1):
        assert torch.allclose(a, c, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("alpha, expected", [(1.0, {0, 2}), (0.0, {2})])
def test_objective_student_rollout_keeps_horizon_gradients_only_when_shaping(spy_backbone_cls, alpha, expected):
    b = spy_backbone_cls(ToyBackbone(interpolation="flow"))
    rewards = RewardSet([WeightedReward("brightness", Brightness())])
    settings = ObjectiveSettings(student_steps=3, teacher_steps=6, grad_steps=1, alpha=alpha)
    obj = RatsObjective(b, rewards, sigmoid(), first(n=1), settings)
    noise = torch.randn(b.latent_shape(2))
    b.reset()
    obj.student_rollout(b.denoiser, noise, b.encode_prompts(["a", "b"]))
    assert b.steps_with_graph() == expected


def test_sample_runs_without_gradient_and_decodes():
    b = ToyBackbone()
    images = sample(b, b.denoiser, ["a", "b"], 3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and not images.requires_grad
    assert images.min() >= 0 and images.max() <= 1
    latents = sample(b, b.denoiser, ["a", "b"], 3, generator=torch.Generator().manual_seed(0), decode=False)
    assert torch.allclose(b.decode(latents), images)


# ----------------------------------------------------------------------------- what the network sees


class Recording(ToyBackbone):
    """The toy backbone, recording per network call the guidance scale and the autocast dtype (None: off)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[tuple[float, torch.dtype | None]] = []

    def predict_x0(self, denoiser, x, sigma, cond, guidance_scale: float = 1.0):
        amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.seen.append((guidance_scale, amp))
        return super().predict_x0(denoiser, x, sigma, cond, guidance_scale=guidance_scale)


def test_rollout_defaults_no_gradient_guidance_one_no_checkpointing():
    b = Recording(interpolation="flow")
    noise = torch.randn(b.latent_shape(2))
    cond = b.encode_prompts(["a", "b"])
    sigmas = b.sigmas(K)
    r = rollout(b, b.denoiser, noise, cond, sigmas)
    assert r.sigmas is sigmas and sorted(r.x0) == list(range(K)) and r.states == {}
    assert not r.final.requires_grad and b.seen == [(1.0, None)] * K
    # with a gradient chain and checkpointing left at its default, backward evaluates nothing again
    b.seen.clear()
    rollout(b, b.denoiser, noise, cond, sigmas, grad_steps=2, guidance_scale=2.5).final.sum().backward()
    assert b.seen == [(2.5, None)] * K


def test_checkpointing_recomputes_the_chain_with_the_same_guidance():
    b = Recording(interpolation="ve")
    noise = torch.randn(b.latent_shape(2))
    r = rollout(b, b.denoiser, noise, b.encode_prompts(["a", "b"]), b.sigmas(K), grad_steps=2, local_grad_steps=(0,),
                guidance_scale=2.5, checkpointing=True)
    assert len(b.seen) == K
    (r.final.sum() + r.x0[0].sum()).backward()
    assert b.seen == [(2.5, None)] * (K + 3)  # the 3 differentiated evaluations run again in backward


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_low_precision_network_computes_under_autocast_and_the_trajectory_stays_float32(dtype, checkpointing):
    b = Recording(interpolation="flow")
    net = b.denoiser.to(dtype)
    noise = torch.randn(b.latent_shape(2))
    r = rollout(b, net, noise, b.encode_prompts(["a", "b"]), b.sigmas(K), grad_steps=1, checkpointing=checkpointing)
    assert b.seen == [(1.0, dtype)] * K
    assert r.final.dtype == torch.float32 and all(x.dtype == torch.float32 for x in r.x0.values())
    r.final.float().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    # under an outer autocast (the trainer's bf16) the network is not wrapped again: the outer dtype holds
    b.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = rollout(b, net, noise, b.encode_prompts(["a", "b"]), b.sigmas(K))
    assert b.seen == [(1.0, torch.bfloat16)] * K and r.final.dtype == torch.float32


def test_a_float32_network_runs_without_autocast():
    b = Recording(interpolation="ve")
    r = rollout(b, b.denoiser, torch.randn(b.latent_shape(2)), b.encode_prompts(["a", "b"]), b.sigmas(K))
    assert b.seen == [(1.0, None)] * K and r.final.dtype == torch.float32


def test_the_network_dtype_is_16_bit_if_any_weight_is():
    from torch import nn

    from rats_core.method.rollout import _param_dtype

    lora_like = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to(torch.bfloat16))  # float32 first, bf16 base
    assert _param_dtype(lora_like) == torch.bfloat16
    assert _param_dtype(nn.Sequential(nn.Linear(2, 2).half(), nn.Linear(2, 2))) == torch.float16
    assert _param_dtype(nn.Linear(2, 2).double()) == torch.float64
    assert _param_dtype(nn.ReLU()) is None


def test_sample_passes_its_guidance_scale():
    b = Recording()
    sample(b, b.denoiser, ["a", "b"], 3, generator=torch.Generator().manual_seed(0))
    assert b.seen == [(1.0, None)] * 3
    b.seen.clear()
    sample(b, b.denoiser, ["a", "b"], 3, generator=torch.Generator().manual_seed(0), guidance_scale=4.0)
    assert b.seen == [(4.0, None)] * 3
