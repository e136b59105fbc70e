"""SIGINT/SIGTERM during training: the first asks for a checkpoint and a clean stop after the current
step, a second one stops at once."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopRequest:
    """Installs the handlers (main thread only) and records the first signal in :attr:`signum`."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(
                f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step, then stopping "
                "(send it again to stop at once)",
                file=sys.stderr,
            )

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
