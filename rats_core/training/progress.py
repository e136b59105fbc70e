"""Progress reports and log hygiene for the command line.

On a terminal, progress is tqdm's bar. When stderr is not a terminal (a log file, ``nohup``, CI, a job
scheduler), tqdm would still write every update as one endless line of carriage returns; there
:class:`PlainProgress` prints one plain line every :data:`PLAIN_EVERY_SECONDS` (and at the end)
instead (and one at the first step)::

    rats: step 40/100 (40%), 2.1 s/step, 2m06s left; loss=0.1 R_S=-0.05 R_T=-0.08 gate=0.31
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, TextIO

#: seconds between two plain progress lines (``RATS_PROGRESS_SECONDS`` overrides it)
PLAIN_EVERY_SECONDS = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("RATS_PROGRESS_SECONDS", PLAIN_EVERY_SECONDS)))
    except ValueError:
        return PLAIN_EVERY_SECONDS


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


class PlainProgress:
    """The subset of tqdm's interface the commands use, printing a plain line at most every
    ``interval`` seconds, and one when closed."""

    def __init__(self, total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it",
                 file: TextIO | None = None, interval: float | None = None, disable: bool = False):
        self.total = total
        self.n = initial
        self._start_n = initial
        self.desc = desc
        self.unit = unit
        self.file = file or sys.stderr
        self.interval = _interval() if interval is None else interval
        self.disable = disable
        self.postfix: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._last = self._t0
        self._printed_n: int | None = None
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        first = self._printed_n is None  # one line at the first step: a log shows at once that the run moves
        if first or now - self._last >= self.interval or (
                self.total is not None and self.n >= self.total and self.interval == 0):
            self._print(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        done = self.n - self._start_n
        elapsed = now - self._t0
        what = "step" if self.unit == "step" else self.unit
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            head += f"{what} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            head += f"{self.n} {what}"
        if done > 0 and elapsed > 0:
            rate = elapsed / done
            head += f", {rate:.3g} s/{what}" if rate >= 1 else f", {1 / rate:.3g} {what}/s"
            if self.total and self.n < self.total:
                head += f", {_duration(rate * (self.total - self.n))} left"
            else:
                head += f", {_duration(elapsed)} in all"
        if self.postfix:
            head += "; " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return head

    def _print(self, now: float) -> None:
        if self.disable:
            return
        self._last = now
        self._printed_n = self.n
        try:
            print(self.line(now), file=self.file, flush=True)
        except (OSError, ValueError):  # stderr closed: progress is not worth an error
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._printed_n != self.n and self.n > self._start_n:
            self._print(time.monotonic())

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None = None, *, initial: int = 0, desc: str = "", unit: str = "it",
                 disable: bool = False, file: TextIO | None = None, **tqdm_kwargs: Any) -> Any:
    """tqdm on a terminal; :class:`PlainProgress` lines when the stream is not one."""
    stream = file or sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=stream,
                    dynamic_ncols=True, **tqdm_kwargs)
    return PlainProgress(total=total, initial=initial, desc=desc, unit=unit, file=stream, disable=disable)


def quiet_library_warnings() -> None:
    """Silence the FutureWarnings torch.distributed and DeepSpeed repeat on every rank of a ZeRO run
    (``all_gather_into_tensor is deprecated`` ...): they are about the libraries' own calls and a user
    can do nothing about them. Left alone when the user set warning filters (``-W``, ``PYTHONWARNINGS``)."""
    if sys.warnoptions:
        return
    for module in (r"torch\.distributed", r"deepspeed", r"torch\.utils\._pytree", r"torch\.cuda\.amp"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


def quiet_library_progress(stream: TextIO | None = None) -> None:
    """In a log (stderr not a terminal), drop the Hugging Face libraries' own progress bars ("Loading
    weights", "Writing model shards", "Loading pipeline components"): in a file each is a line of
    carriage-return frames that buries rats' own progress lines. On a terminal they stay. An explicit
    ``HF_HUB_DISABLE_PROGRESS_BARS`` is respected."""
    if is_terminal(stream or sys.stderr):
        return
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("1", "true", "True", "yes"):
        return
    from rats_core._compat import after_import

    # diffusers has no variable for it: switch its bars off when it is first imported (importing it now
    # would import torch before a config error or a missing model could be named)
    after_import("diffusers.utils.logging", lambda module: module.disable_progress_bar())
