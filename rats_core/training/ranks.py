"""A multi-rank job's ranks as the trainer sees them: the run folder every node must share (checked at start),
the watch on the other ranks (rats_core/parallel/peers.py), and the one line a surviving rank stops with when
another is gone. One rank: nothing here does anything but claim the folder."""

from __future__ import annotations

import sys
from typing import Any

from rats_core.errors import ConfigError, PluginError, RatsError, TrainingError
from rats_core.parallel.distributed import all_gather_object, barrier, broadcast_object
from rats_core.parallel.peers import PeerWatch, Verdict
from rats_core.training import checkpoint as ckpt
from rats_core.training.run_folder import unshared_message


def start_watch(trainer: Any) -> PeerWatch:
    """Heartbeats of this rank and its watch on the next one (no-op on one rank or without a store)."""
    d, t = trainer.dist, trainer.cfg.train
    watch = PeerWatch(d.rank, d.world_size, collective_timeout=t.collective_timeout, save_timeout=t.save_timeout,
                      where=f"node {d.node}, host {d.host}", describe=lambda v: peer_message(trainer, v))
    watch.start()
    return watch


def claim_shared_folder(trainer: Any) -> None:
    """Rank 0 claims the run folder; with several ranks it writes a fresh token into it, and every rank must
    read that token back from its own ``output_dir``: a folder that is not shared by every node stops every
    rank here, with one message naming the node and the path, before anything is loaded or trained. A folder
    rank 0 cannot claim (busy, not writable) stops every rank with rank 0's message."""
    d, folder = trainer.dist, trainer.folder
    outcome: tuple[str, str] = ("ok", "")
    if d.is_main:
        try:
            folder.claim()
            if d.world_size > 1:
                outcome = ("ok", folder.write_start_token())
        except RatsError as exc:
            if d.world_size == 1:
                raise
            outcome = (type(exc).__name__, str(exc))
    if d.world_size == 1:
        return
    kind, text = broadcast_object(outcome)
    if kind != "ok":
        raise {"ConfigError": ConfigError}.get(kind, TrainingError)(text)
    seen = d.is_main or folder.sees_start_token(text)
    reports = all_gather_object({"seen": seen, "node": d.node, "host": d.host, "path": str(trainer.output_dir)})
    if not all(r["seen"] for r in reports):
        raise TrainingError(unshared_message(reports))
    if d.is_main:
        print(f"ranks: {d.world_size} on {d.layout_text()}; run folder {trainer.output_dir} seen by every rank",
              file=sys.stderr)


def doing(trainer: Any) -> str:
    """What this rank was doing, for the message: the step, the checkpoint being written, the export."""
    phase = trainer.watch.phase if trainer.watch is not None else "train"
    total = trainer.cfg.train.steps
    if phase == "train":
        return f"during step {trainer.step + 1}/{total}"
    if phase == "save":
        return f"while checkpoint {ckpt.step_name(trainer.step)} was being written (it is not kept)"
    if phase == "export":
        return "during the end-of-run export"
    if phase == "setup":
        return "during setup"
    return f"at the end of the run (step {trainer.step}/{total})"


def peer_message(trainer: Any, verdict: Verdict) -> str:
    """The one line a surviving rank prints: who is gone, what this rank was doing, what is kept."""
    latest = ckpt.latest_checkpoint(trainer.output_dir)
    kept = (f"The last complete checkpoint is {latest} (step {int(latest.name.split('_')[-1])})" if latest
            else "No checkpoint had been saved yet")
    return (f"{verdict.text()}, {doing(trainer)}; this rank stops too. {kept}: run the same command to resume "
            "from it, or launch with torchrun --max-restarts N to have that done automatically "
            "(docs/distributed.md)")


def peer_failure(trainer: Any, exc: BaseException) -> TrainingError | None:
    """A collective failed here (a peer's socket closed, a timeout): the TrainingError naming the rank that is
    gone, or None when every rank still answers (the failure is something else: the caller re-raises it)."""
    if trainer.watch is None or trainer.dist is None or trainer.dist.world_size < 2:
        return None
    cause: BaseException | None = exc
    while isinstance(cause, PluginError):  # a collective inside a callback (the export's wait, evaluation)
        cause = cause.__cause__
    if not isinstance(cause, RuntimeError):
        return None
    verdict = trainer.watch.verdict()
    return TrainingError(peer_message(trainer, verdict)) if verdict is not None else None


def finish(trainer: Any) -> None:
    """The run is over on this rank: wait for the others (rank 0 may still be writing the report; under an
    env:// launch it holds the store the others beat through), then stop beating."""
    barrier(long=True)
    if trainer.watch is not None:
        trainer.watch.leave("done")


def leave(trainer: Any, exc: BaseException, *, interrupted: bool) -> None:
    """This rank stops on ``exc``: tell the others' watchers why (an interruption is no failure: every rank
    stops on it)."""
    if trainer.watch is None:
        return
    if interrupted:
        trainer.watch.leave("interrupted")
    else:
        trainer.watch.leave(str(exc) if isinstance(exc, RatsError) else f"{type(exc).__name__}: {exc}", error=True)
