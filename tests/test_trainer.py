"""The DeepSpeed training loop on the toy backbone: ZeRO stages, resume, interruptions, safety."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rats_core.training import checkpoint as ckpt
from rats_core.cli import main
from rats_core.config import load_config
from rats_core.errors import CheckpointError, ConfigError, PluginError, TrainingError
from rats_core.training.trainer import Trainer, TrainingInterrupted, train

BASE = {
    "seed": 0,
    "backbone": {"name": "toy"},
    "student": {"steps": 2, "grad_steps": 1},
    "teacher": {"kind": "ema", "steps": 12, "ema_decay": 0.9},
    "rewards": [{"name": "toy-brightness", "weight": 10.0}],
    "gate": {"name": "sigmoid", "tau": 0.05},
    "horizons": {"name": "all"},
    "train": {"steps": 6, "batch_size": 4, "lr": 0.01, "checkpoint_every": 3, "progress": False},
    "data": {"prompts": ["a cat", "a dog", "a bird", "a fish", "a cow"]},
    "eval": {"at_end": False},
}


def write_config(tmp_path: Path, name: str = "cfg.yaml", **sections) -> Path:
    data = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    data.setdefault("output_dir", str(tmp_path / "run"))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, *overrides: str):
    return train(load_config(path, list(overrides)))


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def final_student(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / ckpt.step_name(step) / "student.safetensors"))


def test_run_writes_a_complete_run_folder(tmp_path):
    cfg = write_config(tmp_path)
    result = run(cfg)
    out = tmp_path / "run"
    assert result.steps == 6
    assert (out / "config.yaml").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("loss", "reward_student", "reward_teacher", "gate_mean", "shape_loss", "student_wins", "lr"):
        assert all(key in r for r in rows)
    assert any((out / "tensorboard").iterdir())
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3, 6]
    # weights changed, and the teacher moved towards the student (EMA): it changed between the checkpoints,
    # and it lags the student it follows
    base = result and final_student(out, 3)
    end = final_student(out, 6)
    assert any(not torch.equal(base[k], end[k]) for k in end)
    teacher_3, teacher_6 = (load_file(str(out / "checkpoints" / ckpt.step_name(s) / "teacher.safetensors"))
                            for s in (3, 6))
    assert set(teacher_6) == set(end)
    assert all(not torch.equal(teacher_3[k], teacher_6[k]) for k in teacher_6)
    assert all(not torch.equal(teacher_6[k], end[k]) for k in teacher_6)
    assert (out / "export" / "denoiser.safetensors").is_file()


def test_the_ema_teacher_follows_the_students_checkpoints(tmp_path):
    """teacher.kind: ema, μ = 0.9: after each optimizer step θ_T(s) = 0.9·θ_T(s − 1) + 0.1·θ_S(s), with θ_S(s)
    the student after step s -- checked between consecutive checkpoints with the recursion written out in
    float64, not through the teacher's own update."""
    cfg = write_config(tmp_path, train={"steps": 4, "checkpoint_every": 1, "keep_checkpoints": 10})
    run(cfg)
    out = tmp_path / "run"
    teacher = {s: load_file(str(out / "checkpoints" / ckpt.step_name(s) / "teacher.safetensors")) for s in range(1, 5)}
    student = {s: final_student(out, s) for s in range(1, 5)}
    assert teacher[1] and set(teacher[1]) == set(student[1])
    for s in range(2, 5):
        for k, t in teacher[s].items():
            by_hand = 0.9 * teacher[s - 1][k].double() + 0.1 * student[s][k].double()
            torch.testing.assert_close(t.double(), by_hand, rtol=0, atol=1e-7)
            assert not torch.equal(t, teacher[s - 1][k])


def test_a_frozen_teacher_stays_the_base_model(tmp_path):
    cfg = write_config(tmp_path, teacher={"kind": "frozen"},
                       train={"steps": 3, "checkpoint_every": 1, "keep_checkpoints": 10})
    run(cfg)
    out = tmp_path / "run"
    teacher = [load_file(str(out / "checkpoints" / ckpt.step_name(s) / "teacher.safetensors")) for s in (1, 3)]
    assert teacher[0] and all(torch.equal(teacher[0][k], teacher[1][k]) for k in teacher[0])
    assert any(not torch.equal(teacher[1][k], v) for k, v in final_student(out, 3).items())


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_match_stage_0(tmp_path, stage):
    ref = write_config(tmp_path, "ref.yaml", output_dir=str(tmp_path / "z0"))
    run(ref)
    other = write_config(tmp_path, "z.yaml", output_dir=str(tmp_path / f"z{stage}"),
                         deepspeed={"zero_optimization": {"stage": stage}})
    run(other)
    assert losses(tmp_path / f"z{stage}") == pytest.approx(losses(tmp_path / "z0"), rel=1e-6, abs=1e-7)
    a, b = final_student(tmp_path / "z0", 6), final_student(tmp_path / f"z{stage}", 6)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", [0, 2])
