"""CPU threads: the passive OpenMP wait policy, ``train.threads`` / ``--threads``, and ``auto`` = free cores."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from rats_core.training import threads as th
from rats_core.config import load_config
from rats_core.errors import ConfigError, UsageError


TOY = """\
backbone: {name: toy, resolution: 8}
student: {steps: 2}
teacher: {steps: 8}
rewards: [{name: toy-brightness}]
train: {steps: 3, batch_size: 2}
"""


@pytest.fixture
def toy_config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    return path


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(extra)
    return env


@pytest.mark.parametrize("extra, expected", [
    ({}, "PASSIVE"),                                  # set by `import rats_core`, before torch loads OpenMP
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),        # the user's choice stays
    ({"GOMP_SPINCOUNT": "1000"}, None),               # so does a spin count
])
def test_import_rats_core_makes_openmp_threads_sleep_instead_of_spinning(extra, expected):
    code = "import os, rats_core, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(**extra), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_no_policy_change_once_torch_is_imported(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert "torch" in sys.modules
    assert th.passive_openmp_wait() is False and "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("0", 0), ("3", 3), (2, 2)])
def test_parse_threads(value, expected):
    assert th.parse_threads(value) == expected


@pytest.mark.parametrize("value", ["-1", "many", "1.5", "", True])
def test_parse_threads_rejects(value):
    with pytest.raises(UsageError, match="expected auto, 0"):
        th.parse_threads(value)


def test_train_threads_config_values(toy_config):
    assert load_config(toy_config).train.threads == "auto"
    assert load_config(toy_config, ["train.threads=0"]).train.threads == 0
    assert load_config(toy_config, ["train.threads=3"]).train.threads == 3
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="train.threads"):
            load_config(toy_config, [f"train.threads={bad}"])


def test_free_cores_takes_out_this_process_and_counts_the_others(monkeypatch):
    # 2 cores; over the window the machine was busy 1.5 cores on average, 0.5 of them this process
    samples = iter([(0.0, 0.0), (150.0, 200.0)])  # (busy, total) jiffies: 75% of 2 cores busy
    clock = iter([0.0, 1.0])
    cpu = iter([0.0, 0.5])
    monkeypatch.setattr(th, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(th.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(th.time, "process_time", lambda: next(cpu))
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    monkeypatch.setattr(th.os, "cpu_count", lambda: 2)
    assert th.busy_cores_elsewhere() == pytest.approx(1.0)
    monkeypatch.setattr(th, "busy_cores_elsewhere", lambda window=0: 1.0)
    monkeypatch.setattr(th, "available_cores", lambda: 2)
    assert th.free_cores() == 1
    monkeypatch.setattr(th, "busy_cores_elsewhere", lambda window=0: 0.1)  # a tool in the background
    assert th.free_cores() == 2
    monkeypatch.setattr(th, "busy_cores_elsewhere", lambda window=0: 5.0)  # never fewer than one
    assert th.free_cores() == 1
    monkeypatch.setattr(th, "busy_cores_elsewhere", lambda window=0: None)  # no /proc: all cores
    assert th.free_cores() == 2


def test_choose_threads(monkeypatch):
    monkeypatch.setattr(th, "free_cores", lambda window=0: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert th.choose_threads("auto") == 2  # the free cores less one
    monkeypatch.setattr(th, "free_cores", lambda window=0: 1)
    assert th.choose_threads("auto") == 1  # never fewer than one
    assert th.choose_threads(0) is None  # torch's default, untouched
    assert th.choose_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's environment wins over auto
    assert th.choose_threads("auto") == 1


def test_auto_follows_the_free_cores_while_training(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    free = {"n": 3}
    monkeypatch.setattr(th, "free_cores", lambda window=0: free["n"])
    policy = th.ThreadPolicy("auto", recheck=0.0)
    assert policy.apply() == 2 and torch.get_num_threads() == 2
    free["n"] = 1  # another job started
    policy.tick()
    assert torch.get_num_threads() == 1
    fixed = th.ThreadPolicy(2, recheck=0.0)
    fixed.apply()
    free["n"] = 1
    fixed.tick()  # a fixed count is never changed
    assert torch.get_num_threads() == 2


def test_auto_on_a_machine_whose_cores_are_all_busy_takes_one_thread():
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(th.available_cores())]
    try:
        time.sleep(0.5)
        assert th.free_cores() == 1
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_trainer_applies_train_threads(tmp_path, toy_config):
    from rats_core.training.trainer import Trainer

    torch.set_num_threads(2)
    cfg = load_config(toy_config, [f"output_dir={tmp_path / 'run'}", "train.threads=1", "eval.at_end=false",
                                   "train.progress=false", "train.steps=1"])
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        assert torch.get_num_threads() == 1 and trainer.thread_policy.threads == 1
    finally:
        trainer.cleanup()


def test_eval_and_sample_take_threads(capsys):
    from rats_core.cli import main

    assert main(["sample", "no-such-run", "a cat", "-o", "x.png", "--threads", "many"]) == 2
    assert "--threads 'many'" in capsys.readouterr().err


@pytest.mark.slow
def test_threads_benchmark_runs_at_its_smallest_settings():
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "threads.py"), "--steps", "1", "--budget", "30",
                          "--load", "0", "--threads", "1", "--wait", "passive"], capture_output=True, text=True,
                         timeout=600, check=True)
    data = json.loads(out.stdout)
    (row,) = data["results"]
    assert row["torch_threads"] == 1 and row["wait_policy"] == "passive" and row["steps_timed"] == 1
    assert row["step_median_s"] > 0 and row["cpu_per_step_s"] > 0


def _spin_probe(extra_env: dict, busy: float | None, code_after: str = "") -> dict:
    """In a fresh process: import rats_core (passive), then spin_if_idle with the other processes' load
    faked; report the policy torch will read and what auto chooses."""
    code = ("import json, os, sys, rats_core\n"
            "from rats_core.training import threads as th\n"
            f"th.busy_cores_elsewhere = lambda window=0.3: {busy!r}\n"
            "switched = th.spin_if_idle()\n"
            + code_after +
            "print(json.dumps({'switched': switched, 'wait': os.environ.get('OMP_WAIT_POLICY'),"
            " 'spin': os.environ.get('GOMP_SPINCOUNT'), 'auto': th.choose_threads('auto'),"
            " 'cores': th.available_cores(), 'recheck': th.ThreadPolicy().recheck}))\n")
    env = _env(**extra_env)
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_WORLD_SIZE", None)
    env.update({k: v for k, v in extra_env.items()})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_idle_machine_spins_on_every_core_and_a_busy_one_stays_passive():
    """rats-run on an idle machine undoes its own passive policy before torch loads OpenMP (bounded spinning,
    every core, re-measured sooner); with another process on a core it stays passive and leaves one core."""
    idle = _spin_probe({}, busy=0.0)
    assert idle["switched"] and idle["wait"] is None and idle["spin"] == th.IDLE_SPINCOUNT
    assert idle["auto"] == idle["cores"] and idle["recheck"] == th.RECHECK_SPINNING
    busy = _spin_probe({}, busy=1.0)
    assert not busy["switched"] and busy["wait"] == "PASSIVE" and busy["spin"] is None
    assert busy["auto"] == max(1, busy["cores"] - 2)  # one core taken, one left over (passive)
    assert busy["recheck"] == th.RECHECK_SECONDS


@pytest.mark.parametrize("extra", [{"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}, {"OMP_NUM_THREADS": "1"},
                                   {"LOCAL_WORLD_SIZE": "2"}])
def test_spin_if_idle_never_overrides_the_user_or_several_ranks(extra):
    out = _spin_probe(extra, busy=0.0)
    assert not out["switched"]
    assert out["spin"] == extra.get("GOMP_SPINCOUNT")


def test_spinning_threads_drop_to_the_free_cores_when_another_job_arrives():
    """Once spinning, auto follows the free cores (a busy core: one thread fewer), so a job started beside
    the run costs at most one re-measurement of spinning against it."""
    out = _spin_probe({}, busy=0.0, code_after="th.busy_cores_elsewhere = lambda window=0.3: 1.0\n")
    assert out["switched"] and out["auto"] == max(1, out["cores"] - 1)
