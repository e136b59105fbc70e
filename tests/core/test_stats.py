"""rats_core/evaluation/stats.py against closed forms and independent implementations: Wilson and Newcombe's
published intervals, the exact binomial (scipy), McNemar by hand, Student's t, and the rule."""

from __future__ import annotations

import random

import pytest

from rats_core.evaluation import stats


@pytest.mark.parametrize("k, n, plain, corrected", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: methods 3 (Wilson) and 4 (continuity-corrected)
    (81, 263, (0.2553, 0.3662), (0.2535, 0.3682)),
    (15, 148, (0.0624, 0.1605), (0.0598, 0.1644)),
    (0, 20, (0.0, 0.1611), (0.0, 0.2005)),
    (1, 29, (0.0061, 0.1718), (0.0018, 0.1963)),
])
def test_wilson_matches_newcombes_published_intervals(k, n, plain, corrected):
    assert stats.wilson(k, n, correction=False) == pytest.approx(plain, abs=5e-5)
    assert stats.wilson(k, n) == pytest.approx(corrected, abs=5e-5)


def test_wilson_does_not_collapse_at_0_or_100_percent():
    lo, hi = stats.wilson(1000, 1000)
    assert hi == 1.0 and 0.99 < lo < 0.997  # the normal approximation gave [1, 1]
    lo, hi = stats.wilson(0, 1000)
    assert lo == 0.0 and 0.003 < hi < 0.01


def test_newcombe_difference_matches_the_published_example():
    # Newcombe (1998b), Statistics in Medicine 17:873: 56/70 − 48/80, method 11
    assert stats.newcombe_difference(56, 70, 48, 80) == pytest.approx((0.0428, 0.3422), abs=5e-5)


def test_clopper_pearson_matches_the_beta_quantiles():
    beta = pytest.importorskip("scipy.stats").beta
    for k, n in ((7, 20), (1, 50), (49, 50), (300, 1000)):
        lo, hi = stats.clopper_pearson(k, n)
        assert lo == pytest.approx(beta.ppf(0.025, k, n - k + 1), abs=1e-9)
        assert hi == pytest.approx(beta.ppf(0.975, k + 1, n - k), abs=1e-9)
    assert stats.clopper_pearson(0, 10)[0] == 0.0 and stats.clopper_pearson(10, 10)[1] == 1.0
    assert stats.clopper_pearson(5, 5)[0] == pytest.approx(0.025 ** (1 / 5))  # closed form at k = n


def test_mcnemar_by_hand_and_against_scipys_binomtest():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    # student right on all 1000, teacher wrong on 10: b = 10, c = 0, p = 2 · 0.5^10
    m = stats.mcnemar([True] * 1000, [True] * 990 + [False] * 10)
    assert (m["b"], m["c"]) == (10, 0) and m["p_value"] == pytest.approx(2 * 0.5 ** 10)
    assert m["difference"] == pytest.approx(0.01)
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(20, 200)
        a = [rng.random() < 0.6 for _ in range(n)]
        b = [x if rng.random() < 0.8 else not x for x in a]
        m = stats.mcnemar(a, b)
        if m["b"] + m["c"]:
            assert m["p_value"] == pytest.approx(binomtest(m["b"], m["b"] + m["c"], 0.5).pvalue, rel=1e-9)
        assert m["difference"] == pytest.approx(sum(a) / n - sum(b) / n)


def test_mcnemar_interval_excludes_zero_exactly_when_the_exact_test_rejects():
    for b in range(0, 15):
        for c in range(0, 15):
            m = stats.mcnemar([True] * b + [False] * c + [True] * 30, [False] * b + [True] * c + [True] * 30)
            lo, hi = m["interval"]
            assert lo <= m["difference"] <= hi
            assert (lo > 0 or hi < 0) == (m["p_value"] < 0.05), (b, c)


def test_paired_bootstrap_is_deterministic_and_resamples_prompts_whole():
    rng = random.Random(1)
    a = [rng.gauss(1.0, 1.0) for _ in range(60)]
    b = [x - 0.3 + rng.gauss(0, 0.2) for x in a]
    prompts = [f"p{i // 3}" for i in range(60)]  # 20 prompts, 3 images each
    one = stats.paired_bootstrap(a, b, groups=prompts, resamples=500, seed=0)
    assert one == stats.paired_bootstrap(a, b, groups=prompts, resamples=500, seed=0)
    assert one["groups"] == 20 and one["difference"] == pytest.approx(sum(a) / 60 - sum(b) / 60)
    assert one["interval"][0] < one["difference"] < one["interval"][1] and one["interval"][0] > 0
    assert stats.paired_bootstrap(a, b, groups=prompts, resamples=500, seed=1)["interval"] != one["interval"]
    same = stats.paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["interval"] == [0.0, 0.0]


def test_t_quantile_and_paired_t_against_closed_forms():
    t = pytest.importorskip("scipy.stats").t
    for df in (1, 2, 4, 10, 29, 30, 31, 60, 500):
        assert stats.t_quantile(df) == pytest.approx(t.ppf(0.975, df), abs=2e-6)
    # differences 1, 2, 3: mean 2, sd 1, half-width t(2) / sqrt(3)
    d = stats.paired_t([1.0, 2.0, 3.0])
    half = t.ppf(0.975, 2) / 3 ** 0.5
    assert d["interval"] == pytest.approx([2 - half, 2 + half], abs=1e-6)
    assert stats.paired_t([1.0, 1.0, 1.0, 1.0, 1.0])["interval"] == [1.0, 1.0]
    assert stats.paired_t([1.0])["interval"] is None


@pytest.mark.parametrize("interval, claim, margin, status", [
    ((0.01, 0.2), "better", 0.0, "yes"),
    ((-0.01, 0.2), "better", 0.0, "within noise"),
    ((0.0, 0.0), "better", 0.0, "within noise"),  # an exact tie is not a win
    ((-0.2, -0.01), "better", 0.0, "no"),
    ((-0.019, 0.1), "not worse", 0.02, "yes"),
    ((-0.019, -0.001), "not worse", 0.02, "yes"),  # really worse, but by less than the margin
    ((-0.15, 0.07), "not worse", 0.02, "within noise"),  # the issue's −0.041 ± 0.11
    ((-0.15, -0.01), "not worse", 0.02, "no"),
    ((-0.02, -0.01), "not worse", 0.02, "no"),  # worse by exactly the margin: the rule is strict
    ((0.0, 0.0), "not worse", 0.02, "yes"),  # an exact tie is not worse
    ((0.0, 0.0), "not worse", 0.0, "within noise"),  # ... unless the margin is 0 (docstring of stats.py)
    ((-0.01, 0.01), "better", 0.5, "within noise"),  # "better" has no margin
    (None, "not worse", 0.02, "not testable"),
])
def test_the_rule(interval, claim, margin, status):
    assert stats.decide(interval, claim=claim, margin=margin) == status
    assert stats.holds(status) is {"yes": True, "no": False}.get(status)


def test_margins_are_a_strict_config():
    from pydantic import ValidationError

    assert stats.Margins().judge == 0.02 and stats.Margins().fid == 0.02
    with pytest.raises(ValidationError):
        stats.Margins(judge_margin=0.1)