def test_resume_equals_uninterrupted_run(tmp_path, stage):
    ds = {"zero_optimization": {"stage": stage}}
    full = write_config(tmp_path, "full.yaml", output_dir=str(tmp_path / "full"), deepspeed=ds)
    run(full)
    half = write_config(tmp_path, "half.yaml", output_dir=str(tmp_path / "half"), deepspeed=ds)
    run(half, "train.steps=3")
    run(half)  # train.resume defaults to auto
    assert losses(tmp_path / "half") == losses(tmp_path / "full")
    a, b = final_student(tmp_path / "full", 6), final_student(tmp_path / "half", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = load_file(str(tmp_path / "full/checkpoints" / ckpt.step_name(6) / "teacher.safetensors"))
    tb = load_file(str(tmp_path / "half/checkpoints" / ckpt.step_name(6) / "teacher.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_resume_is_exact_with_lora_dropout(tmp_path):
    """2 steps + resume 1 == 3 steps bit for bit with student.lora.dropout: 0.1 -- the dropout masks
    come from torch's RNG, whose state (with numpy's and python's) each rank saves in its checkpoint."""
    lora = {"steps": 2, "lora": {"rank": 4, "alpha": 4, "dropout": 0.1}}
    train_cfg = {"steps": 3, "checkpoint_every": 0}
    full = write_config(tmp_path, "full.yaml", output_dir=str(tmp_path / "full"), student=lora, train=train_cfg)
    half = write_config(tmp_path, "half.yaml", output_dir=str(tmp_path / "half"), student=lora, train=train_cfg)
    run(full)
    run(half, "train.steps=2")
    opt = ckpt.load_torch_plain(tmp_path / "half/checkpoints" / ckpt.step_name(2) / "optimizer" / "rank_00000.pt")
    assert {"torch", "numpy", "python"} <= set(opt["rng"])
    run(half)
    assert losses(tmp_path / "half") == losses(tmp_path / "full")
    a, b = final_student(tmp_path / "full", 3), final_student(tmp_path / "half", 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without the saved RNG state the resumed step draws other dropout masks: the test can tell
    run(half, "train.steps=2", f"output_dir={tmp_path / 'norng'}")
    opt_file = tmp_path / "norng/checkpoints" / ckpt.step_name(2) / "optimizer" / "rank_00000.pt"
    saved = ckpt.load_torch_plain(opt_file)
    del saved["rng"]
    ckpt.save_torch_plain(saved, opt_file)
    run(half, f"output_dir={tmp_path / 'norng'}")
    assert losses(tmp_path / "norng")[:2] == losses(tmp_path / "full")[:2]
    assert losses(tmp_path / "norng")[2] != losses(tmp_path / "full")[2]


def test_rng_state_round_trips_through_a_plain_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    ckpt.save_torch_plain({"rng": ckpt.rng_state(torch.device("cpu"))}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(4), np.random.seed(4), random.seed(4)
    ckpt.set_rng_state(ckpt.load_torch_plain(tmp_path / "rng.pt")["rng"], torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_optimizer_state_that_is_not_plain_data_is_refused():
    """An unrecognised optimizer entry is never dropped (resume would refill it from a fresh
    optimizer): saving refuses it by name. DeepSpeed's own configuration entries are rebuilt live."""
    class Scaler:  # e.g. a custom optimizer's loss scaler object
        pass

    state = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    assert ckpt.plain_state({**state, "loss_scaler": Scaler()}) == state  # DeepSpeed's, rebuilt on resume
    with pytest.raises(CheckpointError, match="'my_scaler' of type Scaler.*silently reset"):
        ckpt.plain_state({**state, "my_scaler": Scaler()})


def test_resume_refuses_an_optimizer_entry_missing_from_the_checkpoint(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    run(cfg, "train.steps=1")
    real = torch.optim.AdamW.state_dict

    def with_extra(self):
        return {**real(self), "ema_of_grad_norm": torch.tensor(1.0)}  # state the checkpoint never saw

    monkeypatch.setattr(torch.optim.AdamW, "state_dict", with_extra)
    with pytest.raises(CheckpointError, match="lacks 'ema_of_grad_norm'.*from scratch"):
        run(cfg)


def test_kill_during_save_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, train={"steps": 6, "checkpoint_every": 2})
    real = ckpt.save_tensor_file
    calls = {"n": 0}

    def dying_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 4:  # the second checkpoint (step 4): die after its student file started
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt("killed mid-save")
        return real(tensors, path)

    monkeypatch.setattr(ckpt, "save_tensor_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    out = tmp_path / "run"
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2]  # the half-written step 4 is invisible
    monkeypatch.setattr(ckpt, "save_tensor_file", real)
    run(cfg)
    ref = write_config(tmp_path, "ref.yaml", output_dir=str(tmp_path / "ref"), train={"steps": 6, "checkpoint_every": 2})
    run(ref)
    assert losses(tmp_path / "ref")[-1] == losses(out)[-1]
    a, b = final_student(out, 6), final_student(tmp_path / "ref", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_and_resume_finishes_identically(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, train={"steps": 6, "checkpoint_every": 0})
    original = Trainer.train_step

    def step_then_signal(self):
        values = original(self)
        if self.step == 2:  # the 3rd step is under way when the signal arrives
            os.kill(os.getpid(), signal.SIGTERM)
        return values

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(TrainingInterrupted) as info:
        run(cfg)
    assert "Run the same command again" in str(info.value)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [3]
    # the handlers from before the run are back (not the run's own, which would save a checkpoint)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    monkeypatch.setattr(Trainer, "train_step", original)
    run(cfg)
    ref = write_config(tmp_path, "ref.yaml", output_dir=str(tmp_path / "ref"), train={"steps": 6, "checkpoint_every": 0})
    run(ref)
    a, b = final_student(tmp_path / "run", 6), final_student(tmp_path / "ref", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from rats_core.method.objective import RatsObjective

    cfg = write_config(tmp_path, train={"steps": 6, "checkpoint_every": 2})
    original = RatsObjective.__call__
    count = {"n": 0}

    def nan_at_5(self, *args, **kwargs):
        loss, metrics = original(self, *args, **kwargs)
        count["n"] += 1
        return (loss * float("nan") if count["n"] == 5 else loss), metrics

    monkeypatch.setattr(RatsObjective, "__call__", nan_at_5)
    with pytest.raises(TrainingError, match="non-finite"):
        run(cfg)
    ckpts = ckpt.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in ckpts] == [2, 4]
    assert all(torch.isfinite(v).all() for v in final_student(tmp_path / "run", 4).values())


def test_reward_plugin_raising_mid_run_names_it(tmp_path, monkeypatch):
    from rats_plugins import toy

    calls = {"n": 0}
    original = toy.Brightness.__call__

    def flaky(self, images, prompts):
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("GPU fell off")
        return original(self, images, prompts)

    monkeypatch.setattr(toy.Brightness, "__call__", flaky)
    cfg = write_config(tmp_path, train={"steps": 6, "checkpoint_every": 2})
    with pytest.raises(PluginError, match="toy-brightness.*GPU fell off"):
        run(cfg)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]


def test_lora_trains_only_adapters_and_exports_them(tmp_path):
    cfg = write_config(tmp_path, student={"steps": 2, "lora": {"rank": 4, "alpha": 4}})
    run(cfg)
    state = json.loads((tmp_path / "run/checkpoints" / ckpt.step_name(6) / "state.json").read_text())
    assert state["lora"] and state["trainable"] and all("lora_" in n for n in state["trainable"])
    assert (tmp_path / "run" / "export_lora").is_dir()


def test_bf16_run_is_finite(tmp_path):
    cfg = write_config(tmp_path, train={"steps": 3, "precision": "bf16", "checkpoint_every": 0})
    run(cfg)
    assert all(torch.isfinite(torch.tensor(x)) for x in losses(tmp_path / "run"))


def test_gradient_accumulation_and_schedule(tmp_path):
    cfg = write_config(
        tmp_path, train={"steps": 4, "gradient_accumulation": 2, "lr_scheduler": "cosine", "warmup_steps": 1,
                         "checkpoint_every": 0}
    )
    run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] < lrs[1]


def test_resume_never_refuses_existing_checkpoints(tmp_path):
    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    run(cfg)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(cfg, "train.resume=never")


def test_second_run_on_a_busy_output_dir_is_refused(tmp_path):
    from rats_core.training.trainer import RunLock

    out = tmp_path / "run"
    lock = RunLock(out)
    lock.acquire()
    try:
        cfg = write_config(tmp_path)
        with pytest.raises(TrainingError, match="in use"):
            run(cfg)
    finally:
        lock.release()
    assert not (out / "checkpoints").exists()


def test_pickle_with_code_in_a_checkpoint_is_refused_unrun(tmp_path):
    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    run(cfg)
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    opt = tmp_path / "run/checkpoints" / ckpt.step_name(2) / "optimizer" / "rank_00000.pt"
    opt.write_bytes(pickle.dumps({"optimizer": Evil()}))
    with pytest.raises(CheckpointError, match="refused"):
        run(cfg, "train.steps=4")
    assert not target.exists()


def test_checkpoint_of_other_architecture_names_the_tensor(tmp_path):
    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    run(cfg)
    path = tmp_path / "run/checkpoints" / ckpt.step_name(2) / "student.safetensors"
    state = load_file(str(path))
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)
    ckpt.save_tensor_file(state, path)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        run(cfg, "train.steps=4")


def test_cli_user_errors_exit_2_without_traceback(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["run", str(cfg), "gate.name=sigmod"]) == 2
    err = capsys.readouterr().err
    assert "sigmoid" in err and "Traceback" not in err
    blocker = tmp_path / "a_file"  # a path under a regular file cannot be created, even by root
    blocker.write_text("")
    assert main(["run", str(cfg), f"output_dir={blocker}/run"]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "Traceback" not in err


@pytest.mark.slow
def test_two_processes_zero2_match_one_process(tmp_path):
    """torchrun with 2 CPU ranks × batch 2 gives the losses of 1 rank × batch 4."""
    one = write_config(tmp_path, "one.yaml", output_dir=str(tmp_path / "one"), deepspeed={"zero_optimization": {"stage": 2}})
    run(one)
    two = write_config(
        tmp_path, "two.yaml", output_dir=str(tmp_path / "two"),
        train={"batch_size": 2}, deepspeed={"zero_optimization": {"stage": 2}},
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rats_core.cli", "run", str(two)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5, abs=1e-6)
    a, b = final_student(tmp_path / "one", 6), final_student(tmp_path / "two", 6)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chosen,expected", [("train", "bf16"), ("fp32", "fp32")])
def test_end_of_run_evaluation_runs_in_the_training_precision(tmp_path, monkeypatch, chosen, expected):
    """A bf16 run is evaluated under bf16 autocast by default (eval.precision: train), in float32
    without autocast with eval.precision: fp32; report.json and report.md say which."""
    from rats_core.evaluation import evaluate

    seen = []
    real = evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda *a, **k: seen.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None) or real(*a, **k))
    cfg = write_config(tmp_path, train={"steps": 2, "precision": "bf16", "checkpoint_every": 0, "export": False},
                       eval={"at_end": True, "precision": chosen, "prompts": ["a cat", "a cow"], "batch_size": 2})
    run(cfg)
    assert seen and set(seen) == {torch.bfloat16 if expected == "bf16" else None}
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["train_precision"] == "bf16" and report["eval_precision"] == expected
    assert f"training steps in bf16; evaluated in {expected} (`eval.precision`)" in (
        tmp_path / "run/report.md").read_text()


def test_eval_precision_is_a_strict_choice(tmp_path):
    with pytest.raises(ConfigError, match="eval.precision"):
        load_config(write_config(tmp_path, eval={"precision": "bf32"}))


def test_gate_warns_once_when_tau_is_far_above_the_reward_gaps(tmp_path, caplog):
    """A raw-scale reward whose gaps |R_T - R_S| are ~0.01 under tau = 1: every g is ~0.5 (always
    half-distil). After warm-up the gate's spread is logged and one warning names the numbers and a tau."""
    cfg = write_config(tmp_path, rewards=[{"name": "toy-brightness", "weight": 1.0}], gate={"name": "sigmoid", "tau": 1.0},
                       train={"steps": 8, "warmup_steps": 2, "checkpoint_every": 0, "export": False})
    with caplog.at_level("WARNING", logger="rats"):
        run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    gaps = [r["reward_gap"] for r in rows]
    assert 0.001 < sum(gaps) / len(gaps) < 0.05, gaps  # raw gaps of about 0.01
    assert all(r["gate_low"] == 0 and r["gate_high"] == 0 and abs(r["gate_mean"] - 0.5) < 0.02 for r in rows)
    warnings = [m for m in caplog.messages if m.startswith("gate:")]
    assert len(warnings) == 1, caplog.messages
    assert "over steps 3-7" in warnings[0] and "gate.tau=1" in warnings[0]
    assert "normalize: fixed" in warnings[0] and "Set gate.tau=0.00" in warnings[0]


def test_gate_check_stays_quiet_when_the_gate_moves(tmp_path, caplog):
    from rats_core.training.gate_check import GateCheck, suggested_tau

    cfg = load_config(write_config(tmp_path))  # tau 0.05 with gaps of about 0.1: the gate saturates
    check = GateCheck(cfg)
    moving = {"gate_mean": 0.6, "gate_low": 0.25, "gate_high": 0.5, "reward_gap": 0.1}
    assert all(check(step, moving) is None for step in range(1, 10)) and check.done
    stuck = GateCheck(cfg)
    flat = {"gate_mean": 0.5, "gate_low": 0.0, "gate_high": 0.0, "reward_gap": 0.001}
    assert [stuck(step, flat) is None for step in range(1, 6)] == [True] * 4 + [False]
    assert stuck(6, flat) is None  # once
    assert suggested_tau(0.011) == 0.005 and suggested_tau(2.0) == 0.9
    assert GateCheck(load_config(write_config(tmp_path, "h.yaml", gate={"name": "hard"}))).done


@pytest.mark.parametrize("stage", [0, 3])
def test_the_base_weights_are_read_from_their_file_and_swapped_in_and_out_exactly(tmp_path, stage):
    """Issue 29 (ZeRO-3 host memory): the run holds no copy of the base weights (base.safetensors is read
    tensor by tensor when the report swaps them in), and the swap puts the trained weights back bit for bit
    (under ZeRO-3 from each rank's own shards, not from a gathered copy of the model)."""
    from rats_core.evaluation.in_training import swapped_weights
    from rats_core.training.trainer import Trainer

    cfg = write_config(tmp_path, deepspeed={"zero_optimization": {"stage": stage}},
                       eval={"at_end": True}, train={"steps": 2, "checkpoint_every": 0})
    trainer = Trainer(load_config(cfg))
    try:
        trainer.setup()
        assert isinstance(trainer.base_state, ckpt.TensorFile)
        base = load_file(str(tmp_path / "run" / "base.safetensors"))
        trainer.train_step()
        trained = trainer.student_state(rank0_only=False)
        assert any(not torch.equal(trained[k], base[k]) for k in base)
        with swapped_weights(trainer, trainer.base_state):
            during = trainer.student_state(rank0_only=False)
        after = trainer.student_state(rank0_only=False)
    finally:
        trainer.cleanup()
    for k in base:
        assert torch.equal(during[k], base[k]), k
        assert torch.equal(after[k], trained[k]), k


def test_a_tensor_file_reads_one_tensor_at_a_time(tmp_path, monkeypatch):
    """Checking a checkpoint's names and shapes reads no tensor; loading reads each tensor once."""
    import safetensors

    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    path = tmp_path / "t.safetensors"
    ckpt.save_tensor_file(tensors, path)
    reads = []
    real = safetensors.safe_open

    class Counting:
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_slice(self, name):
            return self.f.get_slice(name)

        def get_tensor(self, name):
            reads.append(name)
            return self.f.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    f = ckpt.open_tensor_file(path)
    ckpt.check_tensors(f, {"a": (2, 3), "b": (4,)}, path, ["a", "b"])
    assert reads == [] and f.shapes == {"a": (2, 3), "b": (4,)} and sorted(f) == ["a", "b"]
    with pytest.raises(CheckpointError, match="tensor 'a' has shape \\(2, 3\\), the model expects \\(3, 2\\)"):
        ckpt.check_tensors(f, {"a": (3, 2), "b": (4,)}, path, ["a", "b"])
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(torch.zeros(2, 3))
    module.b = torch.nn.Parameter(torch.zeros(4))
    ckpt.load_into(module, f, path, ["a", "b"])
    assert sorted(reads) == ["a", "b"] and torch.equal(module.a, tensors["a"])
