"""The gate temperature check: warn once when the gate never leaves 0.5.

The sigmoid gate's ``τ`` is in raw reward units. A reward whose gaps ``|R_T − R_S|`` are ~0.01 (raw HPS,
a cosine) under ``τ = 1`` gives ``g = sigmoid(0.01) ≈ 0.5025`` for every sample: RATS silently becomes
"always half-distil". The trainer logs ``gate_low``/``gate_high`` (share of samples with ``g < 0.1`` and
``g > 0.9``) and ``reward_gap`` beside ``gate_mean``; this check reads them after warm-up and warns once,
with the numbers and a τ that would let the gate move. docs/config.md, "Choosing τ", says more.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("rats")

#: steps observed after ``train.warmup_steps`` before the check decides
STEPS = 5
#: "never leaves a narrow band around 0.5": no sample past 0.1/0.9 and the mean within 0.5 ± BAND
BAND = 0.05
#: "gaps far below τ": the mean gap under τ / GAP_RATIO
GAP_RATIO = 20.0


def suggested_tau(gap: float) -> float:
    """A τ at which a typical gap moves the gate to ~0.1 / 0.9 (sigmoid(±2.2)), one significant digit."""
    tau = max(gap, 1e-12) / 2.2
    exponent = math.floor(math.log10(tau))
    return round(tau / 10**exponent) * 10**exponent


class GateCheck:
    """Feed it each step's logged values; it warns (once, on rank 0) and returns the message."""

    def __init__(self, cfg: Any, is_main: bool = True):
        self.tau = cfg.gate.options.get("tau", 1.0) if cfg.gate.name == "sigmoid" else None
        self.start = cfg.train.warmup_steps
        self.is_main = is_main
        self.seen: list[dict[str, float]] = []
        self.done = self.tau is None  # only the sigmoid gate has a temperature
        self.message: str | None = None

    def __call__(self, step: int, values: dict[str, float]) -> str | None:
        if self.done or step <= self.start or "gate_mean" not in values:
            return None
        self.seen.append(values)
        if len(self.seen) < STEPS:
            return None
        self.done = True
        n = len(self.seen)
        low = sum(v.get("gate_low", 0.0) for v in self.seen) / n
        high = sum(v.get("gate_high", 0.0) for v in self.seen) / n
        mean = sum(v["gate_mean"] for v in self.seen) / n
        gap = sum(v.get("reward_gap", 0.0) for v in self.seen) / n
        stuck = low == 0 and high == 0 and all(abs(v["gate_mean"] - 0.5) < BAND for v in self.seen)
        if not stuck and gap * GAP_RATIO >= self.tau:
            return None
        self.message = (
            f"gate: over steps {self.start + 1}-{step} the sigmoid gate stayed near 0.5 (mean {mean:.3f}; "
            f"{low:.0%} of samples below 0.1, {high:.0%} above 0.9) because the reward gaps |R_T - R_S| "
            f"(mean {gap:.3g}) are far below gate.tau={self.tau:g}: RATS is distilling every sample at half "
            f"strength. Set gate.tau={suggested_tau(gap):g}, or give the rewards normalize: fixed with their "
            "mean and std (docs/config.md, 'Choosing the gate's τ')"
        )
        if self.is_main:
            log.warning("%s", self.message)
        return self.message
