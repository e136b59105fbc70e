"""Process-group setup: one CPU process needs no launcher; `deepspeed`/`torchrun` launches just work."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Initialise (once) the process group DeepSpeed needs and return this process's place in it.

    Without a launcher (no RANK/WORLD_SIZE in the environment), a one-rank group is created over
    an in-memory store. CPU runs use gloo, CUDA runs nccl.
    """
    import deepspeed

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    backend = "gloo" if dev.type == "cpu" else "nccl"
    if dev.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory comm op (~30 s) on first start; it only speeds
        # up several CPU processes on one machine, so skip it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized() and "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        # No launcher: a one-rank group over an in-memory store. No port is opened and nothing is
        # written to os.environ, so subprocesses (and a second run) never inherit a stale address.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine insists on reading it
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    rank = dist.get_rank()
    world = dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (signals, non-finite losses)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    return flag


def broadcast_object(obj, src: int = 0):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def ranks_text(ranks: int) -> str:
    """``1 rank``, ``2 ranks``: how banners and reports name the world size."""
    return f"{ranks} rank" + ("" if ranks == 1 else "s")
