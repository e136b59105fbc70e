"""CPU threads of torch on a machine other jobs also use: no spinning, and only the free cores.

Measured in benchmarks/README.md ("CPU threads on a busy machine"): torch's CPU kernels run each
operation as an OpenMP parallel region whose threads meet at a barrier at its end, tens of thousands of
regions per digits training step. GNU OpenMP's waiting threads *spin* at each barrier before sleeping.
With as many threads as cores and another process on one of them, every region waits for the thread the
kernel has descheduled while its partner burns the time slice the straggler needs: 24 CPU-seconds and
60–100+ s of wall time for a step that is 1.5 CPU-seconds of work. Two defences:

* :func:`passive_openmp_wait`, called by ``import rats_core`` before torch is imported, sets
  ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once): measured, this alone removes the slowdown; but on an
  idle machine two passive threads are slower than one (a futex wake-up per region);
* :func:`spin_if_idle`, called by ``rats-run`` just before it imports torch: when no other process is
  using the cores, OpenMP's threads may spin a bounded while (``GOMP_SPINCOUNT=`` :data:`IDLE_SPINCOUNT`)
  instead, and ``auto`` gives torch every core — the quiet machine's fast setting;
* ``train.threads: auto`` (:class:`ThreadPolicy`) gives torch the cores that are free of other
  processes (spinning) or those less one (passive), at least one, re-measured every
  :data:`RECHECK_SECONDS` while training (:data:`RECHECK_SPINNING` when spinning: a job that starts beside
  a spinning run takes one thread away within seconds); it also protects a process that imported torch
  before rats (spinning threads).

``train.threads`` (``rats-run``) and ``--threads`` (``rats eval`` / ``rats sample``) take ``auto``, a
number N (exactly N threads), or ``0`` (torch's own default: one per core). An ``OMP_NUM_THREADS`` set
in the environment is respected by ``auto``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Union

#: how often ``auto`` re-measures the free cores during training
RECHECK_SECONDS = 30.0
#: ... and when the threads spin (another job arriving costs more then: re-measure sooner)
RECHECK_SPINNING = 10.0
#: spins at an OpenMP barrier before a thread sleeps, on an idle machine (libgomp's own default is 300000;
#: benchmarks/README.md "CPU threads", measured on 2 quiet cores)
IDLE_SPINCOUNT = "300000"

#: what this process chose itself (so that a choice of the user's, in the environment, is never undone)
_CHOSEN: dict[str, str] = {}
#: the window over which idle time is measured
SAMPLE_SECONDS = 0.3

ThreadsSetting = Union[int, str]


def passive_openmp_wait() -> bool:
    """Make OpenMP threads sleep at once at a barrier instead of spinning (``OMP_WAIT_POLICY=PASSIVE``).

    GNU OpenMP (torch's CPU builds) reads this when it is loaded, i.e. at ``import torch``: this runs
    from ``import rats_core``, before rats imports torch. It does nothing when the user chose a policy
    (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set) or torch is already imported. Returns whether it set it."""
    if "torch" in sys.modules or any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    _CHOSEN["wait"] = "passive"
    return True


def spin_if_idle(window: float = SAMPLE_SECONDS) -> bool:
    """On an idle machine, before torch is imported: undo this process's own ``OMP_WAIT_POLICY=PASSIVE``
    and let threads spin :data:`IDLE_SPINCOUNT` times at a barrier before sleeping (``GOMP_SPINCOUNT``), so
    ``auto`` can use every core at full speed. Does nothing when torch is already imported (OpenMP has read
    its settings), when the policy is the user's (set in the environment before rats), when several ranks
    share the machine, or when another process is using a core. Returns whether it switched."""
    if "torch" in sys.modules or _CHOSEN.get("wait") != "passive" or os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        return False
    if env_threads() is not None:  # a fixed OMP_NUM_THREADS: the user's setting, keep the safe policy
        return False
    if int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1) > 1:
        return False  # several ranks on this machine: each would see it idle at start and spin on every core
    busy = busy_cores_elsewhere(window)
    if busy is None or int(available_cores() - busy + 0.75) < available_cores():
        return False
    del os.environ["OMP_WAIT_POLICY"]
    os.environ["GOMP_SPINCOUNT"] = IDLE_SPINCOUNT
    _CHOSEN["wait"] = "spin"
    return True


def spinning() -> bool:
    """Whether this process's OpenMP threads spin at barriers (rats chose it on an idle machine, or torch's
    default is in force: no wait policy set at all)."""
    if _CHOSEN.get("wait") == "spin":
        return True
    return os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies over all cores from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores_elsewhere(window: float = SAMPLE_SECONDS) -> float | None:
    """How many cores other processes kept busy over the last ``window`` seconds (this process's
    own CPU time taken out); None where it cannot be measured."""
    a = _cpu_times()
    own_a, wall_a = time.process_time(), time.monotonic()
    if a is None:
        return None
    time.sleep(window)
    b = _cpu_times()
    own_b, wall_b = time.process_time(), time.monotonic()
    if b is None or b[1] <= a[1]:
        return None
    busy = (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)  # cores busy on average, all processes
    own = (own_b - own_a) / max(1e-6, wall_b - wall_a)  # this process's share of them
    return max(0.0, busy - own)


def free_cores(window: float = SAMPLE_SECONDS) -> int:
    """Cores of this process's affinity set that no other process is using (at least 1)."""
    cores = available_cores()
    busy = busy_cores_elsewhere(window)
    if busy is None:
        return cores
    # a core counts as free when less than a quarter of it is taken: a tool in the background is not load
    return max(1, min(cores, int(cores - busy + 0.75)))


