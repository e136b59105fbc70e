"""The scenes experiment: the per-criterion verdict (fast unit tests) and a short end-to-end run of
`rats-run experiments/scenes.yaml` through the stock sd15 backbone and pickscore reward on the shipped
weights, whose export plain diffusers loads and samples (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rats_core.verdict import across_seeds, markdown, verdict

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "plugins" / "scenes" / "weights"


def _entry(reward, judge, fid, n=200, ci=0.01):
    return {"steps": 2, "reward": reward, "reward_ci95": ci, "judge_accuracy": judge, "fid": fid, "n": n}


def test_verdict_all_three_criteria_hold():
    v = verdict({"base": _entry(1.0, 0.3, 80), "base_teacher_steps": _entry(1.5, 0.6, 45),
                 "teacher": _entry(2.0, 0.6, 40), "student": _entry(2.5, 0.65, 38)})
    assert v["reward"]["holds"] and v["judge"]["holds"] and v["realism"]["holds"] and v["all_hold"]
    assert v["fair_test"]["holds"]
    assert v["reward"]["clear"] == "better"  # 0.5 apart with ±0.014
    assert v["judge"]["clear"] == "within noise"  # 5 points at n = 200 is not beyond the interval
    assert not v["reward_hacking"]["flag"]
    assert "no reward hacking" in v["summary"]


def test_verdict_flags_reward_hacking_and_failed_criteria():
    # reward above the teacher's and the base's, but the judge and FID are worse than the base's
    v = verdict({"base": _entry(1.0, 0.3, 80), "teacher": _entry(2.0, 0.6, 40), "student": _entry(3.0, 0.2, 95)})
    assert v["reward"]["holds"] and not v["judge"]["holds"] and not v["realism"]["holds"] and not v["all_hold"]
    assert v["judge"]["clear"] == "worse"
    hack = v["reward_hacking"]
    assert hack["flag"] and hack["reward_up_over_base"]
    assert any("base at K" in w for w in hack["worse"]) and any("teacher" in w for w in hack["worse"])
    assert "REWARD HACKING" in v["summary"] and "Reward hacking flagged" in markdown(v)


def test_reward_hacking_reasons_print_small_fids_readably():
    # FIDs of the scenes world are below 1: "0.6 > 0.5" hid how far apart they are
    v = verdict({"base": _entry(1.0, 0.27, 0.718), "teacher": _entry(2.0, 0.56, 0.474), "student": _entry(3.0, 0.28, 0.555)})
    assert "FID above the teacher's (0.555 > 0.474)" in v["reward_hacking"]["worse"]


def test_verdict_reward_equal_is_not_a_win_and_missing_metrics_are_not_measured():
    v = verdict({"teacher": {"reward": 1.0, "n": 10}, "student": {"reward": 1.0, "n": 10}})
    assert not v["reward"]["holds"] and v["judge"] is None and v["realism"] is None and not v["all_hold"]
    assert "not measured" in v["summary"]
    assert verdict({"student": _entry(1, 1, 1)}) == {}


def test_across_seeds_uses_the_seed_spread_for_fid():
    runs = [{"base": _entry(1.0, 0.3, 80), "base_teacher_steps": _entry(1.5, 0.6, 45),
             "teacher": _entry(2.0, 0.6, t), "student": _entry(2.5, 0.6, s)}
            for t, s in ((40, 41), (44, 45), (36, 37))]  # FID 1 worse each seed, spread 4
    c = across_seeds(runs)
    assert c["reward"]["holds"] and c["judge"]["holds"] and c["realism"]["holds"] and c["claim_holds"]
    runs[1]["student"]["reward"] = 1.9  # loses in one seed: the reward criterion needs every seed
    c = across_seeds(runs)
    assert not c["reward"]["holds"] and c["reward"]["wins"] == 2 and not c["claim_holds"]
    for r in runs:  # FID 10 worse in every seed: beyond the spread (4)
        r["student"]["fid"] = r["teacher"]["fid"] + 10
    assert not across_seeds(runs)["realism"]["holds"]


@pytest.mark.slow
@pytest.mark.skipif(not (WEIGHTS / "pipeline" / "model_index.json").is_file(), reason="scenes weights not built")
def test_scenes_experiment_short_run_verdict_and_plain_diffusers_export(tmp_path, capsys):
    import torch
    from diffusers import StableDiffusionPipeline

    from rats_core.cli import run_main

    out = tmp_path / "scenes"
    rc = run_main([
        str(ROOT / "experiments" / "scenes.yaml"),
        f"output_dir={out}", "train.steps=2", "train.batch_size=2", "train.progress=false", "eval.every=0",
        "teacher.steps=8", "eval.images_per_prompt=1", "eval.steps=[1,2]",
        "eval.prompts=[two red triangles, a red circle left of a blue square, a purple circle, "
        "a green square above a cyan circle]",
    ])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    held = report["held_out"]
    for who in ("base", "teacher", "student"):
        for key in ("reward", "judge_accuracy", "fid", "judge_count", "judge_colour", "judge_shape"):
            assert isinstance(held[who][key], float), (who, key)
    assert held["base_1"]["steps"] == 1 and held["student_1"]["steps"] == 1
    v = report["verdict"]
    assert set(v) >= {"reward", "judge", "realism", "reward_hacking", "summary"}
    assert "## Verdict" in (out / "report.md").read_text()
    # the export is a StableDiffusionPipeline folder plain diffusers samples
    pipe = StableDiffusionPipeline.from_pretrained(str(out / "export"), safety_checker=None)
    image = pipe("two red circles", num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (32, 32, 3) and 0 <= image.min() and image.max() <= 1


def test_fair_test_fails_when_the_judge_cannot_tell_k_from_n():
    at_floor = {"base": _entry(13.7, 0.0, 1.77, n=121), "base_teacher_steps": _entry(14.0, 0.008, 1.72, n=121),
                "teacher": _entry(14.9, 0.008, 1.73, n=121), "student": _entry(15.5, 0.016, 1.70, n=121)}
    v = verdict(at_floor)
    assert v["reward"]["holds"] and v["judge"]["holds"] and v["realism"]["holds"]
    assert not v["fair_test"]["holds"] and not v["all_hold"]
    assert v["summary"].startswith("FAIR TEST FAILS") and "**no**" in markdown(v)
    assert not across_seeds([at_floor, at_floor])["claim_holds"]
    fair = dict(at_floor, base=_entry(13.7, 0.31, 85, n=400), base_teacher_steps=_entry(14.0, 0.75, 49, n=400))
    assert verdict(fair)["fair_test"]["holds"]
