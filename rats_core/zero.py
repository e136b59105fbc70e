"""ZeRO-3 helpers: reading and writing partitioned parameters without gathering a whole model at once.

Under ZeRO-3 each rank holds a 1/N shard of every parameter (``param.ds_tensor``); ``param.data`` is
an empty placeholder except inside a gather. These helpers gather a few tensors at a time, so saving
or loading a checkpoint never needs more than one chunk of full tensors on a device.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

#: tensors gathered together when saving/loading; bounded so peak memory is one chunk, not the model
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


def load_partitioned(module: nn.Module, tensors: dict[str, torch.Tensor], names: Sequence[str],
                     *, chunk: int = CHUNK) -> None:
    """Copy full tensors (read on every rank, or at least on rank 0) into partitioned parameters:
    rank 0 writes each gathered chunk, which is then re-partitioned to every rank."""
    import deepspeed
    import torch.distributed as dist

    params = dict(module.named_parameters())
    rank = dist.get_rank() if dist.is_initialized() else 0
    for part in _chunks(list(names), chunk):
        with deepspeed.zero.GatheredParameters([params[n] for n in part], modifier_rank=0):
            if rank == 0:
                with torch.no_grad():
                    for n in part:
                        params[n].copy_(tensors[n].to(params[n].dtype))


def full_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Each parameter's full shape, partitioned or not."""
    return {n: tuple(p.ds_shape if is_partitioned(p) else p.shape) for n, p in module.named_parameters()}


def local_shards(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What this rank holds of each parameter: its shard, or the whole tensor when the parameter is
    not partitioned or is one of ZeRO-3's persistent (small, replicated) parameters."""
    return [p.ds_tensor if is_partitioned(p) and not p.ds_persist else p for p in params]


def ema_targets(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (teacher, student) tensors for a shard-wise EMA update on this rank.

    Both networks are partitioned alike by DeepSpeed (same shapes, same ranks), so shard ``i`` of a
    teacher parameter pairs with shard ``i`` of the student's; persistent parameters pair their full
    tensors. Where only one side is persistent (model_persistence_threshold can split them) the
    student's slice for this rank's teacher shard is cut from its full tensor, or the full student
    tensor is gathered for a persistent teacher parameter."""
    t_out: list[torch.Tensor] = []
    s_out: list[torch.Tensor] = []
    for t, s in zip(teacher, student):
        t_local = local_shards([t])[0]
        s_local = local_shards([s])[0]
        if t_local.shape == s_local.shape:
            t_out.append(t_local)
            s_out.append(s_local)
        elif t_local is not t:  # teacher sharded, student whole: this rank's slice of the student
            n = t_local.numel()
            start = n * _rank()
            flat = s.detach().reshape(-1)[start : start + n]
            if flat.numel() < n:  # the last shard is padded
                flat = torch.cat([flat, flat.new_zeros(n - flat.numel())])
            t_out.append(t_local)
            s_out.append(flat.view_as(t_local))
        else:  # teacher whole (persistent), student sharded: gather the student's full tensor
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
