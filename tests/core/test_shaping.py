"""Per-horizon distance and the shape loss (rats_core/method/shaping.py), on hand-computed tiny tensors."""

from __future__ import annotations

import pytest
import torch

from rats_core.method.shaping import horizon_distance, shape_loss


def lat(*rows):
    """[B, 1, 2, 1] latents from per-sample pairs, so flattening is exercised."""
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 1, 2, 1)


S = lat([1.0, 0.0], [1.0, 1.0], [3.0, 4.0])
T = lat([0.0, 1.0], [2.0, 2.0], [4.0, 3.0])
# per sample: 1 - cos        = [1, 0, 1 - 24/25]
#             ||S - T||²/dim = [(1 + 1)/2, (1 + 1)/2, (1 + 1)/2]
ONE_MINUS_COS = [1.0, 0.0, 0.04]
L2 = [1.0, 1.0, 1.0]


def test_cosine_only():
    d = horizon_distance(S, T, cosine_weight=1.0, l2_weight=0.0)
    assert d.shape == (3,)
    assert d.tolist() == pytest.approx(ONE_MINUS_COS, abs=1e-6)


def test_l2_only_is_mean_squared_error_per_sample():
    d = horizon_distance(S, T, cosine_weight=0.0, l2_weight=1.0)
    assert d.tolist() == pytest.approx(L2, abs=1e-6)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ref = ((a - b) ** 2).flatten(1).mean(1)
    assert torch.allclose(horizon_distance(a, b, 0.0, 1.0), ref, atol=1e-6)


def test_weighted_combination():
    d = horizon_distance(S, T, cosine_weight=0.5, l2_weight=2.0)
    assert d.tolist() == pytest.approx([0.5 * c + 2.0 * l for c, l in zip(ONE_MINUS_COS, L2)], abs=1e-6)


def test_identical_predictions_have_zero_distance_and_scale_matters_only_to_l2():
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(horizon_distance(x, x), torch.zeros(2), atol=1e-6)
    d = horizon_distance(2 * x, x, cosine_weight=1.0, l2_weight=0.0)
    assert torch.allclose(d, torch.zeros(2), atol=1e-6)
    assert (horizon_distance(2 * x, x, 0.0, 1.0) > 0).all()


def test_low_precision_inputs_give_float32():
    d = horizon_distance(S.bfloat16(), T.bfloat16())
    assert d.dtype == torch.float32


def test_gradient_reaches_the_student_only():
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    horizon_distance(s, t.detach()).sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_shape_loss_is_the_weighted_horizon_average():
    s_x0 = {0: S, 2: S.flip(0)}
    t_x0 = {0: T, 2: T}
    d0 = horizon_distance(S, T, 1.0, 1.0)
    d2 = horizon_distance(S.flip(0), T, 1.0, 1.0)
    out = shape_loss(s_x0, t_x0, [(0, 1.0), (2, 3.0)])
    assert out.shape == (3,)
    assert torch.allclose(out, (1.0 * d0 + 3.0 * d2) / 4.0, atol=1e-6)
    # by hand for sample 0: d0 = 1 + 1 = 2; d2 compares [3, 4] with [0, 1]:
    # 1 - cos = 1 - 4/5 = 0.2, l2 = (9 + 9)/2 = 9  ->  (2 + 3·9.2)/4
    assert out[0].item() == pytest.approx((2.0 + 3.0 * 9.2) / 4.0, abs=1e-5)


def test_shape_loss_zero_weight_horizons_are_skipped_but_count_in_nothing():
    # step 1 has weight 0 and no predictions at all: it must not be looked up
    out = shape_loss({0: S}, {0: T}, [(0, 2.0), (1, 0.0)], cosine_weight=1.0, l2_weight=0.0)
    assert out.tolist() == pytest.approx(ONE_MINUS_COS, abs=1e-6)
    # ... wherever it stands: the horizons after it still count
    out = shape_loss({2: S}, {2: T}, [(0, 0.0), (2, 2.0)], cosine_weight=1.0, l2_weight=0.0)
    assert out.tolist() == pytest.approx(ONE_MINUS_COS, abs=1e-6)


def test_tiny_latents_still_compare_by_direction():
    """Cosine's eps guards only against a zero norm: latents of norm 1e-3 pointing the same way are at cosine
    distance 0, opposite ones at 2."""
    small = lat([1e-3, 0.0], [1e-3, 1e-3])
    d = horizon_distance(small, small, cosine_weight=1.0, l2_weight=0.0)
    assert d.tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    d = horizon_distance(small, -small, cosine_weight=1.0, l2_weight=0.0)
    assert d.tolist() == pytest.approx([2.0, 2.0], abs=1e-5)


def test_shape_loss_options_are_passed_through():
    out = shape_loss({0: S}, {0: T}, [(0, 1.0)], cosine_weight=0.0, l2_weight=3.0)
    assert out.tolist() == pytest.approx([3.0 * v for v in L2], abs=1e-6)


def test_shape_loss_rejects_zero_total_weight():
    with pytest.raises(ValueError, match="^horizon weights sum to zero$"):
        shape_loss({0: S}, {0: T}, [(0, 0.0)])


def test_validate_horizons_names_the_schedule_in_its_errors():
    from rats_core.errors import PluginError
    from rats_core.method.shaping import validate_horizons

    assert validate_horizons([(0, 1), ("2", "0.5")], 3) == [(0, 1.0), (2, 0.5)]
    with pytest.raises(PluginError, match=r"^horizon schedule 'horizons' returned steps \[3\]; need unique steps in 0..2$"):
        validate_horizons([(3, 1.0)], 3)
    with pytest.raises(PluginError, match="horizon schedule 'mine' returned weights"):
        validate_horizons([(0, 0.0)], 3, "mine")
