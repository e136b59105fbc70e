"""Noticing a rank that vanished (``kill -9``, a crashed node, a rank that stopped on an error).

Collectives alone do not say *who* is gone, and on GPUs (NCCL) a rank waiting for a dead peer can wait until
the process-group timeout and is then torn down by NCCL's watchdog without a word from rats. So every rank
also beats through the launcher's key-value store (the TCP store at ``MASTER_ADDR:MASTER_PORT`` that
torchrun's agent, or rank 0 under ``env://`` launches, holds):

* each rank writes ``beat/<rank>`` every :attr:`PeerWatch.interval` seconds, with the phase it is in;
* each rank watches one other, the next one round the ring, so the store sees O(ranks) operations a beat;
* a watched rank that has left with an error (``left/<rank>``), or whose beat has not changed for the
  phase's silence (half of ``train.collective_timeout`` while training, half of ``train.save_timeout``
  while it sets up, saves or exports), is declared gone in ``verdict``, once, for every rank to read;
* once a collective has failed on this rank (:meth:`PeerWatch.verdict`), a beat missing for 3 intervals is
  enough: something *is* wrong, and the survivors should say what within seconds, not minutes.

The main thread turns the verdict into one ``error:`` line (the trainer adds the step and the last complete
checkpoint). If the main thread is stuck in a collective that never returns, the watching thread prints
that line itself and ends the process (status 2), so a job always stops within the bound.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

#: phases in which a rank may legitimately be silent for long (loading models, writing big files)
LONG_PHASES = frozenset({"setup", "save", "export"})
#: reasons for leaving that are not failures (the others leave too, or already have)
NORMAL_LEAVES = frozenset({"done", "interrupted"})


@dataclass
class Verdict:
    """Which ranks are gone and how; ``text()`` is the start of the line the user sees."""

    #: ranks that stopped answering without a word (killed, their machine gone)
    vanished: list[int] = field(default_factory=list)
    #: ranks that stopped on an error, with the error's first line
    failed: dict[int, str] = field(default_factory=dict)
    #: seconds the first vanished rank had been silent when it was declared gone
    silent_for: float = 0.0
    #: the store itself stopped answering (under ``env://`` launches rank 0 holds it)
    store_lost: bool = False
    #: where each named rank ran: ``host`` (``node N``)
    where: dict[int, str] = field(default_factory=dict)

    def ranks(self) -> list[int]:
        return sorted({*self.vanished, *self.failed})

    def text(self) -> str:
        def rank(r: int) -> str:
            return f"rank {r}" + (f" ({self.where[r]})" if r in self.where else "")

        parts = []
        if self.store_lost:
            parts.append("the launcher's store stopped answering: rank 0 (which holds it under an env:// launch) "
                         "or the launcher on the first node has vanished")
        if self.vanished:
            names = ", ".join(rank(r) for r in self.vanished)
            parts.append(f"{names} vanished (no heartbeat for {self.silent_for:.1f} s: killed, or its machine went "
                         "away)")
        for r, why in sorted(self.failed.items()):
            parts.append(f"{rank(r)} stopped with an error ({why})")
        return "; ".join(parts) or "a peer rank is gone"

    def dumps(self) -> str:
        return json.dumps({"vanished": self.vanished, "failed": {str(k): v for k, v in self.failed.items()},
                           "silent_for": self.silent_for, "store_lost": self.store_lost,
                           "where": {str(k): v for k, v in self.where.items()}})

    @classmethod
    def loads(cls, text: str) -> Verdict:
        d = json.loads(text)
        return cls(vanished=[int(r) for r in d.get("vanished", [])],
                   failed={int(k): v for k, v in d.get("failed", {}).items()},
                   silent_for=float(d.get("silent_for", 0.0)), store_lost=bool(d.get("store_lost", False)),
                   where={int(k): v for k, v in d.get("where", {}).items()})


def store_address() -> tuple[str, int] | None:
    """The launcher's TCP store (torchrun's agent store, or rank 0's under ``env://``), if there is one."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or not port.isdigit():
        return None
    return host, int(port)


