"""Training events and callbacks: how logging, evaluation, checkpoints, export and trackers hook into a run.

The trainer fires six events; a callback implements the ones it needs (every method is optional)::

    fit_start(state)                     the run is set up (resumed runs: after loading the checkpoint)
    step_end(state, metrics)             after each optimizer step: the step's metrics (loss, rewards, gate, ...)
    eval_end(state, results)             held-out results: {"step", "kind": "periodic"|"final", "values"|"table", ...}
    checkpoint_saved(state, folder)      a checkpoint folder was committed (atomically, complete)
    fit_end(state, result)               training finished (export and report are built-in fit_end callbacks)
    exception(state, error)              the run is stopping on an error or an interruption

``state`` is a :class:`RunState` (config, run folder, step, ranks; ``state.trainer`` for built-ins that
drive the run). Callbacks run on rank 0 only unless they set ``rank_zero_only = False`` (evaluation and
checkpoints need every rank under ZeRO). A callback that raises stops the run with one message naming
it and its plugin; the trainer saves a checkpoint first, so nothing trained is lost.

Example, a third-party callback registered by a plugin (``callbacks: [{name: print-loss, every: 10}]``)::

    from rats_core import hookimpl

    class PrintLoss:
        def __init__(self, every: int = 10):
            self.every = every
        def step_end(self, state, metrics):
            if state.step % self.every == 0:
                print(state.step, metrics["loss"])

    @hookimpl
    def register_callbacks(register):
        register("print-loss", PrintLoss)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rats_core.errors import PluginError, RatsError

EVENTS = ("fit_start", "step_end", "eval_end", "checkpoint_saved", "fit_end", "exception")


@runtime_checkable
class Callback(Protocol):
    """Reacts to training events. Implement any subset of the methods in :data:`EVENTS`; set
    ``rank_zero_only = False`` to be called on every rank."""


class TrainerView(Protocol):
    """What the built-in callbacks use of the trainer (``RunState.trainer``), typed here so that this
    module needs nothing of ``rats_core.training.trainer`` (which imports it)."""

    cfg: Any
    output_dir: Path
    step: int
    dist: Any  # rats_core.parallel.distributed.DistInfo
    history: list[dict[str, Any]]
    callbacks: "CallbackList | None"
    already_finished: bool

    def save_checkpoint(self) -> Path: ...

    def write_failed(self, what: str, exc: OSError) -> Exception: ...


@dataclass
class RunState:
    """What a callback sees of the run."""

    cfg: Any
    output_dir: Path
    total_steps: int
    rank: int = 0
    world_size: int = 1
    trainer: TrainerView | None = field(default=None, repr=False)

    @property
    def step(self) -> int:
        """Optimizer steps done so far."""
        return self.trainer.step if self.trainer is not None else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Entry:
    name: str
    plugin: str
    callback: Any

    @property
    def everywhere(self) -> bool:
        return getattr(self.callback, "rank_zero_only", True) is False


class CallbackList:
    """Dispatches events in order; a callback's error becomes a PluginError naming it."""

    def __init__(self, entries: list[Entry], rank: int = 0):
        self.entries = entries
        self.rank = rank

    def __iter__(self):
        return iter(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def fire(self, event: str, state: RunState, *args: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        for e in self.entries:
            if self.rank != 0 and not e.everywhere:
                continue
            method = getattr(e.callback, event, None)
            if method is None:
                continue
            try:
                method(state, *args)
            except RatsError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"callback '{e.name}' (plugin {e.plugin}) raised {type(exc).__name__} in {event}: {exc}"
                ) from exc

    def fire_quietly(self, event: str, state: RunState, *args: Any) -> list[str]:
        """Fire without stopping at the first failure (for ``exception``: the run is failing already);
        returns one message per callback that raised."""
        problems = []
        for e in self.entries:
            if self.rank != 0 and not e.everywhere:
                continue
            method = getattr(e.callback, event, None)
            if method is None:
                continue
            try:
                method(state, *args)
            except Exception as exc:  # noqa: BLE001 - reported, never masks the original error
                problems.append(f"callback '{e.name}' (plugin {e.plugin}) raised {type(exc).__name__} in {event}: {exc}")
        return problems


def default_callbacks(cfg: Any) -> list[tuple[str, dict[str, Any]]]:
    """The built-in callbacks a config implies, in order (before the config's own ``callbacks``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    if cfg.train.progress:
        out.append(("progress", {}))
    out.append(("metrics-jsonl", {}))
    out.append(("tensorboard", {}))
    if cfg.eval.every:
        out.append(("periodic-eval", {"every": cfg.eval.every}))
    if cfg.train.checkpoint_every:
        out.append(("checkpoint", {"every": cfg.train.checkpoint_every}))
    if cfg.train.export:
        out.append(("export", {}))
    if cfg.eval.at_end:
        out.append(("report", {}))
    return out


def build_callbacks(cfg: Any, rank: int = 0) -> CallbackList:
    """The built-ins the config implies, then each entry of ``callbacks:`` (validated like every component)."""
    from rats_core.registry.plugins import get_registry

    registry = get_registry()
    entries = []
    for name, options in default_callbacks(cfg):
        entries.append(Entry(name, registry.get("callbacks", name).plugin,
                             registry.build("callbacks", name, options, f"built-in callback {name}")))
    for i, c in enumerate(getattr(cfg, "callbacks", []) or []):
        entries.append(Entry(c.name, registry.get("callbacks", c.name).plugin,
                             registry.build("callbacks", c.name, c.options, f"callbacks.{i}")))
    return CallbackList(entries, rank)
