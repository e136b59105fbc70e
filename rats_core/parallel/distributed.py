"""Process-group setup: one CPU process needs no launcher; `deepspeed`/`torchrun` launches just work.

Two bounds on waiting for other ranks: the process group's own timeout, set to ``train.collective_timeout``
once a run is set up (:func:`set_collective_timeout`; a training step's collectives), and a separate gloo
group whose timeout is ``train.save_timeout``, for the waits while rank 0 alone writes a checkpoint or the
export (:func:`barrier` with ``long=True``). Setup itself (rendezvous, loading models) runs under the long one.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: environment variables that give a process's rank on its machine, by launcher (torchrun and the
#: deepspeed launcher set LOCAL_RANK; srun SLURM_LOCALID; Open MPI's mpirun OMPI_COMM_WORLD_LOCAL_RANK)
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")

#: the gloo group of the long waits and its timeout (seconds), made by setup() on several ranks
_long_group: tuple[Any, float] | None = None


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    #: ranks on each node, in node order (a node: one machine, or one torchrun agent; node 0 holds rank 0)
    layout: tuple[int, ...] = (1,)
    #: this rank's node, an index into ``layout``
    node: int = 0
    #: this machine's name
    host: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return len(self.layout)

    @property
    def ranks_per_node(self) -> int | None:
        """Ranks on every node, or None when the nodes run different numbers of ranks."""
        return self.layout[0] if len(set(self.layout)) == 1 else None

    def layout_text(self) -> str:
        """``2 nodes × 4 ranks per node`` (``1 node × 2 ranks``, ``2 nodes with 4 + 2 ranks``)."""
        n = self.nodes
        nodes = f"{n} node" + ("" if n == 1 else "s")
        per = self.ranks_per_node
        if per is None:
            return f"{nodes} with {' + '.join(str(k) for k in self.layout)} ranks"
        return f"{nodes} × {per} rank" + ("" if per == 1 else "s") + " per node"


def node_key() -> str:
    """What tells this process's node from the others: the host name, and torchrun's agent index
    (GROUP_RANK) when set, so that two agents on one machine (a simulated two-node job) are two nodes."""
    return f"{socket.gethostname()}#{os.environ.get('GROUP_RANK', '')}"


def _local_rank_from_env() -> int | None:
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _elastic_relaunchable() -> bool:
    """Started by torchrun, whose agent keeps one store for every ``--max-restarts`` relaunch. torch's own
    env:// initialisation does not put the attempt in its keys (torch 2.13): a relaunched rank may read the
    address a rank of the attempt before published, fail to connect to the dead process, and waste the
    restart. rats then initialises the process group over a store prefixed by the attempt instead."""
    needed = ("TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and all(os.environ.get(k) for k in needed)


def setup(device: str | None = None, *, timeout: float | None = None, long_timeout: float | None = None) -> DistInfo:
    """Initialise (once) the process group DeepSpeed needs and return this process's place in it.

    Without a launcher (no RANK/WORLD_SIZE in the environment), a one-rank group is created over
    an in-memory store. CPU runs use gloo, CUDA runs nccl. ``timeout`` (seconds) bounds every collective
    from the start (default: torch's, 30 minutes); a run passes ``train.save_timeout`` here and lowers it
    to ``train.collective_timeout`` once set up. ``long_timeout``: the bound of ``barrier(long=True)``.
    Devices are placed by the rank on the machine (LOCAL_RANK, or srun's/mpirun's equivalent), never by
    the global rank; each rank's share of the data depends only on the global rank and the world size.
    """
    global _long_group
    import deepspeed

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    backend = "gloo" if dev.type == "cpu" else "nccl"
    if dev.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory comm op (~30 s) on first start; it only speeds
        # up several CPU processes on one machine, so skip it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    pg_timeout = {} if timeout is None else {"timeout": timedelta(seconds=timeout)}
    if not dist.is_initialized() and "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        # No launcher: a one-rank group over an in-memory store. No port is opened and nothing is
        # written to os.environ, so subprocesses (and a second run) never inherit a stale address.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **pg_timeout)
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine insists on reading it
    if not dist.is_initialized() and _elastic_relaunchable():
        store = dist.PrefixStore(f"rats/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}/",
                                 dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                               is_master=False, **pg_timeout))
        dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), **pg_timeout)
    local_rank = _local_rank_from_env()
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))  # srun/mpirun: DeepSpeed reads LOCAL_RANK
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, **pg_timeout)
    rank = dist.get_rank()
    world = dist.get_world_size()
    given = local_rank is not None
    if not given:  # a launcher that says nothing of machines: provisional, until the nodes are known
        local_rank = rank
    pick = dev.type == "cuda" and dev.index is None
    if pick:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    layout, node = (1,), 0
    if world > 1:
        keys = all_gather_object(node_key())
        order = list(dict.fromkeys(keys))  # nodes in the order of their lowest rank: node 0 holds rank 0
        layout = tuple(keys.count(k) for k in order)
        node = order.index(keys[rank])
        if not given:  # this rank's place among the ranks of its own node
            local_rank = [r for r, k in enumerate(keys) if k == keys[rank]].index(rank)
            if pick and local_rank != dev.index:
                dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
                torch.cuda.set_device(dev)
        if long_timeout is not None and (_long_group is None or _long_group[1] != long_timeout):
            _long_group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=long_timeout)), long_timeout)
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, layout=layout, node=node,
                    host=socket.gethostname())


def set_collective_timeout(seconds: float) -> None:
    """Bound every collective of the process groups (the default one and DeepSpeed's) by ``seconds``, except
    the long waits' own group. Uses torch's ``_set_pg_timeout``; without it the launch timeout stays."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return
    from torch.distributed import distributed_c10d as c10d

    setter = getattr(c10d, "_set_pg_timeout", None)
    if setter is None:  # pragma: no cover - older torch
        return
    groups = [dist.group.WORLD]
    try:
        groups += [g for g in c10d._world.pg_map if g is not dist.group.WORLD]
    except Exception:  # noqa: BLE001 - private registry moved: the default group alone
        pass
    for g in groups:
        if _long_group is not None and g is _long_group[0]:
            continue
        try:
            setter(timedelta(seconds=seconds), g)
        except Exception:  # noqa: BLE001 - a group of another backend or not ours to change
            pass


def barrier(*, long: bool = False) -> None:
    """Wait for every rank. ``long``: a wait while rank 0 alone writes (a checkpoint, the export), bounded by
    the long timeout given to :func:`setup` instead of the collective timeout."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_long_group[0] if long and _long_group is not None else None)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one rank)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


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
