"""Built-in horizon schedules (plugins/horizons.py) and validate_horizons (rats_core/method/shaping.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rats_core.errors import ConfigError, PluginError
from rats_core.registry.plugins import get_registry
from rats_core.method.shaping import validate_horizons
from rats_plugins.horizons import all_steps, explicit, first, last


def sig(k: int) -> torch.Tensor:
    """A student schedule with K = k steps (values do not matter to the built-ins)."""
    return torch.linspace(1.0, 0.0, k + 1)


def test_all_uniform_and_late():
    assert all_steps()(sig(4)) == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)]
    assert all_steps("late")(sig(4)) == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0)]
    assert all_steps()(sig(1)) == [(0, 1.0)]


def test_last_n():
    assert last()(sig(4)) == [(3, 1.0)]
    assert last(n=2)(sig(4)) == [(2, 1.0), (3, 1.0)]
    assert last(n=9)(sig(3)) == [(0, 1.0), (1, 1.0), (2, 1.0)]  # n > K: every step


def test_first_n():
    assert first()(sig(4)) == [(0, 1.0)]
    assert first(n=3)(sig(4)) == [(0, 1.0), (1, 1.0), (2, 1.0)]
    assert first(n=9)(sig(2)) == [(0, 1.0), (1, 1.0)]


def test_explicit_negative_indices_and_weights():
    h = explicit(steps=[0, -1], weights=[0.5, 2.0])
    assert h(sig(4)) == [(0, 0.5), (3, 2.0)]
    assert explicit(steps=[-2])(sig(4)) == [(2, 1.0)]
    # the same step twice (here 0 and -1 with K = 1): weights add up
    assert explicit(steps=[0, -1], weights=[0.5, 2.0])(sig(1)) == [(0, 2.5)]


def test_explicit_errors():
    with pytest.raises(ValueError, match="2 steps but 1 weights"):
        explicit(steps=[0, 1], weights=[1.0])
    with pytest.raises(ValueError, match="positive"):
        explicit(steps=[0], weights=[0.0])
    with pytest.raises(ValueError, match="outside the student's 2 steps"):
        explicit(steps=[5])(sig(2))
    with pytest.raises(ValueError, match="outside"):
        explicit(steps=[-3])(sig(2))


def test_explicit_errors_through_the_registry_name_the_key():
    reg = get_registry()
    with pytest.raises(ConfigError, match=r"horizons\.steps: required option is missing"):
        reg.build("horizons", "explicit", {}, "horizons")
    with pytest.raises(ConfigError, match=r"horizons: 2 steps but 1 weights"):
        reg.build("horizons", "explicit", {"steps": [0, 1], "weights": [1.0]}, "horizons")
    with pytest.raises(ConfigError, match=r"horizons\.weights\.0"):
        reg.build("horizons", "explicit", {"steps": [0], "weights": [-1.0]}, "horizons")
    with pytest.raises(ConfigError, match=r"horizons\.n"):
        reg.build("horizons", "last", {"n": 0}, "horizons")
    with pytest.raises(ConfigError, match=r"horizons\.weighting"):
        reg.build("horizons", "all", {"weighting": "early"}, "horizons")


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize(
    "factory", [all_steps, lambda: all_steps("late"), last, lambda: last(3), first, lambda: first(2)]
)
def test_builtins_always_valid(factory, k):
    out = factory()(sig(k))
    assert validate_horizons(out, k) == out


def test_validate_horizons_accepts_and_normalises():
    assert validate_horizons([(torch.tensor(1), 2)], 3) == [(1, 2.0)]
    assert validate_horizons([(0, 0.0), (2, 1.0)], 3) == [(0, 0.0), (2, 1.0)]


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "need unique steps"),
        ([(3, 1.0)], r"steps \[3\]; need unique steps in 0\.\.2"),
        ([(-1, 1.0)], "need unique steps"),
        ([(0, 1.0), (0, 1.0)], "need unique steps"),
        ([(0, -1.0), (1, 2.0)], "need >= 0"),
        ([(0, 0.0)], "sum > 0"),
        ([(0, math.nan)], "need >= 0"),
        ([(0, math.inf)], "need >= 0"),
        ([0, 1], r"must return \[\(step, weight\)"),
        ([("a", 1.0)], r"must return \[\(step, weight\)"),
        (None, r"must return \[\(step, weight\)"),
    ],
)
def test_validate_horizons_rejects_bad_plugin_output(bad, match):
    with pytest.raises(PluginError, match=match) as exc:
        validate_horizons(bad, 3, name="my-schedule")
    assert "my-schedule" in str(exc.value)
