"""Experiment trackers as callbacks: Weights & Biases and MLflow (optional extras).

::

    pip install "rats[wandb]"     # or "rats[mlflow]"

    callbacks:
      - {name: wandb, project: my-rats, mode: offline}     # offline: a run folder to `wandb sync` later
      - {name: mlflow, experiment: my-rats}                 # default store: RUN_DIR/mlruns (a local file store)

Both log every logged step's metrics, the resolved config, the periodic held-out rewards, and at the
end the report's held-out table (one row per model) and its images. A resumed run continues the same
tracker run (its id is kept in the run folder).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from rats_core import hookimpl
from rats_core.training.callbacks import RunState
from rats_core.errors import ConfigError

WANDB_ID_FILE = "wandb_run_id.txt"
MLFLOW_ID_FILE = "mlflow_run_id.txt"


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def held_out_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The report's held-out table: one row per model (base, teacher, student, ...), scalar columns."""
    held_out = report.get("held_out") or {}
    columns: list[str] = []
    for entry in held_out.values():
        for k, v in (entry or {}).items():
            if k not in columns and isinstance(v, (int, float, str)) and not isinstance(v, bool):
                columns.append(k)
    rows = [[label] + [entry.get(c) for c in columns] for label, entry in held_out.items()]
    return ["model", *columns], rows


def report_images(folder: Path) -> list[Path]:
    return sorted((Path(folder) / "report").glob("*.png"))


def should_log(state: RunState) -> bool:
    return state.step % state.cfg.train.log_every == 0 or state.step == state.total_steps


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


class WandbLogger:
    """Weights & Biases: step metrics, config, periodic held-out rewards, the final table and report images.

    Args:
        project: the W&B project
        entity: the W&B team or user (default: your default entity)
        name: the run's display name (default: the run folder's name)
        mode: online, offline (a folder to `wandb sync` later) or disabled (default: W&B's own, e.g. WANDB_MODE)
        tags: tags of the W&B run
        dir: where W&B writes its files (default: the run folder)
    """

    def __init__(self, project: str = "rats", entity: str | None = None, name: str | None = None,
                 mode: Literal["online", "offline", "disabled"] | None = None, tags: list[str] | None = None,
                 dir: str | None = None):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("callbacks: 'wandb' needs the wandb package: pip install \"rats[wandb]\"") from None
        self.options = dict(project=project, entity=entity, name=name, mode=mode, tags=tags)
        self.dir = dir
        self.run = None

    def fit_start(self, state: RunState) -> None:
        import wandb

        out = Path(state.output_dir)
        id_file = out / WANDB_ID_FILE
        run_id = _read_id(id_file) or uuid.uuid4().hex[:8]
        opts = {k: v for k, v in self.options.items() if v is not None}
        opts.setdefault("name", out.name)
        self.run = wandb.init(id=run_id, resume="allow", config=state.cfg.to_dict(), dir=self.dir or str(out),
                              reinit="create_new", **opts)
        id_file.write_text(run_id + "\n")

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if self.run is not None and should_log(state):
            self.run.log(_scalars(metrics), step=state.step)

    def eval_end(self, state: RunState, results: dict[str, Any]) -> None:
        if self.run is None:
            return
        import wandb

        if results.get("kind") == "periodic":
            self.run.log(_scalars(results["values"]), step=state.step)
            return
        report = results.get("report") or {}
        columns, rows = held_out_rows(report)
        payload: dict[str, Any] = {"held_out": wandb.Table(columns=columns, data=rows)}
        for png in report_images(results.get("folder", state.output_dir)):
            payload[f"report/{png.stem}"] = wandb.Image(str(png))
        self.run.log(payload, step=state.step)
        for label, entry in (report.get("held_out") or {}).items():
            for k, v in _scalars(entry or {}).items():
                self.run.summary[f"held_out/{label}/{k}"] = v

    def fit_end(self, state: RunState, result: Any) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def exception(self, state: RunState, error: BaseException) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None


class MlflowLogger:
    """MLflow: step metrics, config as parameters, periodic held-out rewards, the final table and report
    images as artifacts. Default store: a local file store in the run folder (``RUN_DIR/mlruns``).

    Args:
        tracking_uri: an MLflow tracking URI (a server, sqlite:///..., file:...; default: file:RUN_DIR/mlruns)
        experiment: the MLflow experiment, created if missing
        run_name: the run's name (default: the run folder's name)
        tags: tags of the MLflow run
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "rats", run_name: str | None = None,
                 tags: dict[str, str] | None = None):
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("callbacks: 'mlflow' needs the mlflow package: pip install \"rats[mlflow]\"") from None
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = tags or {}
        self.client = None
        self.run_id: str | None = None

    def fit_start(self, state: RunState) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        out = Path(state.output_dir)
        uri = self.tracking_uri
        if uri is None:
            # The default is a file store in the run folder: no server, no database, works offline.
            # MLflow 3 keeps it in "maintenance mode" and refuses it unless this is set.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (out / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
        id_file = out / MLFLOW_ID_FILE
        self.run_id = _read_id(id_file)
        if self.run_id is None:
            run = self.client.create_run(exp_id, run_name=self.run_name or out.name, tags=self.tags)
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:500]) for k, v in _flatten(state.cfg.to_dict()).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            id_file.write_text(self.run_id + "\n")
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _log(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # "/" nests folders in MLflow's file store, where "reward_student" (a file) and
        # "reward_student/hps" (inside a folder of the same name) cannot both exist: use "." instead.
        metrics = [Metric(k.replace("/", "."), v, now, step) for k, v in _scalars(values).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def step_end(self, state: RunState, metrics: dict[str, float]) -> None:
        if self.client is not None and should_log(state):
            self._log(metrics, state.step)

    def eval_end(self, state: RunState, results: dict[str, Any]) -> None:
        if self.client is None:
            return
        if results.get("kind") == "periodic":
            self._log(results["values"], state.step)
            return
        report = results.get("report") or {}
        columns, rows = held_out_rows(report)
        self.client.log_dict(self.run_id, {"columns": columns, "data": rows}, "held_out.json")
        self.client.log_dict(self.run_id, json.loads(json.dumps(report, default=str)), "report.json")
        for png in report_images(results.get("folder", state.output_dir)):
            self.client.log_artifact(self.run_id, str(png), artifact_path="report")
        for label, entry in (report.get("held_out") or {}).items():
            self._log({f"held_out.{label}.{k}": v for k, v in (entry or {}).items()}, state.step)

    def fit_end(self, state: RunState, result: Any) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="FINISHED")
            self.client = None

    def exception(self, state: RunState, error: BaseException) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="KILLED" if isinstance(error, KeyboardInterrupt)
                                       or type(error).__name__ == "TrainingInterrupted" else "FAILED")
            self.client = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


@hookimpl
def register_callbacks(register):
    register("wandb", WandbLogger)
    register("mlflow", MlflowLogger)