def key_prefix() -> str:
    """Keys of this launch only: torchrun's agent keeps its store across ``--max-restarts`` relaunches."""
    return (f"rats/peers/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
            f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")


class PeerWatch:
    """Heartbeats of this rank and a watch on the next one (see the module docstring).

    ``store`` is any ``torch.distributed.Store`` (tests pass a ``HashStore``); by default a client of
    :func:`store_address`'s TCP store of its own, so that the watch never waits behind the process group's
    use of the store. ``on_verdict`` is called from the watching thread when the main thread is not already
    handling a failure; the default prints ``describe(verdict)`` after ``error:`` and ends the process.
    """

    def __init__(self, rank: int, world_size: int, *, collective_timeout: float, save_timeout: float,
                 where: str = "", store: Any = None, describe: Callable[[Verdict], str] | None = None,
                 on_verdict: Callable[[Verdict], None] | None = None, interval: float | None = None):
        self.rank = rank
        self.world_size = world_size
        #: seconds between beats: a twentieth of the collective timeout, between 0.1 and 1 s
        self.interval = interval if interval is not None else max(0.1, min(1.0, collective_timeout / 20))
        self.silence = max(3 * self.interval, collective_timeout / 2)
        self.long_silence = max(self.silence, save_timeout / 2)
        self.where = where or socket.gethostname()
        self.describe = describe or (lambda v: v.text())
        self.on_verdict = on_verdict or self._report_and_exit
        self.phase = "setup"
        self.prefix = key_prefix()
        self._store = store
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the main thread is handling a failed collective (then it, not the watching thread, reports)
        self._handling = False
        #: a collective failed here: a beat missing for 3 intervals is enough to call a rank gone
        self._suspicious = False
        self._verdict: Verdict | None = None
        self._acted = False
        #: when an operation on the store first failed (None: it answers)
        self._store_failed: float | None = None
        self._n = 0

    # -- the store

    def _key(self, *parts: Any) -> str:
        return self.prefix + "/".join(str(p) for p in parts)

    def _op(self, fn: str, *args: Any) -> Any:
        with self._lock:
            return getattr(self._store, fn)(*args)

    def _get(self, key: str) -> str | None:
        """The value, or None when the key is not there (never waits for it)."""
        if not self._op("check", [key]):
            return None
        return self._op("get", key).decode()

    # -- lifecycle

    def start(self) -> bool:
        """Connect (unless given a store), publish where this rank runs, start beating and watching.
        False (and no watch) when there is no store to beat through."""
        if self.world_size < 2:
            return False
        if self._store is None:
            address = store_address()
            if address is None:
                return False
            import torch.distributed as dist

            try:
                self._store = dist.TCPStore(address[0], address[1], is_master=False,
                                            timeout=timedelta(seconds=max(10.0, 5 * self.interval)),
                                            wait_for_workers=False)
            except Exception as exc:  # noqa: BLE001 - the job runs on; only the naming of a lost rank is off
                print(f"rats: warning: no heartbeats (cannot reach the store at {address[0]}:{address[1]}: {exc})",
                      file=sys.stderr)
                return False
        self._op("set", self._key("where", self.rank), self.where)
        self._beat()
        self._thread = threading.Thread(target=self._run, name="rats-peer-watch", daemon=True)
        self._thread.start()
        return True

    def set_phase(self, phase: str) -> None:
        """What this rank is doing (``setup``, ``train``, ``save``, ``export``): how long its watcher lets it
        be silent."""
        self.phase = phase

    def leave(self, reason: str = "done", *, error: bool = False) -> None:
        """This rank is going: stop beating and say why, so that its watcher does not call it vanished
        (``error``: the others name it and the reason in their message)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * self.interval + 10)
            self._thread = None
        if self._store is None or self._store_failed is not None:
            return
        text = ("error: " if error else "") + " ".join(str(reason).split())[:300]
        try:
            self._op("set", self._key("left", self.rank), text)
        except Exception:  # noqa: BLE001 - the store is gone too: nothing left to tell
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * self.interval + 10)
            self._thread = None

    # -- the watching thread

    def _beat(self) -> None:
        self._n += 1
        self._op("set", self._key("beat", self.rank), f"{self._n} {self.phase}")

    def _run(self) -> None:
        watched = (self.rank + 1) % self.world_size
        watching = True
        last: str | None = None
        changed = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if self._store_failed is not None:
                # a TCP store client does not reconnect: no more operations (each would log a C++ warning);
                # the store is gone for good, which is a verdict at once after a failed collective
                if watching and (self._suspicious or now - self._store_failed >= self.silence):
                    self._decide(Verdict(store_lost=True))
                    watching = False
                continue
            try:
                self._beat()
                if not watching:
                    continue
                shared = self._get(self._key("verdict"))
                left = self._get(self._key("left", watched))
                beat = self._get(self._key("beat", watched))
            except Exception:  # noqa: BLE001 - a store that stops answering is itself a verdict
                self._store_failed = now
                continue
            if shared is not None:
                self._decide(Verdict.loads(shared), publish=False)
                watching = False
                continue
            if left is not None:
                if left.startswith("error: "):
                    self._decide(Verdict(failed={watched: left[len("error: "):]}, where=self._where([watched])))
                watching = False  # an error: decided; a normal leave: the job is ending
                continue
            if beat != last:
                last, changed = beat, now
                continue
            if beat is None and not self._suspicious:
                continue  # not started yet: counted from its first beat (or from a failure here)
            phase = beat.split(" ", 1)[1] if beat else "setup"
            limit = 3 * self.interval if self._suspicious else (
                self.long_silence if phase in LONG_PHASES else self.silence)
            if now - changed >= limit:
                gone = [watched, *self._silent_after(watched)]
                self._decide(Verdict(vanished=gone, silent_for=now - changed, where=self._where(gone)))
                watching = False

    def _silent_after(self, first: int, most: int = 64) -> list[int]:
        """Ranks right after ``first`` that are silent too (a whole node gone): read their beats, beat twice
        ourselves, read again."""
        ranks = [(first + i) % self.world_size for i in range(1, min(most, self.world_size))]
        ranks = [r for r in ranks if r != self.rank]
        if not ranks:
            return []
        try:
            before = {r: self._get(self._key("beat", r)) for r in ranks}
            for _ in range(2):
                time.sleep(self.interval)
                self._beat()
            gone = []
            for r in ranks:
                if self._get(self._key("beat", r)) != before[r] or self._get(self._key("left", r)) is not None:
                    break
                gone.append(r)
            return gone
        except Exception:  # noqa: BLE001
            return []

    def _where(self, ranks: list[int]) -> dict[int, str]:
        out = {}
        for r in ranks:
            try:
                w = self._get(self._key("where", r))
            except Exception:  # noqa: BLE001
                w = None
            if w:
                out[r] = w
        return out

    def _decide(self, verdict: Verdict, publish: bool = True) -> None:
        if publish and not verdict.store_lost:
            try:  # the first verdict wins: every rank names the same ranks
                current = self._op("compare_set", self._key("verdict"), "", verdict.dumps())
                verdict = Verdict.loads(current.decode())
            except Exception:  # noqa: BLE001
                pass
        with self._lock:
            if self._verdict is None:
                self._verdict = verdict
            act = not self._handling and not self._acted
            self._acted = True
        if act:
            self.on_verdict(self._verdict)

    def _report_and_exit(self, verdict: Verdict) -> None:
        """The main thread is stuck in a collective that will not return in time: say what happened and end
        the process, so the job stops within the bound whatever the backend does."""
        try:
            print(f"error: {self.describe(verdict)}", file=sys.stderr, flush=True)
        finally:
            os._exit(2)

    # -- the main thread, after a collective failed

    def verdict(self, window: float | None = None) -> Verdict | None:
        """After a collective failed on this rank: who is gone? Waits up to ``window`` seconds (default: 5
        beats and a second) for the watchers to agree; None when every rank still beats (the failure was
        something else, e.g. a stuck but living rank; the caller re-raises it)."""
        with self._lock:
            self._handling = True
            self._suspicious = True
        if self._thread is None:
            return self._verdict
        end = time.monotonic() + (window if window is not None else 5 * self.interval + 1.0)
        while time.monotonic() < end:
            if self._verdict is not None:
                return self._verdict
            time.sleep(min(0.05, self.interval / 4))
        return self._verdict
