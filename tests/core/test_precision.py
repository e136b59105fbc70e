"""The precision policy (rats_core/training/precision.py), rule by rule, on tiny modules.

The end-to-end checks (a bf16 run stores float32 masters, evaluation follows ``train.precision``) are in
tests/test_trainer.py and tests/test_configurations.py; these are the fast unit checks of each rule.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rats_core.training import precision


def test_compute_dtypes():
    assert precision.compute_dtype("fp32") is None
    assert precision.compute_dtype("bf16") is torch.bfloat16
    with pytest.raises(KeyError):
        precision.compute_dtype("fp16")  # not a train.precision value


@pytest.mark.parametrize("train, chosen, expected", [
    ("bf16", "train", "bf16"), ("fp32", "train", "fp32"),  # eval.precision: train follows train.precision
    ("bf16", "fp32", "fp32"), ("fp32", "bf16", "bf16"),    # an explicit choice wins
])
def test_eval_precision(train, chosen, expected):
    cfg = SimpleNamespace(train=SimpleNamespace(precision=train), eval=SimpleNamespace(precision=chosen))
    assert precision.eval_precision(cfg) == expected


def test_eval_precision_without_an_eval_section_follows_training():
    assert precision.eval_precision(SimpleNamespace(train=SimpleNamespace(precision="bf16"))) == "bf16"
    assert precision.eval_precision(SimpleNamespace(train=SimpleNamespace(precision="fp32"),
                                                    eval=SimpleNamespace())) == "fp32"


def test_autocast_bf16_computes_matmuls_in_bf16_and_fp32_leaves_them_alone():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision.autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (a @ b).dtype == torch.bfloat16
    with precision.autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def _mixed() -> nn.Module:
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2), nn.Linear(2, 1)).to(torch.bfloat16)
    m[1].requires_grad_(False)  # a frozen base layer keeps its dtype
    m[2].float()  # already float32: not reported as changed
    m.register_buffer("steps", torch.zeros((), dtype=torch.int64))
    return m


def test_upcast_trainable_stores_trainable_tensors_in_float32_and_nothing_else():
    m = _mixed()
    before = m[0].weight.detach().clone()
    changed = precision.upcast_trainable(m)
    assert changed == ["0.weight", "0.bias"]
    assert m[0].weight.dtype == m[0].bias.dtype == torch.float32
    assert torch.equal(m[0].weight, before.float())  # the same values, exactly
    assert m[0].weight.requires_grad and isinstance(m[0].weight, nn.Parameter)
    assert m[1].weight.dtype == m[1].bias.dtype == torch.bfloat16  # frozen: as loaded
    assert m[2].weight.dtype == torch.float32 and m.steps.dtype == torch.int64
    assert precision.upcast_trainable(m) == []  # idempotent


def test_upcast_trainable_skips_integer_parameters():
    m = nn.Module()
    m.count = nn.Parameter(torch.zeros(2, dtype=torch.int32), requires_grad=False)
    m.w = nn.Parameter(torch.zeros(2, dtype=torch.float16))
    assert precision.upcast_trainable(m) == ["w"]
    assert m.count.dtype == torch.int32 and m.w.dtype == torch.float32


def test_dtype_report_counts_tensors_by_dtype_and_kind():
    m = _mixed()
    assert precision.dtype_report(m) == {"trainable": {"bfloat16": 2, "float32": 2}, "frozen": {"bfloat16": 2}}
    precision.upcast_trainable(m)
    assert precision.dtype_report(m) == {"trainable": {"float32": 4}, "frozen": {"bfloat16": 2}}
    assert precision.dtype_report(nn.Module()) == {"trainable": {}, "frozen": {}}


@pytest.fixture
def tf32_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_enable_tf32_sets_both_cuda_flags_and_leaves_the_cpu_alone(tf32_flags):
    # setting the flags needs no GPU: they are read when a CUDA matmul runs
    precision.enable_tf32(torch.device("cuda"), True)
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    precision.enable_tf32(torch.device("cuda"), False)
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    precision.enable_tf32(torch.device("cpu"), True)  # not CUDA: nothing to set
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    precision.enable_tf32(torch.device("cuda", 0), 1)  # truthy values are stored as bools
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True


def test_autocast_on_cuda_is_bf16_not_cudas_fp16_default():
    import warnings

    with warnings.catch_warnings():  # a CPU-only torch warns that CUDA autocast is disabled
        warnings.simplefilter("ignore")
        ctx = precision.autocast(torch.device("cuda"), "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
