"""The embedded default experiment, short: `rats-run experiments/digits.yaml` for a few steps,
through the real CLI, framework and plugins, writing the full report (issue 10's shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rats_core.cli import run_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_digits_experiment_short_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "digits"
    rc = run_main([
        str(ROOT / "experiments" / "digits.yaml"),
        f"output_dir={out}", "train.steps=3", "train.batch_size=4", "train.checkpoint_every=0",
        "train.progress=false", "eval.every=2", "eval.images_per_prompt=2",
        # a few held-out phrasings keep this under a minute; the full run uses all 30
        "eval.prompts=[a sketch of the digit seven, the numeral 3, an image of a handwritten zero]",
    ])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    held = report["held_out"]
    assert held["base"]["steps"] == 2 and held["student"]["steps"] == 2 and held["teacher"]["steps"] == 50
    for who in ("base", "teacher", "student"):
        for key in ("reward", "judge_accuracy", "fid"):
            assert isinstance(held[who][key], float), (who, key)
        assert 0.0 <= held[who]["judge_accuracy"] <= 1.0 and held[who]["fid"] >= 0.0
    assert "overtake_step" in report
    for name in ("grid.png", "curves.png", "reward_vs_nfe.png"):
        assert (out / "report" / name).stat().st_size > 1000
    assert (out / "report.md").read_text().count("|") > 10
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/reward_student" in r for r in rows)
    assert (out / "export").is_dir()
