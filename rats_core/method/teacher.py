"""The teacher: an EMA of the student (the paper) or a frozen copy of the base model."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Hashable, Iterable

import torch
from torch import nn

from rats_core.parallel.zero import ema_targets


def make_teacher(student: nn.Module, share_frozen: bool = False) -> nn.Module:
    """A frozen copy of ``student`` in eval mode (no gradient, no optimizer state).

    ``share_frozen``: parameters the student does not train (a LoRA run's base weights) are shared
    with the student instead of copied, so the teacher costs only the trainable tensors.
    """
    memo: dict[int, object] = {}
    if share_frozen:
        for p in student.parameters():
            if not p.requires_grad:
                memo[id(p)] = p
    teacher = copy.deepcopy(student, memo)
    for p in teacher.parameters():
        if id(p) not in memo:
            p.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher_params: Iterable[torch.Tensor], student_params: Iterable[torch.Tensor], decay: float) -> None:
    """``θ_T ← μ·θ_T + (1 − μ)·θ_S`` in place, computed in float32 for low-precision weights."""
    t_list = list(teacher_params)
    s_list = list(student_params)
    if len(t_list) != len(s_list):
        raise ValueError(f"EMA over {len(t_list)} teacher and {len(s_list)} student tensors")
    # float32 tensors (the usual teacher) in two fused multi-tensor ops instead of two kernels per
    # tensor: a UNet has hundreds of parameter tensors, and per-tensor launches dominated the EMA.
    fp32 = [(t, s) for t, s in zip(t_list, s_list) if t.dtype == torch.float32]
    if fp32:
        ts = [t.detach() for t, _ in fp32]
        ss = [s.detach() if s.dtype == torch.float32 else s.detach().float() for _, s in fp32]
        torch._foreach_mul_(ts, decay)
        torch._foreach_add_(ts, ss, alpha=1 - decay)
    for t, s in zip(t_list, s_list):
        if t.dtype != torch.float32:
            t.copy_((t.float() * decay + s.detach().float() * (1 - decay)).to(t.dtype))


class Teacher:
    """Holds the teacher network and keeps it up to date.

    ``kind="ema"``: after every optimizer step the trainable parameters move towards the student's.
    ``kind="frozen"``: the base model as it was before training, never updated.
    Only the student's trainable parameters are tracked (with LoRA: the adapter weights), in the
    dtype the student stores them in — float32 under the trainer's precision policy.
    """

    def __init__(self, student: nn.Module, kind: str = "ema", decay: float = 0.99, share_frozen: bool = False):
        if kind not in ("ema", "frozen"):
            raise ValueError(f"teacher kind must be 'ema' or 'frozen', got {kind!r}")
        self.kind = kind
        self.decay = decay
        self.module = make_teacher(student, share_frozen=share_frozen)
        self.names = [n for n, p in student.named_parameters() if p.requires_grad]
        params = dict(self.module.named_parameters())
        self._params = [params[n] for n in self.names]
        self._student_ref: nn.Module | None = None
        self._student_params: list[torch.Tensor] = []

    def update(self, student: nn.Module) -> None:
        if self.kind != "ema":
            return
        # The student's tensors are looked up by name once per student module, not every step
        # (named_parameters() walks every submodule; ZeRO-3 gathers fill the same Parameters).
        if self._student_ref is not student:
            s_params = dict(student.named_parameters())
            self._student_params = [s_params[n] for n in self.names]
            self._student_ref = student
        # Under ZeRO-3 both networks are partitioned alike (same shapes, same ranks), so each rank
        # updates its own shard and nothing is gathered.
        ema_update(*ema_targets(self._params, self._student_params), self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tracked tensors (what changes during training)."""
        return {n: p.detach() for n, p in zip(self.names, self._params)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"teacher state lacks {missing[:3]}")
        for n, p in zip(self.names, self._params):
            p.copy_(state[n].to(p.dtype))


class TeacherCache:
    """A frozen teacher's rollouts, kept per data batch and reused when the batch comes back.

    Only sound when the teacher never changes (``teacher.kind: frozen``) and batches repeat
    (``data.noise_pool``); the config enforces both. The decoded images are not kept.
    """

    def __init__(self) -> None:
        self._store: dict[Hashable, Any] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        out = self._store.get(key)
        if out is None:
            self.misses += 1
        else:
            self.hits += 1
        return out

    def put(self, key: Hashable, out: Any) -> None:
        self._store[key] = dataclasses.replace(out, images=None)

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)
