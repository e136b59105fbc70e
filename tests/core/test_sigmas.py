"""σ-space maths and σ-aligned teacher schedules (rats_core/method/sigmas.py).

The closed-form checks use ``LinearBackbone`` (tests/core/conftest.py): its DDIM trajectory is exact
for any step count, so a 4-step student and a 50-step teacher started from the same noise must be
at the same state, with the same x0-prediction, at every shared σ — for ``ve`` and ``flow``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from rats_core.method.objective import ObjectiveSettings, RatsObjective
from rats_core.method.rewards import RewardSet, WeightedReward
from rats_core.method.sigmas import (
    add_noise,
    align_schedules,
    ddim_step,
    initial_latents,
    ve_model_input,
    x0_from_eps,
    x0_from_flow,
    x0_from_v,
)
from rats_plugins.gates import sigmoid
from rats_plugins.horizons import all_steps
from rats_plugins.toy import Brightness, ToyBackbone

# ----------------------------------------------------------------------------- interpolations


@pytest.mark.parametrize("interp", ["ve", "flow"])
def test_ddim_step_with_exact_x0_lands_on_the_interpolation(interp):
    x0, eps = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    s, sn = (3.0, 0.7) if interp == "ve" else (0.9, 0.4)
    x = add_noise(x0, eps, s, interp)
    assert torch.allclose(ddim_step(x, x0, s, sn, interp), add_noise(x0, eps, sn, interp), atol=1e-12)


def test_add_noise_formulas_and_per_sample_sigma():
    x0, eps = torch.ones(2, 1, 1, 1), torch.full((2, 1, 1, 1), 2.0)
    assert add_noise(x0, eps, 0.5, "ve").flatten().tolist() == [2.0, 2.0]  # 1 + 0.5·2
    assert add_noise(x0, eps, 0.25, "flow").flatten().tolist() == [1.25, 1.25]  # 0.75·1 + 0.25·2
    per_sample = add_noise(x0, eps, torch.tensor([0.0, 1.0]), "flow").flatten().tolist()
    assert per_sample == [1.0, 2.0]


@pytest.mark.parametrize("interp", ["ve", "flow"])
def test_initial_latents_are_sigma0_times_noise(interp):
    noise = torch.randn(2, 3, 2, 2)
    assert torch.equal(initial_latents(noise, torch.tensor(2.0), interp), 2.0 * noise)


def test_unknown_interpolation():
    x = torch.zeros(1, 1)
    for fn in (lambda: add_noise(x, x, 1.0, "vp"), lambda: ddim_step(x, x, 1.0, 0.5, "vp"),
               lambda: initial_latents(x, 1.0, "vp")):
        with pytest.raises(ValueError, match="interpolation"):
            fn()


def test_x0_conversions_invert_the_parameterisations():
    x0, eps = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    s = 1.7
    x = x0 + s * eps  # ve
    assert torch.allclose(x0_from_eps(x, s, eps), x0)
    alpha = 1 / (1 + s**2) ** 0.5
    v = alpha * eps - s * alpha * x0  # diffusers' v-prediction target on x_t = alpha·x
    assert torch.allclose(x0_from_v(x, s, v), x0)
    t = 0.3
    xf = (1 - t) * x0 + t * eps  # flow
    assert torch.allclose(x0_from_flow(xf, t, eps - x0), x0)


# ----------------------------------------------------------------------------- align_schedules


def _check_superset(a, student):
    t = a.teacher
    assert (t[1:] < t[:-1]).all(), "teacher schedule must be strictly decreasing"
    assert t[-1] == 0
    assert a.exact
    k_steps = len(student) - 1
    assert len(a.teacher_index) == k_steps and len(set(a.teacher_index)) == k_steps
    for k in range(k_steps):
        assert t[a.teacher_index[k]] == student[k], "teacher must contain every student σ exactly"


@pytest.mark.parametrize("interp", ["ve", "flow"])
def test_superset_contains_every_student_sigma_and_keeps_n(interp):
    backbone = ToyBackbone(interpolation=interp)
    for k in range(1, 9):
        for n in sorted({k + 1, 20, 50}):
            student = backbone.sigmas(k)
            a = align_schedules(student, backbone.sigmas(n), "superset")
            _check_superset(a, student)
            assert len(a.teacher) == n + 1, f"K={k}, N={n}: teacher should keep N steps"
            assert a.teacher[0] == student[0]  # both start from the same noise level
            assert torch.equal(a.student, student.float())


def test_superset_inserts_when_two_student_sigmas_want_the_same_teacher_step():
    student = torch.tensor([0.6, 0.55, 0.0])
    a = align_schedules(student, torch.tensor([1.0, 0.5, 0.0]), "superset")
    _check_superset(a, student)
    assert a.teacher.tolist() == pytest.approx([1.0, 0.6, 0.55, 0.0])  # N grew from 2 to 3
    assert a.teacher_index == (1, 2)


def test_superset_on_random_schedules():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(1, 9, (1,), generator=g))
        n = int(torch.randint(k + 1, 40, (1,), generator=g))
        student = torch.cat([torch.rand(k, generator=g).sort(descending=True).values * 10, torch.zeros(1)])
        teacher = torch.cat([torch.rand(n, generator=g).sort(descending=True).values * 10, torch.zeros(1)])
        a = align_schedules(student, teacher, "superset")
        _check_superset(a, student)
        assert len(a.teacher) >= n + 1


def test_nearest_is_exact_without_warning_when_the_grids_nest(caplog):
    backbone = ToyBackbone(interpolation="flow")  # linspace: σ's of K = 2 are among those of N = 8
    with caplog.at_level(logging.WARNING, logger="rats_core.method.sigmas"):
        a = align_schedules(backbone.sigmas(2), backbone.sigmas(8), "nearest")
    assert a.exact and a.teacher_index == (0, 4)
    assert torch.equal(a.teacher, backbone.sigmas(8))
    assert not caplog.records


def test_nearest_warns_when_inexact(caplog):
    backbone = ToyBackbone(interpolation="flow")  # 1, 2/3, 1/3 vs multiples of 1/8
    with caplog.at_level(logging.WARNING, logger="rats_core.method.sigmas"):
        a = align_schedules(backbone.sigmas(3), backbone.sigmas(8), "nearest")
    assert not a.exact
    assert torch.equal(a.teacher, backbone.sigmas(8)), "nearest must not change the teacher schedule"
    assert a.teacher_index == (0, 3, 5)  # 2/3 -> 5/8, 1/3 -> 3/8
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "nearest" in record.getMessage() and "superset" in record.getMessage()


def test_nearest_tolerance_is_relative_above_sigma_one(caplog):
    """A student σ counts as on the teacher's grid within 1e-6 · max(1, σ): 5e-6 off at σ = 10 is on it
    (5e-6 < 1e-5), 1.5e-6 off at σ = 0.5 is not (> 1e-6)."""
    with caplog.at_level(logging.WARNING, logger="rats_core.method.sigmas"):
        a = align_schedules(torch.tensor([10.0, 0.0], dtype=torch.float64),
                            torch.tensor([10.000005, 5.0, 0.0], dtype=torch.float64), "nearest")
    assert a.exact and a.teacher_index == (0,) and not caplog.records
    with caplog.at_level(logging.WARNING, logger="rats_core.method.sigmas"):
        a = align_schedules(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),
                            torch.tensor([1.0, 0.5000015, 0.0], dtype=torch.float64), "nearest")
    assert not a.exact and a.teacher_index == (0, 1)
    (record,) = caplog.records
    assert record.getMessage() == ("teacher schedule does not contain every student sigma; matching nearest "
                                   "(largest gap 1.5e-06). Use teacher.alignment=superset for exact alignment.")


def test_superset_is_the_default_and_copes_with_more_student_than_teacher_steps():
    student, teacher = torch.linspace(1.0, 0.0, 5), torch.linspace(1.0, 0.0, 3)  # K = 4, N = 2
    a = align_schedules(student, teacher)
    assert a.exact and a.teacher.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0] and a.teacher_index == (0, 1, 2, 3)
    assert a.student.dtype == a.teacher.dtype == torch.float32


def test_ve_model_input_is_x_over_sqrt_sigma_squared_plus_one():
    x = torch.full((2, 1, 2, 2), 3.0)
    assert torch.allclose(ve_model_input(x, 4.0), x / 17 ** 0.5)  # √(4² + 1)
    per_sample = ve_model_input(x, torch.tensor([0.0, 2.0]))
    assert per_sample[0].eq(3.0).all() and torch.allclose(per_sample[1], torch.full((1, 2, 2), 3 / 5 ** 0.5))


def test_unknown_alignment_mode():
    s = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="alignment"):
        align_schedules(s, torch.tensor([1.0, 0.5, 0.0]), "closest")


# ----------------------------------------------------------------------------- closed-form trajectories


def _objective(backbone, k, n, alignment="superset"):
    rewards = RewardSet([WeightedReward("brightness", Brightness())])
    settings = ObjectiveSettings(student_steps=k, teacher_steps=n, alignment=alignment)
    return RatsObjective(backbone, rewards, sigmoid(), all_steps(), settings)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_linear_model_teacher_and_student_agree_at_shared_sigmas(linear_backbone, k):
    b = linear_backbone
    obj = _objective(b, k, 50)
    noise = torch.randn(b.latent_shape(2), dtype=torch.float64)

    b.calls.clear()
    t = obj.teacher_rollout(b.denoiser, noise, None, ["a", "b"])
    teacher_calls, b.calls = b.calls, []
    s = obj.student_rollout(b.denoiser, noise, None)
    student_calls = b.calls

    assert len(student_calls) == k and len(teacher_calls) == 50
    # same noise, same σ_0: the very first network inputs are identical
    assert teacher_calls[0][0] == student_calls[0][0]
    assert torch.equal(teacher_calls[0][1], student_calls[0][1])

    sigma0 = float(obj.schedules.student[0])
    for step in range(k):
        i = obj.schedules.teacher_index[step]
        sigma = float(obj.schedules.student[step])
        # the teacher evaluates the network at exactly the student's σ_k ...
        assert teacher_calls[i][0] == student_calls[step][0] == sigma
        # ... in exactly the state the closed form predicts, as does the student
        expected_state = b.path_state(noise, sigma0, sigma)
        assert torch.allclose(teacher_calls[i][1], expected_state, atol=1e-9)
        assert torch.allclose(student_calls[step][1], expected_state, atol=1e-9)
        # and the x0-predictions handed to the shape loss agree
        assert torch.allclose(t.x0[step], s.x0[step], atol=1e-9)
        assert torch.allclose(s.x0[step], b.path_x0(noise, sigma0), atol=1e-9)
    assert torch.allclose(t.final, s.final, atol=1e-9)
    assert torch.allclose(s.final, b.path_x0(noise, sigma0), atol=1e-9)


def test_linear_model_nearest_alignment_uses_the_nearest_teacher_step(linear_backbone, caplog):
    b = linear_backbone
    with caplog.at_level(logging.WARNING, logger="rats_core.method.sigmas"):
        obj = _objective(b, 3, 8, alignment="nearest")
    assert not obj.schedules.exact and caplog.records
    noise = torch.randn(b.latent_shape(1), dtype=torch.float64)
    b.calls.clear()
    obj.teacher_rollout(b.denoiser, noise, None, ["a"])
    teacher_sigmas = [c[0] for c in b.calls]
    assert len(teacher_sigmas) == 8  # the teacher's own schedule, untouched
    for step, i in enumerate(obj.schedules.teacher_index):
        target = float(obj.schedules.student[step])
        gaps = [abs(sv - target) for sv in teacher_sigmas]
        assert abs(teacher_sigmas[i] - target) == min(gaps)
