"""The RATS objective (rats_core/method/objective.py): ``L = mean_i(−β·R_S(i) + α·g(i)·L_shape(i))``."""

from __future__ import annotations

import pytest
import torch

from rats_core.errors import PluginError
from rats_core.method.objective import ObjectiveSettings, RatsObjective
from rats_core.method.rewards import RewardSet, WeightedReward
from rats_core.method.rollout import rollout
from rats_core.method.shaping import horizon_distance
from rats_core.method.teacher import Teacher
from rats_plugins.gates import constant, hard, sigmoid
from rats_plugins.horizons import all_steps, explicit
from rats_plugins.toy import Brightness, Smoothness, ToyBackbone

PROMPTS = ["a red cat", "a blue dog", "a green tree"]


def _rewards():
    return RewardSet([
        WeightedReward("toy-brightness", Brightness(0.7), weight=1.0),
        WeightedReward("toy-smoothness", Smoothness(), weight=0.5, normalize="fixed", mean=-0.1, std=0.2),
    ])


def _setup(interp="flow", gate=None, horizons=None, **settings):
    b = ToyBackbone(interpolation=interp)
    student = b.denoiser
    teacher = Teacher(student).module
    with torch.no_grad():  # let the student drift from its teacher so every term is non-trivial
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = ObjectiveSettings(**{"student_steps": 3, "teacher_steps": 12, "alpha": 2.0, "beta": 0.7, **settings})
    obj = RatsObjective(b, _rewards(), gate or sigmoid(tau=0.05), horizons or all_steps("late"), s)
    noise = torch.randn(b.latent_shape(len(PROMPTS)))
    return b, student, teacher, obj, noise


