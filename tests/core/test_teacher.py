"""The EMA / frozen teacher (rats_core/method/teacher.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rats_core.method.teacher import Teacher, ema_update, make_teacher


def test_ema_update_by_hand():
    t = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    s = [torch.tensor([3.0, 6.0]), torch.tensor([[10.0]])]
    ema_update(t, s, decay=0.9)
    assert t[0].tolist() == pytest.approx([1.2, 2.4])  # 0.9·1 + 0.1·3, 0.9·2 + 0.1·6
    assert t[1].item() == pytest.approx(1.0)
    ema_update(t, s, decay=0.9)
    assert t[0].tolist() == pytest.approx([0.9 * 1.2 + 0.3, 0.9 * 2.4 + 0.6])
    assert s[0].tolist() == [3.0, 6.0]  # the student is not touched


def test_ema_update_extremes_and_low_precision():
    t, s = [torch.tensor([1.0])], [torch.tensor([5.0])]
    ema_update(t, s, decay=1.0)
    assert t[0].item() == 1.0
    ema_update(t, s, decay=0.0)
    assert t[0].item() == 5.0
    # a bf16 teacher: μ = 0.75 tells μ from 1 − μ (0.75·1 + 0.25·3 = 1.5; swapped, 2.5), both exact in bf16
    tb = [torch.tensor([1.0], dtype=torch.bfloat16)]
    ema_update(tb, [torch.tensor([3.0])], decay=0.75)
    assert tb[0].dtype == torch.bfloat16 and tb[0].item() == 1.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ema_update_follows_the_recursion_by_hand_in_every_dtype(dtype):
    """θ_T ← μ·θ_T + (1 − μ)·θ_S with μ = 0.75 over three steps, the values worked out by hand (all exact in
    bf16 and fp16), for a teacher of each dtype beside a float32 one."""
    t = [torch.tensor([1.0, -2.0], dtype=dtype), torch.tensor([8.0])]
    steps = [  # student, then the teacher after the update
        ([3.0, 2.0], [1.5, -1.0], 6.0),          # 0.75·1 + 0.25·3, 0.75·(−2) + 0.25·2, 0.75·8
        ([5.0, -6.0], [2.375, -2.25], 4.5),      # 1.125 + 1.25, −1.5 − 1.5
        ([-1.0, 0.0], [1.53125, -1.6875], 3.375),
    ]
    for student, teacher, other in steps:
        ema_update(t, [torch.tensor(student), torch.tensor([0.0])], 0.75)
        assert t[0].dtype == dtype and t[0].tolist() == teacher
        assert t[1].dtype == torch.float32 and t[1].tolist() == [other]


def test_ema_update_computes_a_low_precision_teacher_in_float32_and_rounds_once():
    """0.75·1.2890625 + 0.25·(−2.5625) = 0.326171875 exactly, and that is a bf16 number; computed in bf16
    arithmetic (each product rounded to bf16, then the sum) it comes out as 0.328125."""
    t = [torch.tensor([1.2890625], dtype=torch.bfloat16)]
    ema_update(t, [torch.tensor([-2.5625])], decay=0.75)
    assert 0.75 * 1.2890625 + 0.25 * -2.5625 == 0.326171875
    assert t[0].dtype == torch.bfloat16 and t[0].item() == 0.326171875
    in_bf16 = torch.tensor([1.2890625], dtype=torch.bfloat16) * 0.75 + torch.tensor([-2.5625], dtype=torch.bfloat16) * 0.25
    assert in_bf16.item() == 0.328125  # what the float32 computation avoids


def test_ema_update_works_on_parameters_that_require_grad():
    t = [nn.Parameter(torch.tensor([1.0]))]
    s = [nn.Parameter(torch.tensor([3.0]))]
    ema_update(t, s, decay=0.5)
    assert t[0].item() == 2.0 and t[0].grad_fn is None


def test_ema_update_length_mismatch():
    with pytest.raises(ValueError, match="2 teacher and 1 student"):
        ema_update([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], 0.9)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _shift(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(value)


def test_make_teacher_is_an_independent_frozen_copy():
    student = _net().train()
    teacher = make_teacher(student)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters()) and student.training
    _shift(student, 1.0)
    assert not torch.equal(teacher[0].weight, student[0].weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_teacher_tracks_the_student(dtype):
    student = _net().to(dtype)
    teacher = Teacher(student, kind="ema", decay=0.75)
    before = {n: p.detach().float().clone() for n, p in teacher.module.named_parameters()}
    _shift(student, 1.0)
    teacher.update(student)
    moved = dict(student.named_parameters())
    for n, p in teacher.module.named_parameters():
        # 0.75·θ + 0.25·θ_S (swapped weights would land near θ + 0.75, not θ + 0.25), rounded once to the dtype
        assert p.dtype == dtype
        assert torch.allclose(p.float(), (0.75 * before[n] + 0.25 * moved[n].detach().float()).to(dtype).float()), n
        assert torch.allclose(p.float(), before[n] + 0.25, atol=0.02 if dtype == torch.bfloat16 else 1e-6), n


def test_frozen_teacher_never_moves():
    student = _net()
    teacher = Teacher(student, kind="frozen", decay=0.0)
    before = {n: p.detach().clone() for n, p in teacher.module.named_parameters()}
    _shift(student, 1.0)
    teacher.update(student)
    for n, p in teacher.module.named_parameters():
        assert torch.equal(p, before[n])


def test_only_trainable_parameters_are_tracked():
    """LoRA-like: the base weights are frozen in the student, only adapters train."""
    student = _net()
    student[0].weight.requires_grad_(False)
    student[2].requires_grad_(False)
    teacher = Teacher(student, kind="ema", decay=0.5)
    assert teacher.names == ["0.bias"]
    assert list(teacher.state_dict()) == ["0.bias"]
    frozen_before = teacher.module[0].weight.detach().clone()
    bias_before = teacher.module[0].bias.detach().clone()
    _shift(student, 2.0)  # even if frozen student weights change, the teacher only follows the trained ones
    teacher.update(student)
    assert torch.equal(teacher.module[0].weight, frozen_before)
    assert torch.allclose(teacher.module[0].bias, bias_before + 1.0)


def test_state_dict_round_trip():
    student = _net()
    a = Teacher(student, kind="ema", decay=0.5)
    _shift(student, 1.0)
    a.update(student)
    saved = {k: v.clone() for k, v in a.state_dict().items()}
    assert all(not v.requires_grad for v in a.state_dict().values())

    b = Teacher(_net(), kind="ema", decay=0.5)  # a fresh run resuming from `saved`
    assert not torch.equal(b.module[0].weight, a.module[0].weight)
    b.load_state_dict(saved)
    for n in a.names:
        assert torch.equal(dict(b.module.named_parameters())[n], dict(a.module.named_parameters())[n])

    with pytest.raises(KeyError, match="0.weight"):
        b.load_state_dict({k: v for k, v in saved.items() if k != "0.weight"})


def test_load_state_dict_casts_to_the_teacher_dtype():
    student = _net().to(torch.bfloat16)
    t = Teacher(student)
    t.load_state_dict({n: torch.ones_like(p, dtype=torch.float32) for n, p in student.named_parameters()})
    assert all(p.dtype == torch.bfloat16 and torch.all(p == 1) for p in t.module.parameters())


def test_unknown_kind():
    with pytest.raises(ValueError, match="'ema' or 'frozen'"):
        Teacher(_net(), kind="average")


def test_make_teacher_shares_only_frozen_tensors_and_only_when_asked():
    student = _net()
    student[0].requires_grad_(False)  # a LoRA run's base weights
    copied = make_teacher(student)  # the default: an independent copy of everything
    assert all(a is not b and a.data_ptr() != b.data_ptr() for a, b in zip(copied.parameters(), student.parameters()))
    shared = make_teacher(student, share_frozen=True)
    assert shared[0].weight is student[0].weight and shared[0].bias is student[0].bias
    assert shared[2].weight is not student[2].weight and shared[2].weight.data_ptr() != student[2].weight.data_ptr()
    assert not shared[2].weight.requires_grad and student[2].weight.requires_grad  # the copies are frozen
    assert torch.equal(shared[2].weight, student[2].weight)
    t = Teacher(student, share_frozen=True)
    assert t.module[0].weight is student[0].weight and t.module[2].weight is not student[2].weight
    assert Teacher(student).module[0].weight is not student[0].weight


def test_teacher_defaults_and_missing_names():
    t = Teacher(_net())
    assert (t.kind, t.decay) == ("ema", 0.99)
    with pytest.raises(KeyError, match=r"teacher state lacks \['0.weight', '0.bias', '2.weight'\]"):
        t.load_state_dict({})


def test_teacher_update_follows_a_new_student_module():
    """The student's tensors are looked up once per student module; a different module is looked up anew."""
    student = _net()
    t = Teacher(student, decay=0.5)
    t.update(student)
    other = _net()
    _shift(other, 2.0)
    t.update(other)
    for (n, p), q in zip(t.module.named_parameters(), student.parameters()):
        assert torch.allclose(p, q + 1.0), n  # 0.5·θ + 0.5·(θ + 2)


def test_teacher_cache_counts_hits_and_misses_and_drops_the_images():
    from rats_core.method.objective import TeacherOutput
    from rats_core.method.teacher import TeacherCache

    cache = TeacherCache()
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)
    assert cache.get(3) is None and (cache.hits, cache.misses) == (0, 1)
    out = TeacherOutput({0: torch.ones(1)}, torch.zeros(1), torch.ones(1, 3, 2, 2), torch.ones(1), {})
    cache.put(3, out)
    got = cache.get(3)
    assert got.images is None and got.x0 is out.x0 and got.final is out.final and got.reward is out.reward
    assert out.images is not None  # the caller's output is untouched
    assert (len(cache), cache.hits, cache.misses) == (1, 1, 1)
    assert cache.get(4) is None and (cache.hits, cache.misses) == (1, 2)
    cache.get(3)
    assert (cache.hits, cache.misses) == (2, 2)
    cache.clear()
    assert len(cache) == 0 and cache.get(3) is None
