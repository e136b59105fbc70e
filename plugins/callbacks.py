"""The built-in training callbacks: what every run does besides the loop and the objective.

The trainer turns these on from the config (rats_core/training/callbacks.py: ``default_callbacks``) before the
config's own ``callbacks:`` list; they are registered through the same hook as third-party ones.

========================  =====================================================  ==================
name                      what                                                   on
========================  =====================================================  ==================
``progress``              progress bar (tqdm on a terminal, plain lines in logs)  ``train.progress``
``metrics-jsonl``         ``metrics.jsonl``: one JSON line per logged step/eval   always
``tensorboard``           TensorBoard scalars in ``tensorboard/``                 always
``periodic-eval``         held-out rewards every N steps (fires ``eval_end``)     ``eval.every``
``checkpoint``            a checkpoint every N steps                               ``train.checkpoint_every``
``export``                the student exported at the end                          ``train.export``
``report``                the end-of-run report (fires ``eval_end``, final)       ``eval.at_end``
========================  =====================================================  ==================
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from rats_core import hookimpl
from rats_core.training.callbacks import RunState

log = logging.getLogger("rats")

Every = Annotated[int, Field(gt=0)]


def should_log(state: RunState) -> bool:
    """``train.log_every`` steps, and the last one."""
    return state.step % state.cfg.train.log_every == 0 or state.step == state.total_steps


class Progress:
    """Progress bar with the step's loss, student/teacher reward and gate."""

    def __init__(self) -> None:
        self.bar = None

    def fit_start(self, state: RunState) -> None:
        if state.step < state.total_steps:
            from rats_core.training.progress import progress_bar

            self.bar = progress_bar(total=state.total_steps, initial=state.step, desc="rats", unit="step")

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        # the numbers first: update() may print the line, which must show this step's, not the last one's
        self.bar.set_postfix(loss=f"{metrics['loss']:.4g}", R_S=f"{metrics['reward_student']:.4g}",
                             R_T=f"{metrics['reward_teacher']:.4g}", gate=f"{metrics['gate_mean']:.2f}",
                             refresh=False)
        self.bar.update(1)

    def fit_end(self, state: RunState, result: Any) -> None:
        self.close()

    def exception(self, state: RunState, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsJsonl:
    """``metrics.jsonl`` in the run folder: ``{"step": N, ...metrics}`` per logged step, and the
    held-out values of each periodic evaluation (``eval/...``). Appends, so a resumed run continues it."""

    FILENAME = "metrics.jsonl"

    def __init__(self) -> None:
        self.fh = None

    def fit_start(self, state: RunState) -> None:
        try:
            self.fh = open(Path(state.output_dir) / self.FILENAME, "a", encoding="utf-8")
        except OSError as exc:
            raise state.trainer.write_failed(f"open {self.FILENAME}", exc) from None

    def write(self, state: RunState, values: dict[str, Any]) -> None:
        if self.fh is None:
            return
        try:
            self.fh.write(json.dumps({"step": state.step, **values}) + "\n")
            self.fh.flush()
        except OSError as exc:
            raise state.trainer.write_failed(f"write {self.FILENAME}", exc) from None

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if should_log(state):
            self.write(state, metrics)

    def eval_end(self, state: RunState, results: dict[str, Any]) -> None:
        if results.get("kind") == "periodic":
            self.write(state, results["values"])

    def fit_end(self, state: RunState, result: Any) -> None:
        self.close()

    def exception(self, state: RunState, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:  # the disk filled up: already reported by write(), do not mask that error
                pass
            self.fh = None


class TensorBoard:
    """TensorBoard scalars under ``tensorboard/`` (disabled with a warning if tensorboard is missing)."""

    def __init__(self) -> None:
        self.tb = None

    def fit_start(self, state: RunState) -> None:
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import SummaryWriter

            self._summary = Summary
            self.tb = SummaryWriter(log_dir=str(Path(state.output_dir) / "tensorboard"))
        except Exception as exc:  # tensorboard missing or broken: JSON lines still work
            log.warning("TensorBoard logging disabled: %s", exc)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.tb is None:
            return
        Summary = self._summary
        scalars = [Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)]
        if scalars:
            # One event holding all of the step's scalars: add_scalar per metric cost ~0.5 ms a step.
            self.tb._get_file_writer().add_summary(Summary(value=scalars), step)

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if should_log(state):
            self.write(state.step, metrics)

    def eval_end(self, state: RunState, results: dict[str, Any]) -> None:
        if results.get("kind") == "periodic":
            self.write(state.step, results["values"])

    def fit_end(self, state: RunState, result: Any) -> None:
        self.close()

    def exception(self, state: RunState, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


class PeriodicEval:
    """Held-out rewards of the student (K steps) and the current teacher (N steps) every ``every``
    steps, for the reward-over-training curve and the overtaking step. Fires ``eval_end`` with
    ``{"kind": "periodic", "step", "values": {"eval/reward_student": ..., ...}}``.

    Args:
        every: evaluate after every this many optimizer steps (set from eval.every)
    """

    rank_zero_only = False  # sampling is collective under ZeRO-3

    def __init__(self, every: Every = 1):
        self.every = every

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if state.step % self.every:
            return
        from rats_core.evaluation.in_training import training_eval

        trainer = state.trainer
        values = training_eval(trainer)
        if values:
            trainer.history.append({"step": state.step, **values})
            trainer.callbacks.fire("eval_end", state, {"kind": "periodic", "step": state.step, "values": values})


class Checkpoint:
    """A checkpoint every ``every`` optimizer steps (the trainer always saves one at the end, and
    on SIGINT/SIGTERM).

    Args:
        every: save after every this many optimizer steps (set from train.checkpoint_every)
    """

    rank_zero_only = False  # every rank writes its optimizer shard

    def __init__(self, every: Every = 100):
        self.every = every

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if state.step % self.every == 0 and state.step < state.total_steps:
            state.trainer.save_checkpoint()


class Export:
    """The student exported at the end (``export/``, or ``export_lora/`` for LoRA runs), as
    ``rats export`` writes it, with ``rats_export.json``."""

    rank_zero_only = False  # a barrier after rank 0's export

    def fit_end(self, state: RunState, result: Any) -> None:
        from rats_core.evaluation.export import export_trained

        result.export_dir = export_trained(state.trainer)


class Report:
    """The end-of-run report (report.md, report.json, report/*.png): base, teacher and student on the
    held-out prompts. Fires ``eval_end`` with ``{"kind": "final", "step", "report": report.json's content,
    "folder": the run folder}`` on rank 0."""

    rank_zero_only = False  # sampling is collective under ZeRO-3

    def fit_end(self, state: RunState, result: Any) -> None:
        from rats_core.evaluation.in_training import end_of_run_report

        report_md = Path(state.output_dir) / "report.md"
        if getattr(state.trainer, "already_finished", False) and report_md.is_file():
            # a rerun of a finished run: the report is there; rebuild it only if it is missing
            if state.trainer.dist.is_main:
                print(f"report: {report_md} (kept; delete it to rebuild, or `rats eval {state.output_dir}` "
                      "for a new evaluation)", file=sys.stderr)
            return
        result.report = end_of_run_report(state.trainer)
        if result.report is not None:
            state.trainer.callbacks.fire("eval_end", state, {"kind": "final", "step": state.step,
                                                             "report": result.report, "folder": state.output_dir})


@hookimpl
def register_callbacks(register):
    register("progress", Progress)
    register("metrics-jsonl", MetricsJsonl)
    register("tensorboard", TensorBoard)
    register("periodic-eval", PeriodicEval)
    register("checkpoint", Checkpoint)
    register("export", Export)
    register("report", Report)
