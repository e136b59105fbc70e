"""Training events and callbacks (rats_core/training/callbacks.py): a third-party callback package found by entry
point, failures named by plugin without losing a checkpoint, and the W&B / MLflow trackers offline."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rats_core.training import checkpoint as ckpt
from rats_core.cli import run_main

REPO = Path(__file__).resolve().parents[1]

TOY = {
    "seed": 0,
    "backbone": {"name": "toy", "resolution": 16},
    "student": {"steps": 2, "grad_steps": 1},
    "teacher": {"kind": "ema", "steps": 8, "ema_decay": 0.9},
    "rewards": [{"name": "toy-brightness", "weight": 10.0}],
    "train": {"steps": 4, "batch_size": 2, "lr": 0.01, "checkpoint_every": 2, "progress": False},
    "data": {"prompts": ["a cat", "a dog"], "eval_prompts": ["a bird", "a fish"]},
    "eval": {"at_end": False, "every": 2, "batch_size": 4},
}


def write(tmp: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(TOY))
    cfg["output_dir"] = str(tmp / "run")
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            cfg[section][leaf] = value
        else:
            cfg[section] = value
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ----------------------------------------------------------------------------- a third-party package

EVENT_LOG_PLUGIN = textwrap.dedent('''
    import json
    from rats_core import hookimpl

    class EventLog:
        """Append every event to a JSON-lines file."""

        def __init__(self, path: str):
            self.path = path

        def _log(self, state, event, **extra):
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"event": event, "step": state.step, "rank": state.rank, **extra}) + "\\n")

        def fit_start(self, state):
            self._log(state, "fit_start")

        def step_end(self, state, metrics):
            self._log(state, "step_end", loss=metrics["loss"])

        def eval_end(self, state, results):
            self._log(state, "eval_end", kind=results["kind"], values=results.get("values"))

        def checkpoint_saved(self, state, folder):
            self._log(state, "checkpoint_saved", folder=str(folder))

        def fit_end(self, state, result):
            self._log(state, "fit_end", steps=result.steps)

    @hookimpl
    def register_callbacks(register):
        register("event-log", EventLog)
''')


def test_third_party_callback_package_receives_step_eval_and_checkpoint_events(tmp_path):
    """An installed distribution (dist-info with an entry point in the ``rats`` group), named in the
    config's ``callbacks:``, sees every event of a real ``rats-run`` in order."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "rats_eventlog.py").write_text(EVENT_LOG_PLUGIN)
    dist = site / "rats_eventlog-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rats-eventlog\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rats]\neventlog = rats_eventlog\n")
    events = tmp_path / "events.jsonl"
    cfg = write(tmp_path, callbacks=[{"name": "event-log", "path": str(events)}])
    env = {k: v for k, v in os.environ.items() if k != "RATS_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "rats_core.cli", "run", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    seen = [(r["event"], r["step"]) for r in rows]
    assert seen == [
        ("fit_start", 0),
        ("step_end", 1),
        ("eval_end", 2), ("checkpoint_saved", 2), ("step_end", 2),  # built-ins act first (docs/plugins.md)
        ("step_end", 3),
        ("eval_end", 4), ("step_end", 4),  # the last step's checkpoint is the trainer's final save
        ("checkpoint_saved", 4),
        ("fit_end", 4),
    ]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if r["event"] == "step_end"] == [m["loss"] for m in metrics if "loss" in m]
    evals = [r for r in rows if r["event"] == "eval_end"]
    assert all(r["kind"] == "periodic" and "eval/reward_student" in r["values"] for r in evals)
    assert rows[3]["folder"].endswith(ckpt.step_name(2))


# ----------------------------------------------------------------------------- failures


class Boom:
    """Raises at step 3."""

    def step_end(self, state, metrics):
        if state.step == 3:
            raise RuntimeError("tracker unreachable")


class BoomPlugin:
    from rats_core import hookimpl

    @hookimpl
    def register_callbacks(self, register):
        register("boom", Boom)


def test_a_failing_callback_is_named_and_loses_no_checkpoint(tmp_path, capsys, fresh_plugins):
    fresh_plugins.register_plugin(BoomPlugin(), name="rats-boom")
    cfg = write(tmp_path, callbacks=[{"name": "boom"}], eval__every=0, train__checkpoint_every=0)
    assert run_main([str(cfg)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: callback 'boom' (plugin rats-boom) raised RuntimeError in step_end: tracker unreachable"]
    assert "Traceback" not in err
    # the step it failed after is kept (checkpoint_every=0 would otherwise have saved nothing yet)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [3]
    # without the failing callback, the same run resumes from there
    assert run_main([str(cfg), "callbacks=[]"]) == 0
    assert "resumed from" in capsys.readouterr().err


def test_callback_options_are_validated_like_every_component(tmp_path, capsys):
    cfg = write(tmp_path, callbacks=[{"name": "mlflow", "experimnet": "x"}])
    assert run_main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "callbacks.0" in err and "experimnet" in err and "experiment" in err
    assert not (tmp_path / "run").exists()
    assert run_main([str(write(tmp_path, callbacks=[{"name": "wandbb"}]))]) == 2
    assert "wandb" in capsys.readouterr().err


# ----------------------------------------------------------------------------- trackers, offline


def _wandb_records(path: Path):
    """Records of a W&B run file (LevelDB log format: 7-byte file header, 32 KiB blocks, chunks with a
    7-byte header: crc32c, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_folder_holds_step_metrics_and_the_final_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = write(tmp_path, callbacks=[{"name": "wandb", "mode": "offline", "project": "rats-test"}],
                eval__at_end=True)
    assert run_main([str(cfg)]) == 0
    files = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    # wandb-core writes the file from its own process; wait until the run's exit record is there
    import time

    deadline = time.time() + 60
    while time.time() < deadline:
        records = list(_wandb_records(Path(files[0])))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
    history, config = [], None
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "run":
            config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.run.config.update}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [h["_step"] for h in history] == [1, 2, 3, 4]
    assert [h["loss"] for h in history] == pytest.approx([m["loss"] for m in steps])
    assert "eval/reward_student" in history[1] and "eval/reward_student" in history[3]
    final = history[-1]
    assert final["held_out/_type"] == "table-file" and final["held_out/nrows"] >= 3
    assert any(k.startswith("report/grid") for k in final)
    train = config["train"]
    assert train.get("value", train)["steps"] == 4  # the resolved config, as W&B's run config


def test_mlflow_file_store_holds_step_metrics_config_and_final_table_and_resumes_the_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = write(tmp_path, callbacks=[{"name": "mlflow", "experiment": "rats-test"}], eval__at_end=True,
                train__steps=2)
    assert run_main([str(cfg)]) == 0
    assert run_main([str(cfg), "train.steps=4"]) == 0  # resumed: the same MLflow run goes on
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    exp = client.get_experiment_by_name("rats-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    loss = client.get_metric_history(run_id, "loss")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in loss] == [1, 2, 3, 4]
    assert [m.value for m in loss] == pytest.approx([m["loss"] for m in metrics if "loss" in m])
    assert [m.step for m in client.get_metric_history(run_id, "eval.reward_student")] == [2, 4]
    assert runs[0].data.params["train.lr"] == "0.01" and runs[0].info.status == "FINISHED"
    table = json.loads(Path(client.download_artifacts(run_id, "held_out.json", str(tmp_path / "dl"))).read_text())
    assert table["columns"][0] == "model" and {"base", "teacher", "student"} <= {row[0] for row in table["data"]}
    images = {a.path for a in client.list_artifacts(run_id, "report")}
    assert "report/grid.png" in images