def parse_threads(value: Any, what: str = "--threads") -> ThreadsSetting:
    """``auto``, or a whole number ≥ 0; UsageError/ValueError otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    from rats_core.errors import UsageError

    raise UsageError(f"{what} '{value}': expected auto, 0 (torch's default) or a number of threads")


def env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(setting: ThreadsSetting) -> int | None:
    """The thread count for ``setting``; None means "leave torch's default"."""
    if setting == "auto":
        if env_threads():
            return env_threads()
        if _CHOSEN.get("wait") == "spin":  # every free core: the threads spin, no wake-up per region
            return free_cores()
        # Passive: one core is left over when more than one is free: every parallel region pays a futex
        # wake-up per extra thread, and on a quiet 2-core machine 2 passive threads took a digits step in
        # 2.3-2.4 s against 1.3 s with one (benchmarks/README.md, "a quiet machine").
        return max(1, free_cores() - 1)
    if int(setting) == 0:
        return None
    return int(setting)


class ThreadPolicy:
    """Applies a threads setting to torch now, and (``auto``) again every :data:`RECHECK_SECONDS` when
    :meth:`tick` is called from the training loop's thread (OpenMP's thread count is per calling thread)."""

    def __init__(self, setting: ThreadsSetting = "auto", *, verbose: bool = False, recheck: float | None = None):
        self.setting = setting
        self.verbose = verbose
        self.recheck = recheck if recheck is not None else (RECHECK_SPINNING if _CHOSEN.get("wait") == "spin"
                                                            else RECHECK_SECONDS)
        self.threads: int | None = None
        self._last = 0.0
        self.changes: list[tuple[float, int]] = []

    @property
    def adaptive(self) -> bool:
        return self.setting == "auto" and env_threads() is None

    def apply(self) -> int:
        import torch

        n = choose_threads(self.setting)
        self._last = time.monotonic()
        if n is not None and n != torch.get_num_threads():
            torch.set_num_threads(n)
            if self.threads is not None and self.verbose:
                print(f"threads: {self.threads} -> {n} (cores free now: {n} of {available_cores()})", file=sys.stderr)
            self.changes.append((time.time(), n))
        self.threads = torch.get_num_threads()
        return self.threads

    def tick(self) -> None:
        """Re-measure and adjust (``auto`` only), at most every ``recheck`` seconds."""
        if self.adaptive and time.monotonic() - self._last >= self.recheck:
            self.apply()


def apply_threads(setting: ThreadsSetting = "auto", *, verbose: bool = False) -> ThreadPolicy:
    policy = ThreadPolicy(setting, verbose=verbose)
    policy.apply()
    return policy
