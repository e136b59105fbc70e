"""ZeRO-3 helpers: reading and writing partitioned parameters without gathering a whole model at once.

Under ZeRO-3 each rank holds a 1/N shard of every parameter (``param.ds_tensor``); ``param.data`` is
an empty placeholder except inside a gather. These helpers gather a few tensors at a time, so saving
or loading a checkpoint never needs more than one chunk of full tensors on a device.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

#: tensors gathered together when saving; bounded so peak memory is one chunk, not the model
CHUNK = 16


def is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def gathered_state(module: nn.Module, names: Sequence[str], *, rank0_only: bool = True,
                   chunk: int = CHUNK) -> dict[str, torch.Tensor]:
    """Full CPU copies of ``module``'s parameters ``names`` (every rank must call it; with
    ``rank0_only`` the other ranks return ``{}``). Works for unpartitioned modules too."""
    import torch.distributed as dist

    params = dict(module.named_parameters())
    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    if not any(is_partitioned(params[n]) for n in names):
        return {n: params[n].detach().clone().cpu() for n in names} if rank == 0 or not rank0_only else {}
    import deepspeed

    for part in _chunks(list(names), chunk):
        with deepspeed.zero.GatheredParameters([params[n] for n in part], modifier_rank=None):
            if rank == 0 or not rank0_only:
                for n in part:
                    out[n] = params[n].detach().clone().cpu()
    return out


def load_partitioned(module: nn.Module, tensors: dict[str, torch.Tensor], names: Sequence[str]) -> None:
    """Copy full tensors, read on every rank, into ``module``'s parameters ``names``, partitioned or not.

    Each rank writes its own shard from the full tensor (no collective, nothing gathered), and the whole
    tensor too where the parameter is currently whole on this rank (ZeRO-3's persistent small parameters
    once they have been used, or an unpartitioned module)."""
    params = dict(module.named_parameters())
    rank = _rank()
    with torch.no_grad():
        for n in names:
            p = params[n]
            t = tensors[n].to(p.dtype)
            if not is_partitioned(p):
                p.copy_(t.to(p.device))
                continue
            shard = p.ds_tensor
            flat = t.reshape(-1)[shard.numel() * rank : shard.numel() * (rank + 1)]
            shard.data.view(-1)[: flat.numel()].copy_(flat.to(shard.device))
            if p.data.numel() == p.ds_numel:
                p.data.copy_(t.to(p.device).view_as(p.data))


def local_state(module: nn.Module, names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """What this rank holds of ``module``'s parameters ``names``, copied: ``(shard, whole)`` — its ZeRO-3
    shard and, where the parameter is whole on this rank right now, the whole tensor (else None); for an
    unpartitioned parameter ``(tensor, None)``. 1/N of the model per rank (plus the small persistent
    parameters), where a gathered copy would be the whole model on every rank."""
    params = dict(module.named_parameters())
    out = {}
    for n in names:
        p = params[n]
        if not is_partitioned(p):
            out[n] = (p.detach().clone(), None)
        else:
            whole = p.detach().clone() if _whole_now(p) and p.data.data_ptr() != p.ds_tensor.data_ptr() else None
            out[n] = (p.ds_tensor.detach().clone(), whole)
    return out


def restore_local(module: nn.Module, saved: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Put back what :func:`local_state` copied (no collective: each rank restores its own part)."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for n, (shard, whole) in saved.items():
            p = params[n]
            if not is_partitioned(p):
                p.copy_(shard)
                continue
            p.ds_tensor.data.copy_(shard)
            if whole is not None and _whole_now(p):
                p.data.copy_(whole)


def full_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Each parameter's full shape, partitioned or not."""
    return {n: tuple(p.ds_shape if is_partitioned(p) else p.shape) for n, p in module.named_parameters()}


def _whole_now(p: torch.Tensor) -> bool:
    """A partitioned parameter whose full tensor is present on this rank right now (ZeRO-3 keeps small
    "persistent" parameters whole after their first use)."""
    return p.data.numel() == p.ds_numel and p.ds_numel > 0


def ema_targets(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (teacher, student) tensors for an EMA update on this rank.

    Unpartitioned: the parameters themselves. Partitioned (ZeRO-3, teacher and student partitioned
    alike — same shapes, same ranks): this rank's shards, which are what every gather reads; and where
    the teacher's parameter is also whole on this rank (a persistent one), its full tensor too, paired
    with the student's full tensor (gathered if the student's is not whole), so the copy in use and the
    shard never disagree."""
    t_out: list[torch.Tensor] = []
    s_out: list[torch.Tensor] = []
    for t, s in zip(teacher, student):
        if not is_partitioned(t) and not is_partitioned(s):
            t_out.append(t)
            s_out.append(s)
            continue
        if not (is_partitioned(t) and is_partitioned(s)) or t.ds_tensor.numel() != s.ds_tensor.numel():
            raise RuntimeError("teacher and student are not partitioned alike; the EMA needs both under ZeRO-3")
        t_out.append(t.ds_tensor)
        s_out.append(s.ds_tensor)
        if _whole_now(t) and t.data.data_ptr() != t.ds_tensor.data_ptr():  # one rank: they are one storage
            if _whole_now(s):
                full = s
            else:
                import deepspeed

                with deepspeed.zero.GatheredParameters([s], modifier_rank=None):
                    full = s.detach().clone()
            t_out.append(t)
            s_out.append(full)
    return t_out, s_out


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def shard_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes of parameters this rank holds: ``{"local": ..., "full": ...}`` (for tests and benchmarks)."""
    local = full = 0
    for p in module.parameters():
        size = p.element_size()
        full += (p.ds_numel if is_partitioned(p) else p.numel()) * size
        # a partitioned parameter's data is empty unless gathered or persistent (then it is whole)
        local += ((p.ds_tensor.numel() + p.data.numel()) if is_partitioned(p) else p.numel()) * size
    return {"local": local, "full": full}
