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
    # issue 16: a verdict per criterion and a reward-hacking flag, not one student_beats_teacher boolean
    # issue 28: every criterion by the one rule of rats_core/evaluation/stats.py, paired per image, and a bottom line
    verdict = report["verdict"]
    for criterion in ("reward", "judge", "realism"):
        assert verdict[criterion]["status"] in ("yes", "no", "within noise", "not testable"), criterion
        assert verdict[criterion]["holds"] in (True, False, None), criterion
    assert verdict["reward"]["test"].startswith("paired bootstrap") and verdict["judge"]["test"].startswith("McNemar")
    assert verdict["realism"]["status"] == "not testable"  # one run's FID has no interval
    assert verdict["bottom_line"]["status"] in ("not testable", "not supported")  # never supported in one run
    assert isinstance(verdict["reward_hacking"]["flag"], bool) and "all_hold" in verdict
    assert verdict["fair_test"]["judge_base_n"] == held["base_teacher_steps"]["judge_accuracy"]
    per_image = report["per_image"]
    assert len(per_image["prompts"]) == 6 and len(per_image["reward"]["student"]) == 6
    assert sum(per_image["judge_right"]["teacher"]) / 6 == pytest.approx(held["teacher"]["judge_accuracy"])
    assert "student_beats_teacher" not in json.dumps(report)
    md = (out / "report.md").read_text().splitlines()
    assert md[0].startswith("# RATS report") and md[2].startswith("Verdict: not ")
    assert "## Verdict (student at K steps vs teacher at N steps, held-out prompts)" in md
    for name in ("grid.png", "curves.png", "reward_vs_nfe.png"):
        assert (out / "report" / name).stat().st_size > 1000
    assert (out / "report.md").read_text().count("|") > 10
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/reward_student" in r for r in rows)
    assert (out / "export").is_dir()


def test_rats_eval_grid_is_framed_by_the_judge(tmp_path, monkeypatch, capsys):
    """`rats eval` asks the configured judge metric for its marks of the grid's images (as the end-of-run
    report does) and hands them to the grid."""
    from rats_core.evaluation import report
    from rats_core.cli import main

    seen = {}
    real = report.image_grid

    def spy(images, prompts, path, *a, marks=None, **k):
        seen["marks"], seen["prompts"] = marks, list(prompts)
        return real(images, prompts, path, *a, marks=marks, **k)

    monkeypatch.setattr(report, "image_grid", spy)
    prompts = tmp_path / "p.txt"
    prompts.write_text("the numeral 3\na sketch of the digit seven\n")
    rc = main(["eval", str(ROOT / "experiments" / "digits.yaml"), "--steps", "1,2", "--prompts", str(prompts),
               "--grid-prompts", "2", "-o", str(tmp_path / "ev"), "--no-progress", "eval.images_per_prompt=2"])
    assert rc == 0, capsys.readouterr().err
    assert seen["prompts"] == ["the numeral 3", "a sketch of the digit seven"]
    assert set(seen["marks"]) == {"base@1", "base@2", "base@50"}  # and at the teacher's N
    for marks in seen["marks"].values():
        assert len(marks) == 2 and all(isinstance(ok, bool) and (ok or note.startswith("reads ")) for ok, note in marks)
    assert (tmp_path / "ev" / "grid.png").stat().st_size > 1000