@pytest.mark.parametrize("interp", ["ve", "flow"])
def test_loss_recomputed_from_the_pieces(interp):
    b, student, teacher, obj, noise = _setup(interp)
    loss, metrics = obj(student, teacher, PROMPTS, noise)

    cond = b.encode_prompts(PROMPTS)
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS)
    s = obj.student_rollout(student, noise, cond)
    r_s, parts = obj.rewards(b.decode(s.final), PROMPTS)
    # the paper's gate by hand, sigmoid((R_T − R_S) / τ) with τ = 0.05 -- not through the objective's gate call
    g = torch.sigmoid((t.reward - r_s.detach()) / 0.05)
    assert torch.allclose(obj.gate_values(t.reward, r_s), g, atol=1e-7)
    # L_shape by hand: the "late" weights are 1, 2, 3 over the student's 3 steps
    d = [horizon_distance(s.x0[k], t.x0[k], 1.0, 1.0) for k in range(3)]
    l_shape = (1 * d[0] + 2 * d[1] + 3 * d[2]) / 6
    expected = (-0.7 * r_s + 2.0 * g * l_shape).mean()

    assert torch.allclose(loss, expected, atol=1e-6)
    assert loss.requires_grad and loss.shape == ()
    assert metrics["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
    assert metrics["reward_student"].item() == pytest.approx(r_s.mean().item(), abs=1e-6)
    assert metrics["reward_teacher"].item() == pytest.approx(t.reward.mean().item(), abs=1e-6)
    assert metrics["gate_mean"].item() == pytest.approx(g.mean().item(), abs=1e-6)
    assert metrics["shape_loss"].item() == pytest.approx(l_shape.mean().item(), abs=1e-6)
    assert metrics["student_wins"].item() == pytest.approx((r_s > t.reward).float().mean().item())
    # the combined reward is the weighted sum of the parts (smoothness normalised)
    combined = parts["toy-brightness"] + 0.5 * (parts["toy-smoothness"] + 0.1) / 0.2
    assert torch.allclose(r_s, combined, atol=1e-6)
    for side in ("student", "teacher"):
        for name in ("toy-brightness", "toy-smoothness"):
            assert f"reward_{side}/{name}" in metrics
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_first_horizon_distance_is_zero_when_teacher_equals_student():
    """Same weights, same noise, same σ_0: the step-0 predictions are identical."""
    b = ToyBackbone()
    teacher = Teacher(b.denoiser).module
    obj = RatsObjective(b, _rewards(), sigmoid(), explicit(steps=[0]),
                        ObjectiveSettings(student_steps=2, teacher_steps=10))
    noise = torch.randn(b.latent_shape(2))
    _, metrics = obj(b.denoiser, teacher, PROMPTS[:2], noise)
    assert metrics["shape_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_zero_or_gate_zero_is_reward_only_training():
    b, student, teacher, obj, noise = _setup(alpha=0.0)
    loss, metrics = obj(student, teacher, PROMPTS, noise)
    assert metrics["shape_loss"].item() == 0.0
    assert loss.item() == pytest.approx(-0.7 * metrics["reward_student"].item(), abs=1e-6)

    b, student, teacher, obj, noise = _setup(gate=constant(c=0.0))
    loss, metrics = obj(student, teacher, PROMPTS, noise)
    assert metrics["gate_mean"].item() == 0.0 and metrics["shape_loss"].item() > 0
    assert loss.item() == pytest.approx(-0.7 * metrics["reward_student"].item(), abs=1e-6)


def test_precomputed_teacher_output_gives_the_same_loss():
    b, student, teacher, obj, noise = _setup()
    loss, _ = obj(student, teacher, PROMPTS, noise)
    t = obj.teacher_rollout(teacher, noise, b.encode_prompts(PROMPTS), PROMPTS)
    loss2, _ = obj(student, None, PROMPTS, noise, teacher_out=t)
    assert torch.allclose(loss, loss2)


def test_teacher_receives_no_gradient_student_does():
    b, student, teacher, obj, noise = _setup()
    loss, _ = obj(student, teacher, PROMPTS, noise)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


# ----------------------------------------------------------------------------- the gate is not differentiated


class _TwoFacedReward:
    """Returns fixed teacher scores for the teacher's (no-grad) images, and a leaf tensor we can
    differentiate against — tied to the images with a zero weight — for the student's."""

    def __init__(self, r_t, r_s_leaf):
        self.r_t, self.r_s = r_t, r_s_leaf

    def __call__(self, images, prompts):
        if images.requires_grad:
            return self.r_s + 0.0 * images.mean(dim=(1, 2, 3))
        return self.r_t.clone()


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_no_gradient_flows_through_the_gate(tau):
    """dL/dR_S = −β/B exactly. A gate in the graph would add α·L_shape·∂g/∂R_S / B ≠ 0."""
    b = ToyBackbone()
    alpha, beta, batch = 3.0, 0.7, 3
    r_t = torch.tensor([0.5, 0.0, -0.5])
    r_s = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    rewards = RewardSet([WeightedReward("two-faced", _TwoFacedReward(r_t, r_s))])
    obj = RatsObjective(b, rewards, sigmoid(tau=tau), all_steps(),
                        ObjectiveSettings(student_steps=2, teacher_steps=6, alpha=alpha, beta=beta))
    teacher = Teacher(b.denoiser).module
    with torch.no_grad():
        for p in b.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss, metrics = obj(b.denoiser, teacher, PROMPTS, torch.randn(b.latent_shape(batch)))
    assert metrics["shape_loss"] > 0  # so a gate gradient would not vanish
    assert metrics["student_wins"].item() == pytest.approx(1 / 3)  # 0 > −0.5 only; the tie 0 = 0 is no win
    (grad,) = torch.autograd.grad(loss, r_s)
    assert torch.allclose(grad, torch.full((batch,), -beta / batch), atol=1e-7)


def test_the_gate_sees_the_teacher_reward_first_and_a_tie_is_no_win():
    """A hard gate on known rewards: g = 1[R_T > R_S] = [0, 0, 1] (a tie, the student better, the teacher
    better), so only the third sample is shaped, and the tie counts neither as a gate nor as a student win."""
    b = ToyBackbone()
    alpha, beta = 3.0, 0.7
    r_t = torch.tensor([0.5, 0.0, -0.5])
    r_s = torch.tensor([0.5, 0.1, -1.0])
    rewards = RewardSet([WeightedReward("two-faced", _TwoFacedReward(r_t, r_s))])
    obj = RatsObjective(b, rewards, hard(), all_steps(),
                        ObjectiveSettings(student_steps=2, teacher_steps=6, alpha=alpha, beta=beta))
    teacher = Teacher(b.denoiser).module
    with torch.no_grad():
        for p in b.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    noise = torch.randn(b.latent_shape(3))
    loss, metrics = obj(b.denoiser, teacher, PROMPTS, noise)

    cond = b.encode_prompts(PROMPTS)
    s = obj.student_rollout(b.denoiser, noise, cond)
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS)
    l_shape = (horizon_distance(s.x0[0], t.x0[0]) + horizon_distance(s.x0[1], t.x0[1])) / 2
    assert l_shape[1] != l_shape[2]  # so shaping the wrong sample would show in the loss
    gate = torch.tensor([0.0, 0.0, 1.0])
    assert loss.item() == pytest.approx((-beta * r_s + alpha * gate * l_shape).mean().item(), abs=1e-6)
    assert metrics["gate_mean"].item() == pytest.approx(1 / 3)
    assert metrics["gate_high"].item() == pytest.approx(1 / 3) and metrics["gate_low"].item() == pytest.approx(2 / 3)
    assert metrics["student_wins"].item() == pytest.approx(1 / 3)  # the second sample only; the tie is no win
    assert metrics["reward_gap"].item() == pytest.approx((0.0 + 0.1 + 0.5) / 3)
    assert metrics["reward_student"].item() == pytest.approx(-0.4 / 3)
    assert metrics["reward_teacher"].item() == pytest.approx(0.0)


def test_gate_values_are_detached_even_for_a_differentiable_gate():
    b, *_ , obj, _ = _setup()
    r_t = torch.tensor([1.0, 0.0], requires_grad=True)
    r_s = torch.tensor([0.0, 1.0], requires_grad=True)
    g = obj.gate_values(r_t, r_s)
    assert not g.requires_grad and g.grad_fn is None
    assert g.tolist() == pytest.approx(torch.sigmoid(torch.tensor([1.0, -1.0]) / 0.05).tolist())


@pytest.mark.parametrize(
    "gate, match",
    [
        (lambda r_t, r_s: [0.5] * len(r_t), "returned list"),
        (lambda r_t, r_s: torch.zeros(len(r_t), 1), r"returned \(3, 1\), expected shape \(3,\)"),
        (lambda r_t, r_s: torch.full_like(r_t, 1.5), r"outside \[0, 1\]"),
        (lambda r_t, r_s: torch.full_like(r_t, float("nan")), r"outside \[0, 1\]"),
        (lambda r_t, r_s: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_gate_contract_violations_name_the_gate(gate, match):
    b = ToyBackbone()
    obj = RatsObjective(b, _rewards(), gate, all_steps(), ObjectiveSettings(student_steps=2, teacher_steps=4),
                        gate_name="my-gate")
    with pytest.raises(PluginError, match=match) as exc:
        obj.gate_values(torch.zeros(3), torch.zeros(3))
    assert "gate 'my-gate'" in str(exc.value)


def test_horizon_plugin_errors_name_the_plugin():
    b = ToyBackbone()
    settings = ObjectiveSettings(student_steps=2, teacher_steps=4)
    with pytest.raises(PluginError, match="horizon schedule 'bad' raised KeyError"):
        RatsObjective(b, _rewards(), sigmoid(), lambda s: {}["x"], settings, horizons_name="bad")
    with pytest.raises(PluginError, match="horizon schedule 'bad' returned steps"):
        RatsObjective(b, _rewards(), sigmoid(), lambda s: [(5, 1.0)], settings, horizons_name="bad")


def test_nearest_alignment_with_two_student_steps_on_one_teacher_step():
    """Regression: with `nearest`, student σ's 1.0 and 0.95 both match teacher step 0; each
    horizon still gets the teacher's prediction (was a KeyError)."""

    class Coarse(ToyBackbone):
        def sigmas(self, n):
            return {2: torch.tensor([1.0, 0.95, 0.0]), 3: torch.tensor([1.0, 0.5, 0.25, 0.0])}[n]

    b = Coarse()
    obj = RatsObjective(b, _rewards(), sigmoid(), all_steps(),
                        ObjectiveSettings(student_steps=2, teacher_steps=3, alignment="nearest"))
    assert obj.schedules.teacher_index == (0, 0)
    noise = torch.randn(b.latent_shape(2))
    t = obj.teacher_rollout(b.denoiser, noise, b.encode_prompts(PROMPTS[:2]), PROMPTS[:2])
    assert sorted(t.x0) == [0, 1] and torch.equal(t.x0[0], t.x0[1])
    loss, _ = obj(b.denoiser, b.denoiser, PROMPTS[:2], noise)
    assert torch.isfinite(loss)


def test_settings_from_config(toy_config):
    from rats_core.config import load_config

    cfg = load_config(toy_config, ["loss.alpha=0.5", "student.grad_steps=2", "teacher.alignment=nearest"])
    s = ObjectiveSettings.from_config(cfg)
    assert (s.student_steps, s.teacher_steps, s.grad_steps, s.alpha, s.alignment) == (2, 8, 2, 0.5, "nearest")
    # every key the objective reads, each off its default
    cfg = load_config(toy_config, [
        "student.steps=3", "teacher.steps=9", "teacher.alignment=nearest", "teacher.target=sample",
        "student.grad_steps=2", "loss.alpha=0.5", "loss.beta=0.25", "loss.cosine_weight=0.3", "loss.l2_weight=2.0",
        "student.guidance_scale=1.5", "teacher.guidance_scale=4.0", "student.gradient_checkpointing=true",
        "student.horizon_gradients=false"])
    assert ObjectiveSettings.from_config(cfg) == ObjectiveSettings(
        student_steps=3, teacher_steps=9, alignment="nearest", teacher_target="sample", grad_steps=2, alpha=0.5,
        beta=0.25, cosine_weight=0.3, l2_weight=2.0, student_guidance=1.5, teacher_guidance=4.0, checkpointing=True,
        teacher_inference_mode=True, horizon_gradients=False)


@pytest.mark.parametrize("horizon_gradients", [True, False])
def test_horizon_gradients_option_controls_the_early_horizons_gradient(horizon_gradients):
    """Only the first horizon matched, K_grad = 1 of K = 3 steps, no reward term: the shape loss reaches
    the student's weights through that horizon's own evaluation exactly when the option is on."""
    b, student, teacher, obj, noise = _setup(
        "flow", horizons=explicit(steps=[0]), beta=0.0, grad_steps=1, horizon_gradients=horizon_gradients)
    loss, _ = obj(student, teacher, PROMPTS, noise)
    assert loss.item() > 0
    loss.backward()
    moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert moved is horizon_gradients  # off: the matched step ran under no_grad, nothing trains through it
    kept = obj.student_rollout(student, noise, b.encode_prompts(PROMPTS)).x0[0]
    assert kept.requires_grad is horizon_gradients


def test_teacher_target_sample_matches_every_horizon_to_the_teachers_final_sample():
    """``teacher.target: sample``: each horizon's target is the teacher's final N-step sample from the
    same noise (not its x0-prediction at that σ), and the first horizon is no longer a zero distance."""
    b, student, teacher, obj, noise = _setup("flow", teacher_target="sample")
    cond = b.encode_prompts(PROMPTS)
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS)
    assert sorted(t.x0) == [0, 1, 2]
    for k in range(3):
        assert torch.equal(t.x0[k], t.final)
    by_prediction = RatsObjective(b, _rewards(), sigmoid(tau=0.05), all_steps("late"), ObjectiveSettings(
        student_steps=3, teacher_steps=12, alpha=2.0, beta=0.7)).teacher_rollout(teacher, noise, cond, PROMPTS)
    assert torch.equal(by_prediction.final, t.final)
    assert not torch.allclose(by_prediction.x0[0], t.final)  # the σ_0 prediction is not the sample

    same = RatsObjective(b, _rewards(), sigmoid(), explicit(steps=[0]),
                         ObjectiveSettings(student_steps=2, teacher_steps=10, teacher_target="sample"))
    _, metrics = same(b.denoiser, teacher, PROMPTS, noise)
    assert metrics["shape_loss"].item() > 1e-3  # the student's first prediction vs where the teacher ends

    with pytest.raises(ValueError, match="teacher target must be one of"):
        RatsObjective(b, _rewards(), sigmoid(), all_steps(), ObjectiveSettings(teacher_target="final"))


def test_teacher_target_from_config(toy_config):
    from rats_core.config import load_config
    from rats_core.errors import ConfigError

    assert ObjectiveSettings.from_config(load_config(toy_config)).teacher_target == "prediction"
    cfg = load_config(toy_config, ["teacher.target=sample"])
    assert ObjectiveSettings.from_config(cfg).teacher_target == "sample"
    with pytest.raises(ConfigError, match="target"):
        load_config(toy_config, ["teacher.target=endpoint"])


def test_teacher_target_continuation_starts_the_teacher_from_the_students_state():
    """``teacher.target: continuation`` (on-policy): horizon k's target is the teacher's rollout to σ = 0
    from the student's own state at σ_k, along the teacher schedule's tail; at k = 0 (the shared noise)
    it is the teacher's sample."""
    b, student, teacher, obj, noise = _setup("flow", teacher_target="continuation")
    cond = b.encode_prompts(PROMPTS)
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS)
    s = obj.student_rollout(student, noise, cond)
    assert sorted(s.states) == [0, 1, 2] and not any(v.requires_grad for v in s.states.values())
    targets = obj.teacher_continuations(teacher, s.states, cond, t)
    assert torch.equal(targets[0], t.final)
    sched = obj.schedules
    for k in (1, 2):
        tail = sched.teacher[sched.teacher_index[k]:]
        assert tail[0] == sched.student[k]  # superset: the teacher passes through the student's σ_k
        by_hand = rollout(b, teacher, None, cond, tail, keep=(), start=s.states[k]).final
        assert torch.allclose(targets[k], by_hand)
        assert not torch.allclose(targets[k], t.final, atol=1e-4)  # the student drifted: another endpoint

    loss, metrics = obj(student, teacher, PROMPTS, noise)
    r_s, _ = obj.rewards(b.decode(s.final), PROMPTS)
    d = [horizon_distance(s.x0[k], targets[k]) for k in range(3)]
    expected = (-0.7 * r_s + 2.0 * obj.gate_values(t.reward, r_s) * (d[0] + 2 * d[1] + 3 * d[2]) / 6).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_continuation_equals_the_sample_when_the_student_walks_the_teachers_path():
    """Same network, same schedule (K = N): the student's states are the teacher's, so every continuation
    ends at the teacher's sample and the two targets give the same loss."""
    b = ToyBackbone(interpolation="ve")
    teacher = Teacher(b.denoiser).module
    noise = torch.randn(b.latent_shape(3))
    losses = []
    for target in ("sample", "continuation"):
        obj = RatsObjective(b, _rewards(), sigmoid(), all_steps(),
                            ObjectiveSettings(student_steps=4, teacher_steps=4, teacher_target=target))
        losses.append(obj(b.denoiser, teacher, PROMPTS, noise)[0])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)


def test_continuation_under_nearest_alignment_starts_at_the_students_sigma():
    """``nearest``: the teacher has no step at the student's σ_1 = 0.95; the continuation starts there (where
    the student's state is) and follows the teacher's remaining σ's."""

    class Coarse(ToyBackbone):
        def sigmas(self, n):
            return {2: torch.tensor([1.0, 0.95, 0.0]), 3: torch.tensor([1.0, 0.5, 0.25, 0.0])}[n]

    b = Coarse()
    obj = RatsObjective(b, _rewards(), sigmoid(), all_steps(), ObjectiveSettings(
        student_steps=2, teacher_steps=3, alignment="nearest", teacher_target="continuation"))
    noise = torch.randn(b.latent_shape(2))
    cond = b.encode_prompts(PROMPTS[:2])
    t = obj.teacher_rollout(b.denoiser, noise, cond, PROMPTS[:2])
    s = obj.student_rollout(b.denoiser, noise, cond)
    got = obj.teacher_continuations(b.denoiser, s.states, cond, t)[1]
    by_hand = rollout(b, b.denoiser, None, cond, torch.tensor([0.95, 0.5, 0.25, 0.0]), keep=(), start=s.states[1])
    assert torch.allclose(got, by_hand.final)


# ----------------------------------------------------------------------------- what each piece runs with


class Recording(ToyBackbone):
    """The toy backbone, recording per network call its guidance scale and whether inference mode was on."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[tuple[float, bool]] = []

    def predict_x0(self, denoiser, x, sigma, cond, guidance_scale: float = 1.0):
        self.seen.append((guidance_scale, torch.is_inference_mode_enabled()))
        return super().predict_x0(denoiser, x, sigma, cond, guidance_scale=guidance_scale)


@pytest.mark.parametrize("inference_mode", [True, False])
def test_each_rollout_runs_with_its_own_guidance_and_the_teacher_without_autograd(inference_mode):
    """The teacher's rollouts (its own and the continuations) use teacher.guidance_scale and run under
    inference mode unless teacher_inference_mode is off; the student's use student.guidance_scale, with
    autograd. What they return is usable outside inference mode: the loss backpropagates."""
    b = Recording(interpolation="flow")
    obj = RatsObjective(b, _rewards(), sigmoid(), all_steps(), ObjectiveSettings(
        student_steps=2, teacher_steps=4, student_guidance=1.5, teacher_guidance=3.0, teacher_target="continuation",
        teacher_inference_mode=inference_mode))
    teacher = Teacher(b.denoiser).module
    noise = torch.randn(b.latent_shape(2))
    cond = b.encode_prompts(PROMPTS[:2])
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS[:2])
    assert b.seen and set(b.seen) == {(3.0, inference_mode)}
    assert t.images is not None and torch.equal(t.images, b.decode(t.final))
    assert not any(x.is_inference() for x in (t.final, t.images, t.reward, *t.x0.values(), *t.parts.values()))
    b.seen.clear()
    s = obj.student_rollout(b.denoiser, noise, cond)
    assert b.seen and set(b.seen) == {(1.5, False)}
    b.seen.clear()
    targets = obj.teacher_continuations(teacher, s.states, cond, t)
    assert b.seen and set(b.seen) == {(3.0, inference_mode)} and not targets[1].is_inference()
    loss, _ = obj(b.denoiser, teacher, PROMPTS[:2], noise)
    loss.backward()
    assert any(p.grad is not None for p in b.denoiser.parameters())


def test_the_objective_times_its_phases_by_name_only_when_asked():
    from rats_core.timing import PhaseTimer

    b, student, teacher, obj, noise = _setup("flow", teacher_target="continuation")
    assert obj.timer.enabled is False
    obj(student, teacher, PROMPTS, noise)
    assert obj.timer.totals == {}
    obj.timer = PhaseTimer(True)
    obj(student, teacher, PROMPTS, noise)
    assert set(obj.timer.totals) == {"encode_prompts", "teacher_rollout", "student_rollout", "teacher_continuation",
                                     "student_reward", "loss"}
    obj.timer.totals.clear()
    obj.s.alpha = 0.0  # no shaping: no continuation to run; the prompts already encoded
    obj(student, teacher, PROMPTS, noise, cond=b.encode_prompts(PROMPTS))
    assert set(obj.timer.totals) == {"teacher_rollout", "student_rollout", "student_reward", "loss"}


def test_continuation_targets_are_used_whatever_the_shaping_weight():
    """α = 0.5 (below 1): the shape loss still matches each horizon to the teacher's continuation."""
    b, student, teacher, obj, noise = _setup("flow", teacher_target="continuation", alpha=0.5)
    cond = b.encode_prompts(PROMPTS)
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS)
    s = obj.student_rollout(student, noise, cond)
    targets = obj.teacher_continuations(teacher, s.states, cond, t)
    r_s, _ = obj.rewards(b.decode(s.final), PROMPTS)
    d = [horizon_distance(s.x0[k], targets[k]) for k in range(3)]
    g = torch.sigmoid((t.reward - r_s.detach()) / 0.05)
    expected = (-0.7 * r_s + 0.5 * g * (d[0] + 2 * d[1] + 3 * d[2]) / 6).mean()
    loss, _ = obj(student, teacher, PROMPTS, noise)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_the_shape_loss_uses_the_configured_cosine_and_l2_weights():
    b, student, teacher, obj, noise = _setup("ve", cosine_weight=0.3, l2_weight=2.5)
    cond = b.encode_prompts(PROMPTS)
    t = obj.teacher_rollout(teacher, noise, cond, PROMPTS)
    s = obj.student_rollout(student, noise, cond)
    d = [0.3 * (1 - torch.cosine_similarity(s.x0[k].flatten(1), t.x0[k].flatten(1), dim=1))
         + 2.5 * (s.x0[k] - t.x0[k]).flatten(1).pow(2).mean(dim=1) for k in range(3)]
    _, metrics = obj(student, teacher, PROMPTS, noise)
    assert metrics["shape_loss"].item() == pytest.approx(((d[0] + 2 * d[1] + 3 * d[2]) / 6).mean().item(), rel=1e-5)


