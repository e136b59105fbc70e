"""Built-in gates (plugins/gates.py), checked against hand-computed values.

The "no gradient through the gate" property of the objective is tested in test_objective.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from rats_core.errors import ConfigError
from rats_core.registry.plugins import get_registry
from rats_plugins.gates import constant, hard, sigmoid


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_sigmoid_direction_and_tau():
    gate = sigmoid(tau=0.5)
    r_t = torch.tensor([1.0, 0.3, 0.0, 2.0])
    r_s = torch.tensor([0.0, 0.3, 1.0, 1.9])
    g = gate(r_t, r_s)
    assert g.shape == (4,)
    # teacher better -> > 0.5; equal -> exactly 0.5; student better -> < 0.5 (the paper's text)
    assert g[0] > 0.5 and g[1] == 0.5 and g[2] < 0.5
    expected = [_sig(2.0), 0.5, _sig(-2.0), _sig(0.2)]
    assert g.tolist() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_tau_sharpens():
    r_t, r_s = torch.tensor([0.2]), torch.tensor([0.0])
    soft, sharp = sigmoid(tau=10.0)(r_t, r_s), sigmoid(tau=0.01)(r_t, r_s)
    assert soft.item() == pytest.approx(_sig(0.02), abs=1e-6)
    assert sharp.item() == pytest.approx(1.0, abs=1e-6)  # sigmoid(20)


def test_sigmoid_is_per_sample():
    gate = sigmoid(tau=1.0)
    r_t = torch.tensor([0.0, 1.0, 2.0])
    r_s = torch.zeros(3)
    g = gate(r_t, r_s)
    assert g.tolist() == pytest.approx([0.5, _sig(1.0), _sig(2.0)], abs=1e-6)
    # changing one sample's rewards changes only that sample's gate
    r_t2 = r_t.clone()
    r_t2[1] = -5.0
    g2 = gate(r_t2, r_s)
    assert g2[0] == g[0] and g2[2] == g[2] and g2[1] < 0.01


def test_hard_with_margin():
    r_t = torch.tensor([1.0, 1.0, 1.0, 1.0])
    r_s = torch.tensor([0.0, 0.95, 1.0, 2.0])
    assert hard()(r_t, r_s).tolist() == [1.0, 1.0, 0.0, 0.0]  # strict: equal rewards -> 0
    assert hard(margin=0.1)(r_t, r_s).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert hard(margin=-1.5)(r_t, r_s).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert hard()(r_t, r_s).dtype == r_t.dtype


@pytest.mark.parametrize("c", [0.0, 0.3, 1.0])
def test_constant(c):
    r_t, r_s = torch.randn(5), torch.randn(5)
    g = constant(c=c)(r_t, r_s)
    assert g.shape == (5,) and torch.all(g == c)


def test_builtin_gates_are_registered_with_validated_options():
    reg = get_registry()
    assert {"sigmoid", "hard", "constant"} <= set(reg.names("gates"))
    assert reg.build("gates", "sigmoid", {"tau": 0.25}).tau == 0.25
    with pytest.raises(ConfigError, match=r"gate\.tau"):
        reg.build("gates", "sigmoid", {"tau": 0.0})
    with pytest.raises(ConfigError, match=r"gate\.c"):
        reg.build("gates", "constant", {"c": 1.5})
    with pytest.raises(ConfigError, match=r"gate\.tau: unknown option"):
        reg.build("gates", "hard", {"tau": 1.0})


def test_defaults():
    from rats_plugins.gates import ConstantGate, HardGate, SigmoidGate

    assert sigmoid().tau == 1.0 and SigmoidGate().tau == 1.0  # the paper's gate at τ = 1
    assert hard().margin == 0.0 and HardGate().margin == 0.0
    assert constant().c == 1.0 and ConstantGate().c == 1.0  # always distil
