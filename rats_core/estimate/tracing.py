"""The activation trace: the bytes autograd saves for backward while a function runs on meta tensors,
attention counted as a fused kernel keeps it, gradient checkpointing followed as the trainer does it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------- the activation trace


class SavedTensorCounter:
    """Adds up the bytes autograd saves for backward, each storage once, parameters excluded.

    Use :meth:`unit` around a gradient-checkpointed call: what it saves is not kept (only its inputs
    are), but its total is remembered as the recompute peak of the backward.
    """

    def __init__(self, exclude: list[Tensor]):
        self.exclude = {self._key(p) for p in exclude}
        self.stack: list[dict[Any, int]] = [{}]
        self.max_unit = 0

    @staticmethod
    def _key(t: Tensor) -> Any:
        try:
            s = t.untyped_storage()
            return (s._cdata, t.device.type)
        except (RuntimeError, NotImplementedError):
            return (id(t), t.device.type)

    def _pack(self, t: Tensor) -> Tensor:
        key = self._key(t)
        if key not in self.exclude:
            try:
                nbytes = t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):
                nbytes = t.numel() * t.element_size()
            self.stack[-1][key] = max(self.stack[-1].get(key, 0), nbytes)
        return t

    @property
    def total(self) -> int:
        return sum(self.stack[0].values())

    @contextlib.contextmanager
    def active(self) -> Iterator["SavedTensorCounter"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    def checkpoint(self, module: Callable, *args: Any, **kwargs: Any) -> Any:
        """Drop-in for diffusers' ``_gradient_checkpointing_func``: a checkpointed unit."""
        self.stack.append({})
        out = module(*args, **kwargs)
        unit = self.stack.pop()
        self.max_unit = max(self.max_unit, sum(unit.values()))
        for a in list(args) + list(kwargs.values()):  # checkpoint keeps its tensor inputs
            if isinstance(a, Tensor):
                self._pack(a)
        return out


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel keeps for backward: q, k, v, the output and the fp32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, out_shape):
        out = q.new_empty(out_shape)
        lse = torch.empty(out_shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the trace never runs backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    out_shape = tuple(query.shape[:-1]) + (value.shape[-1],)
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return _FusedAttention.apply(query, key, value, out_shape)
    return query.new_empty(out_shape)


@contextlib.contextmanager
def _trace_patches() -> Iterator[None]:
    """Fused attention during a trace (the meta kernel of SDPA would keep the full attention matrix)."""
    import torch.nn.functional as F

    old = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = old


@dataclasses.dataclass
class Trace:
    #: bytes saved for backward by one call (checkpointed units counted by their inputs only)
    saved: int
    #: the largest checkpointed unit's saved bytes (recomputed in backward), 0 without checkpointing
    max_unit: int
    #: bytes of the call's tensor inputs (what an outer checkpoint keeps)
    inputs: int
    #: the largest tensor any submodule returned (for the no-gradient working set)
    largest_output: int


def trace(fn: Callable[[], Any], modules: list[nn.Module], checkpointed: list[nn.Module] = (),
          inputs: list[Tensor] = ()) -> Trace:
    """Run ``fn`` once (on meta tensors, or small real ones) and measure what it keeps for backward."""
    params = [p for m in modules for p in m.parameters()] + [b for m in modules for b in m.buffers()]
    counter = SavedTensorCounter(params)
    largest = [0]

    def hook(_m, _i, out):
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [h for m in modules for h in (mod.register_forward_hook(hook) for mod in m.modules())]
    old_funcs = []
    for m in checkpointed:
        for sub in m.modules():
            if hasattr(sub, "gradient_checkpointing") and getattr(sub, "gradient_checkpointing", False):
                old_funcs.append((sub, getattr(sub, "_gradient_checkpointing_func", None)))
                sub._gradient_checkpointing_func = counter.checkpoint
    try:
        with _trace_patches(), counter.active(), torch.enable_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
        for sub, f in old_funcs:
            sub._gradient_checkpointing_func = f
    return Trace(counter.total, counter.max_unit, sum(t.numel() * t.element_size() for t in inputs), largest[0])
