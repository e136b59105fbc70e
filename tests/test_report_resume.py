"""The end-of-run report after a resume covers the whole run (metrics.jsonl), and the overtaking rule."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from rats_core.config import load_config
from rats_core.evaluation.history import overtake_step, run_history, stays_ahead
from rats_core.training.trainer import Trainer, train

BASE = {
    "seed": 0,
    "backbone": {"name": "toy"},
    "student": {"steps": 2, "grad_steps": 1},
    "teacher": {"kind": "ema", "steps": 12, "ema_decay": 0.9},
    "rewards": [{"name": "toy-brightness", "weight": 10.0}],
    "gate": {"name": "sigmoid", "tau": 0.05},
    "train": {"steps": 8, "batch_size": 4, "lr": 0.01, "checkpoint_every": 4, "progress": False, "threads": 1},
    "data": {"prompts": ["a cat", "a dog", "a bird", "a fish", "a cow"], "eval_prompts": ["a cat", "a cow"]},
    "eval": {"at_end": True, "every": 2, "batch_size": 2},
}


def _records(lines):
    return [json.loads(x) for x in lines]


def test_run_history_keeps_the_last_record_of_each_step(tmp_path):
    rows = [{"step": s, "reward_student": 0.0, "reward_teacher": 1.0} for s in range(1, 35)]
    rows.insert(25, {"step": 25, "eval/reward_student": 0.6, "eval/reward_teacher": 0.5})
    # killed at step 34 after the checkpoint at 30; the rerun logs 31..40 again
    rows += [{"step": s, "reward_student": 2.0, "reward_teacher": 1.0} for s in range(31, 41)]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 41, "loss"'  # a torn last line
    (tmp_path / "metrics.jsonl").write_text(text)
    history = run_history(tmp_path)
    train_steps = [h["step"] for h in history if "reward_student" in h]
    assert train_steps == list(range(1, 41))
    assert [h["reward_student"] for h in history if h.get("step") == 31 and "reward_student" in h] == [2.0]
    # the held-out evaluation at step 25 comes right after step 25's training record
    i = next(i for i, h in enumerate(history) if "eval/reward_student" in h)
    assert history[i - 1]["step"] == 25 and history[i]["step"] == 25
    # the case: the student was already ahead at the held-out evaluation of step 25
    step, source = overtake_step(history)
    assert step == 25 and source.startswith("held-out evaluations during training")
    assert stays_ahead(history, step) is True
    assert len(run_history(tmp_path, last_step=30)) == 31  # 30 training records + the evaluation
    assert run_history(tmp_path / "missing", fallback=[{"step": 1}]) == [{"step": 1}]


def test_overtake_rule_on_training_batches():
    history = [{"step": s, "reward_student": float(s >= 5), "reward_teacher": 0.5} for s in range(1, 41)]
    step, source = overtake_step(history)  # window 2: the average passes 0.5 at step 6
    assert step == 6 and "moving average over 2 steps" in source
    assert overtake_step([{"step": 1, "reward_student": 0.0, "reward_teacher": 1.0}])[0] is None
    assert stays_ahead(history, step) is None


def _config(tmp_path: Path) -> Path:
    data = json.loads(json.dumps(BASE))
    data["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_report_after_a_crash_and_resume_covers_every_step(tmp_path, monkeypatch, capsys):
    cfg_path = _config(tmp_path)
    original = Trainer.train_step

    def crash_at_step_7(self):
        if self.step == 6:  # steps 1-6 logged, checkpoint at 4: like kill -9 during step 7
            raise RuntimeError("killed")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_7)
    with pytest.raises(RuntimeError, match="killed"):
        train(load_config(cfg_path))
    assert "training: 8 steps on 1 rank (cpu)" in capsys.readouterr().err  # the start banner
    monkeypatch.setattr(Trainer, "train_step", original)
    old = os.umask(0o022)
    try:
        result = train(load_config(cfg_path))  # resumes from step 4
    finally:
        os.umask(old)
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["history"] == {"train_records": 8, "first_step": 1, "last_step": 8, "eval_steps": [2, 4, 6, 8]}
    assert [h["step"] for h in result.history if "loss" in h] == [5, 6, 7, 8]  # this process's own records
    history = run_history(run)
    assert (report["overtake_step"], report["overtake_source"]) == overtake_step(history)
    md = (run / "report.md").read_text()
    assert "8 logged steps (1–8)" in md and "held-out evaluations at steps 2, 4, 6, 8" in md
    # the banner, report.json and report.md say that it was interrupted, where it resumed, on how many ranks
    err = capsys.readouterr().err
    assert "resumed from" in err and "(step 4/8) on 1 rank" in err and "training:" not in err
    assert (report["ranks"], report["resumed_at"]) == (1, [4])
    assert "Trained on 1 rank; interrupted and resumed once, from the checkpoint at step 4." in md
    # report.json is readable like the other files of the run
    assert stat.S_IMODE((run / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((run / "config.yaml").stat().st_mode) == 0o644


def test_rerunning_a_finished_run_says_so_and_keeps_the_report(tmp_path, capsys):
    cfg_path = _config(tmp_path)
    train(load_config(cfg_path))
    report_md = tmp_path / "run" / "report.md"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["ranks"], report["resumed_at"]) == (1, [])
    assert "Trained on 1 rank, in one go (never interrupted)." in report_md.read_text()
    before = report_md.stat().st_mtime_ns
    capsys.readouterr()
    train(load_config(cfg_path))
    err = capsys.readouterr().err
    assert "already finished: step 8/8" in err and "resumed from" not in err
    assert report_md.stat().st_mtime_ns == before and "kept; delete it to rebuild" in err
    report_md.unlink()  # a missing report is rebuilt
    train(load_config(cfg_path))
    assert report_md.is_file()
