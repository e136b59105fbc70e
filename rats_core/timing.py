"""Per-phase wall time of a training step, for users deciding what to tune (``train.profile: true``)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class PhaseTimer:
    """Accumulates seconds per named phase; a no-op when disabled, so it costs nothing by default."""

    def __init__(self, enabled: bool = False, device: torch.device | str = "cpu"):
        self.enabled = enabled
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        """The totals since the last call, as ``time/<phase>`` metrics."""
        out = {f"time/{k}": v for k, v in self.totals.items()}
        self.totals = {}
        return out