@pytest.mark.parametrize("c, low, high", [(0.1, 0.0, 0.0), (0.9, 0.0, 0.0), (0.05, 1.0, 0.0), (0.95, 0.0, 1.0)])
def test_gate_low_and_high_are_strict(c, low, high):
    _, student, teacher, obj, noise = _setup(gate=constant(c=c))
    _, metrics = obj(student, teacher, PROMPTS, noise)
    assert (metrics["gate_low"].item(), metrics["gate_high"].item()) == (low, high)


def test_default_names_in_plugin_errors():
    b = ToyBackbone()
    settings = ObjectiveSettings(student_steps=2, teacher_steps=4)
    with pytest.raises(PluginError, match="horizon schedule 'horizons' raised KeyError"):
        RatsObjective(b, _rewards(), sigmoid(), lambda s: {}["x"], settings)
    obj = RatsObjective(b, _rewards(), lambda r_t, r_s: 1 / 0, all_steps(), settings)
    with pytest.raises(PluginError, match="gate 'gate' raised ZeroDivisionError"):
        obj.gate_values(torch.zeros(2), torch.zeros(2))


def test_a_zero_weight_horizon_is_not_matched(spy_backbone_cls):
    """Horizons (0, 0.0) and (2, 1.0) of K = 3: step 0 gets no gradient of its own and the teacher keeps no
    prediction for it; only step 2 is shaped."""
    b = spy_backbone_cls(ToyBackbone(interpolation="flow"))
    obj = RatsObjective(b, _rewards(), sigmoid(), explicit(steps=[0, 2], weights=[0.0, 1.0]),
                        ObjectiveSettings(student_steps=3, teacher_steps=6, grad_steps=1))
    assert obj.horizons == [(0, 0.0), (2, 1.0)] and obj.horizon_steps == [2]
    noise = torch.randn(b.latent_shape(2))
    cond = b.encode_prompts(PROMPTS[:2])
    b.reset()
    s = obj.student_rollout(b.denoiser, noise, cond)
    assert b.steps_with_graph() == {2} and sorted(s.x0) == [2]
    assert sorted(obj.teacher_rollout(b.denoiser, noise, cond, PROMPTS[:2]).x0) == [2]
