"""The verdict (rats_core/evaluation/verdict.py) under the one rule of rats_core/evaluation/stats.py: paired per-image tests,
per-seed paired differences, margins, "within noise" that neither reads no nor flags reward hacking,
the fair test and the bottom line. The numbers are built by hand so the expected reading is known."""

from __future__ import annotations

import math

import pytest

from rats_core.evaluation.stats import Margins
from rats_core.evaluation.verdict import across_seeds, markdown, summary_line, verdict, verdict_line


def _entry(reward, judge, fid, n=200, ci=0.01):
    return {"steps": 2, "reward": reward, "reward_ci95": ci, "judge_accuracy": judge, "fid": fid, "n": n}


def _right(k, n, first=True):
    """n judge readings with k right (the right ones first, or last)."""
    return [True] * k + [False] * (n - k) if first else [False] * (n - k) + [True] * k


def _seeds(teacher_fids, student_fids, judge=(0.6, 0.6)):
    return [{"base": _entry(1.0, 0.3, 80), "base_teacher_steps": _entry(1.5, 0.6, 45),
             "teacher": _entry(2.0, judge[0], t), "student": _entry(2.5 + 0.01 * i, judge[1], s)}
            for i, (t, s) in enumerate(zip(teacher_fids, student_fids))]


def test_five_seeds_each_worse_by_one_fid_point_does_not_hold():
    # the review's case: the old rule compared the FID levels with their seed spread (here ~7) and said yes
    teacher = [40.0, 44.0, 36.0, 50.0, 30.0]
    c = across_seeds(_seeds(teacher, [t + 1.0 for t in teacher]))
    real = c["realism"]
    assert real["status"] == "no" and real["holds"] is False and real["clear"] == "worse"
    assert real["interval"] == pytest.approx([1.0, 1.0]) and real["margin"] == pytest.approx(0.02 * 40)
    assert not c["claim_holds"] and c["bottom_line"]["status"] == "not supported"
    assert "FID" in c["bottom_line"]["reason"]
    # worse by 0.5 in every seed is real but inside the 2 % margin (0.8): it holds, and says it is worse
    c = across_seeds(_seeds(teacher, [t + 0.5 for t in teacher]))
    assert c["realism"]["status"] == "yes" and c["realism"]["clear"] == "worse"
    assert c["reward"]["status"] == "yes" and c["claim_holds"] and c["bottom_line"]["status"] == "supported"


def test_unequal_seed_spreads_are_paired_not_compared_as_levels():
    # the teacher's FID varies a lot over seeds, the student's tracks it 0.3 lower: paired, clearly not worse
    teacher = [30.0, 60.0, 45.0]
    c = across_seeds(_seeds(teacher, [t - 0.3 for t in teacher]))
    assert c["realism"]["status"] == "yes" and c["realism"]["clear"] == "better"
    # a steady teacher and a student all over the place: the per-seed differences' interval is wide
    c = across_seeds(_seeds([40.0, 40.2, 39.8], [30.0, 52.0, 41.0]))
    assert c["realism"]["status"] == "within noise" and c["realism"]["holds"] is None


def test_over_seeds_the_interval_is_the_t_interval_of_the_per_seed_differences():
    """Unequal spreads: the teacher's reward swings over seeds (1, 5, 3), the student's tracks it +0.625, +1.125,
    +1.625. By hand: mean 1.125, sd 0.5, t(2) = 4.302653 (a table), half-width 4.302653 · 0.5 / √3 = 1.2421,
    so [−0.117, 2.367]: within noise -- with the n-divided (smaller) spread it would read yes."""
    runs = [{"teacher": {"reward": t}, "student": {"reward": t + d}}
            for t, d in zip((1.0, 5.0, 3.0), (0.625, 1.125, 1.625))]
    c = across_seeds(runs)["reward"]
    half = 4.302652730 * 0.5 / math.sqrt(3)
    assert c["differences"] == [0.625, 1.125, 1.625]
    assert c["interval"] == pytest.approx([1.125 - half, 1.125 + half], abs=1e-9)
    assert c["status"] == "within noise" and c["holds"] is None and c["clear"] == "within noise"
    assert c["student_mean"] == pytest.approx(3.0 + 1.125) and c["teacher_mean"] == pytest.approx(3.0)
    assert c["wins"] == 3 and c["test"] == "per-seed paired differences, t interval (3 seeds)"
    # a fourth seed at +1.125: sd √(1/6), t(3) = 3.182446, half-width 3.182446 · 0.4082 / 2 = 0.6496: yes
    runs.append({"teacher": {"reward": 2.0}, "student": {"reward": 3.125}})
    c = across_seeds(runs)["reward"]
    half = 3.182446305 * math.sqrt(0.5 / 3) / 2
    assert c["interval"] == pytest.approx([1.125 - half, 1.125 + half], abs=1e-9) and c["status"] == "yes"


def test_over_seeds_a_tie_holds_as_not_worse_and_counts_as_a_win():
    """Judge accuracy and FID equal to the teacher's in every seed: the per-seed differences are all 0, the
    interval [0, 0] -- not worse (yes), not better (within noise), and each seed a win; a reward tie is no win."""
    teacher = [40.0, 44.0, 36.0]
    runs = _seeds(teacher, list(teacher), judge=(0.6, 0.6))
    runs[0]["student"]["reward"] = runs[0]["teacher"]["reward"]  # a tied reward in seed 0
    c = across_seeds(runs)
    for name in ("judge", "realism"):
        assert c[name]["differences"] == [0.0, 0.0, 0.0] and c[name]["interval"] == [0.0, 0.0]
        assert c[name]["status"] == "yes" and c[name]["holds"] is True and c[name]["clear"] == "within noise"
        assert c[name]["wins"] == 3
    assert c["reward"]["wins"] == 2 and c["reward"]["differences"][0] == 0.0
    # the student 0.01 worse on the judge in one seed: that seed is no win
    runs[1]["student"]["judge_accuracy"] = 0.59
    assert across_seeds(runs)["judge"]["wins"] == 2
    runs[2]["student"]["fid"] = teacher[2] + 0.5
    assert across_seeds(runs)["realism"]["wins"] == 2


def test_worse_by_exactly_the_margin_is_not_not_worse():
    """The rule is strict: "not worse" holds when the interval's lower end is *above* −margin. With margins
    chosen so the numbers are exact in binary: judge 0.25, FID 0.25 × the teacher's mean FID 4 = 1."""
    margins = Margins(judge=0.25, fid=0.25)

    def runs(judge_gap, fid_gap):
        return [{"teacher": {"reward": 1.0, "judge_accuracy": 0.75, "fid": 4.0},
                 "student": {"reward": 2.0, "judge_accuracy": 0.75 - judge_gap, "fid": 4.0 + fid_gap}}] * 3

    c = across_seeds(runs(0.25, 1.0), margins=margins)
    assert c["judge"]["interval"] == [-0.25, -0.25] and c["realism"]["interval"] == [1.0, 1.0]
    assert c["realism"]["margin"] == 1.0
    for name in ("judge", "realism"):
        assert c[name]["status"] == "no" and c[name]["clear"] == "worse", name
    assert not c["claim_holds"]
    c = across_seeds(runs(0.125, 0.5), margins=margins)  # worse by half the margin: holds, and says worse
    for name in ("judge", "realism"):
        assert c[name]["status"] == "yes" and c[name]["clear"] == "worse", name


def test_one_hundred_vs_ninety_nine_percent_is_not_called_clearly_better_from_a_collapsed_interval():
    # the normal approximation gave 1.00 a zero-width interval, so 1.00 vs 0.99 read "clearly better"
    # (0.0062 < 0.01). With 1000 images in all (500 a model) the exact tests say p = 0.06: within noise.
    for per_image in (None, {"judge_right": {"student": _right(500, 500), "teacher": _right(495, 500)}}):
        v = verdict({"teacher": _entry(2.0, 0.99, 40, n=500), "student": _entry(2.5, 1.0, 40, n=500)},
                    per_image=per_image)
        assert v["judge"]["clear"] == "within noise" and v["judge"]["status"] == "yes"  # not worse, not better
    # 1.000 vs 0.995 at n = 1000 a model: McNemar p = 0.0625 (and Fisher 0.062), the old rule said better
    v = verdict({"teacher": _entry(2.0, 0.995, 40, n=1000), "student": _entry(2.5, 1.0, 40, n=1000)},
                per_image={"judge_right": {"student": _right(1000, 1000), "teacher": _right(995, 1000)}})
    assert v["judge"]["clear"] == "within noise" and v["judge"]["p_value"] == pytest.approx(0.0625)
    # 1000/1000 vs 990/1000 a model *is* a real difference (McNemar p = 0.002): the rule says so
    v = verdict({"teacher": _entry(2.0, 0.99, 40, n=1000), "student": _entry(2.5, 1.0, 40, n=1000)},
                per_image={"judge_right": {"student": _right(1000, 1000), "teacher": _right(990, 1000)}})
    assert v["judge"]["clear"] == "better" and v["judge"]["p_value"] == pytest.approx(2 * 0.5 ** 10)


def test_a_within_noise_difference_neither_reads_no_nor_flags_reward_hacking():
    # the review's scenes case: judge −0.041 with an interval of about ±0.11, the reward up over the base
    n = 121
    judged = {"student": _right(34, n), "teacher": _right(39, n), "base": _right(33, n, first=False)}
    rewards = {"base": [1.0 + 0.01 * i for i in range(n)], "teacher": [2.0] * n, "student": [3.0 + 0.01 * (i % 7) for i in range(n)]}
    v = verdict({"base": _entry(1.0, 33 / n, 0.7, n=n), "teacher": _entry(2.0, 39 / n, 0.47, n=n),
                 "student": _entry(3.0, 34 / n, 0.55, n=n)},
                per_image={"prompts": [f"p{i}" for i in range(n)], "reward": rewards, "judge_right": judged})
    assert v["judge"]["status"] == "within noise" and v["judge"]["holds"] is None
    assert v["judge"]["difference"] == pytest.approx(-5 / n) and v["judge"]["test"].startswith("McNemar")
    assert v["reward_hacking"]["reward_up_over_base"] and not v["reward_hacking"]["flag"]
    assert "NO" not in summary_line(v) and "**no**" not in markdown(v) and "no reward hacking flagged" in v["summary"]


def test_a_real_drop_in_the_judge_flags_reward_hacking():
    v = verdict({"base": _entry(1.0, 0.3, 80), "teacher": _entry(2.0, 0.6, 40), "student": _entry(3.0, 0.2, 95)})
    assert v["reward"]["status"] == "yes" and v["judge"]["status"] == "no" and v["judge"]["holds"] is False
    hack = v["reward_hacking"]
    assert hack["flag"] and hack["reward_up_over_base"]
    assert any("base at K" in w for w in hack["worse"]) and any("teacher" in w for w in hack["worse"])
    assert "REWARD HACKING" in v["summary"] and "Reward hacking flagged" in markdown(v)
    assert v["bottom_line"]["status"] == "not testable"  # no base at N: no fair test


def test_a_judge_tie_holds_as_not_worse_but_is_not_better():
    same = _right(120, 200)
    v = verdict({"teacher": _entry(2.0, 0.6, 40), "student": _entry(2.5, 0.6, 40)},
                per_image={"judge_right": {"student": same, "teacher": list(same)}})
    assert v["judge"]["interval"] == [0.0, 0.0] and v["judge"]["status"] == "yes" and v["judge"]["clear"] == "within noise"
    # the same accuracy from different images: 20 swaps each way
    other = same[20:] + same[:20]
    v = verdict({"teacher": _entry(2.0, 0.6, 40), "student": _entry(2.5, 0.6, 40)},
                per_image={"judge_right": {"student": same, "teacher": other}})
    assert v["judge"]["discordant"] == [20, 20] and v["judge"]["difference"] == 0.0
    assert v["judge"]["clear"] == "within noise" and v["judge"]["status"] == "within noise"  # ±0.06 > the margin


def test_an_equal_reward_is_within_noise_and_missing_metrics_are_not_measured():
    v = verdict({"teacher": {"reward": 1.0, "n": 10}, "student": {"reward": 1.0, "n": 10}},
                per_image={"reward": {"teacher": [1.0] * 10, "student": [1.0] * 10}})
    assert v["reward"]["status"] == "within noise" and v["reward"]["holds"] is None
    assert v["judge"] is None and v["realism"] is None and not v["all_hold"]
    assert "not measured" in v["summary"]
    assert verdict({"student": _entry(1, 1, 1)}) == {}


def test_the_reward_bootstrap_is_paired_and_deterministic():
    n = 40
    teacher = [float(i % 5) for i in range(n)]
    student = [t + 0.05 for t in teacher]  # 0.05 better on every image; unpaired, the spread hides it
    results = {"teacher": {"reward": 2.0, "reward_ci95": 0.45, "n": n}, "student": {"reward": 2.05, "reward_ci95": 0.45, "n": n}}
    per_image = {"prompts": [f"p{i // 2}" for i in range(n)], "reward": {"teacher": teacher, "student": student}}
    v = verdict(results, per_image=per_image)
    assert v["reward"]["status"] == "yes" and v["reward"]["interval"] == pytest.approx([0.05, 0.05])
    assert verdict(results)["reward"]["status"] == "within noise"  # unpaired: the old report's reading
    assert "unpaired" in verdict(results)["reward"]["test"]
    assert verdict(results, per_image=per_image) == v


def test_an_old_report_without_per_image_data_still_gets_a_verdict():
    held = {"base": _entry(1.0, 0.3, 80, n=400), "base_teacher_steps": _entry(1.5, 0.75, 49, n=400),
            "teacher": _entry(2.0, 0.6, 40, n=400), "student": _entry(2.5, 0.62, 38, n=400)}
    v = verdict(held)
    # unpaired, 0.62 vs 0.60 at n = 400 is ±0.07: within noise, where a paired test may well decide
    assert v["reward"]["status"] == "yes" and v["judge"]["status"] == "within noise" and "Newcombe" in v["judge"]["test"]
    assert v["realism"]["status"] == "not testable" and v["fair_test"]["holds"]
    assert v["bottom_line"] == {"status": "not testable", "reason": "FID has no interval (one run: compare seeds); "
                                                                    "judge accuracy within noise"}
    assert verdict_line(v).startswith("Verdict: not testable here — FID has no interval (one run: compare seeds)")
    held["student"]["judge_accuracy"] = 0.7
    assert verdict(held)["judge"]["status"] == "yes"


def test_the_fair_test_is_not_testable_without_n():
    held = {k: {kk: vv for kk, vv in _entry(r, j, f).items() if kk != "n"} for k, (r, j, f) in {
        "base": (1.0, 0.3, 80), "base_teacher_steps": (1.5, 0.6, 45), "teacher": (2.0, 0.6, 40),
        "student": (2.5, 0.65, 38)}.items()}
    v = verdict(held)
    assert v["fair_test"]["status"] == "not testable" and v["fair_test"]["holds"] is None
    assert v["judge"]["status"] == "not testable"
    assert v["bottom_line"]["status"] == "not testable" and "fair test not testable" in v["bottom_line"]["reason"]
    assert "FAIR TEST NOT TESTABLE" in v["summary"]


def test_a_fair_test_decided_by_fid_alone():
    def held(fid_k, fid_n):
        return {"base": {"reward": 1.0, "fid": fid_k, "n": 50}, "base_teacher_steps": {"reward": 1.5, "fid": fid_n, "n": 50},
                "teacher": {"reward": 2.0, "fid": 40.0, "n": 50}, "student": {"reward": 2.5, "fid": 39.0, "n": 50}}

    fair = verdict(held(80.0, 45.0))["fair_test"]
    assert fair["decided_by"] == "FID" and fair["holds"] and "judge_base_k" not in fair
    fair = verdict(held(44.0, 45.0))["fair_test"]
    assert fair["decided_by"] == "FID" and fair["holds"] is False and "not higher at K" in fair["reason"]
    # with a judge, a judge gap that is real still fails when FID is not higher at K
    v = verdict({"base": _entry(1.0, 0.3, 44), "base_teacher_steps": _entry(1.5, 0.6, 45),
                 "teacher": _entry(2.0, 0.6, 40), "student": _entry(2.5, 0.62, 38)})
    assert v["fair_test"]["judge_clearly_worse_at_k"] and v["fair_test"]["holds"] is False
    assert v["bottom_line"]["status"] == "not testable" and "FID" in v["bottom_line"]["reason"]


def test_the_fair_test_needs_a_strictly_higher_fid_at_k():
    """The base model's FID equal at K and N is not "worse at K": the fair test fails, by FID alone and
    with a judge whose gap is real; over seeds, one such seed is enough to fail the claim."""
    fid_only = {"base": {"reward": 1.0, "fid": 45.0, "n": 50}, "base_teacher_steps": {"reward": 1.5, "fid": 45.0, "n": 50},
                "teacher": {"reward": 2.0, "fid": 40.0, "n": 50}, "student": {"reward": 2.5, "fid": 39.0, "n": 50}}
    fair = verdict(fid_only)["fair_test"]
    assert fair["decided_by"] == "FID" and fair["fid_worse_at_k"] is False and fair["holds"] is False
    assert fair["status"] == "fails" and fair["reason"] == "FID 45 at K vs 45 at N is not higher at K"
    held = {"base": _entry(1.0, 0.3, 45.0), "base_teacher_steps": _entry(1.5, 0.6, 45.0),
            "teacher": _entry(2.0, 0.6, 40.0), "student": _entry(2.5, 0.62, 38.0)}
    v = verdict(held)
    assert v["fair_test"]["judge_clearly_worse_at_k"] is True and v["fair_test"]["holds"] is False
    assert v["bottom_line"] == {"status": "not testable",
                                "reason": "fair test fails: FID 45 at K vs 45 at N is not higher at K"}
    # over seeds: FID really higher at K in two seeds, equal in the third
    runs = _seeds([40.0, 44.0, 36.0], [39.0, 43.0, 35.0])
    assert across_seeds(runs)["claim_holds"]
    runs[2]["base"]["fid"] = runs[2]["base_teacher_steps"]["fid"]
    c = across_seeds(runs)
    assert c["fair_test_seeds"] == 2 and not c["claim_holds"] and c["fair_test"]["holds"] is False
    assert c["fair_test"]["reason"].endswith("is not higher at K (holds in 2/3 seeds)")
    assert c["bottom_line"]["status"] == "not testable"


def test_the_fair_test_fails_when_the_judge_cannot_tell_k_from_n():
    at_floor = {"base": _entry(13.7, 0.0, 1.77, n=121), "base_teacher_steps": _entry(14.0, 0.008, 1.72, n=121),
                "teacher": _entry(14.9, 0.008, 1.73, n=121), "student": _entry(15.5, 0.016, 1.70, n=121)}
    v = verdict(at_floor)
    assert v["reward"]["status"] == "yes" and v["judge"]["status"] == "within noise"
    assert v["fair_test"]["holds"] is False and not v["all_hold"]
    assert v["summary"].startswith("not testable: fair test fails") and "**no**" in markdown(v)
    assert not across_seeds([at_floor, at_floor])["claim_holds"]
    fair = dict(at_floor, base=_entry(13.7, 0.31, 85, n=400), base_teacher_steps=_entry(14.0, 0.75, 49, n=400))
    assert verdict(fair)["fair_test"]["holds"]


def test_reward_hacking_over_seeds_needs_a_real_fid_drop_beyond_the_margin():
    runs = _seeds([40.0, 44.0, 36.0], [50.0, 55.0, 45.0])
    c = across_seeds(runs)
    assert c["reward_hacking"]["flag"] and any("FID" in w for w in c["reward_hacking"]["worse"])
    assert c["reward_hacking_seeds"] == 0  # one run's FID has no interval: no single seed can flag it
    c = across_seeds(_seeds([40.0, 44.0, 36.0], [40.5, 43.0, 37.0]))  # within noise over seeds
    assert not c["reward_hacking"]["flag"]


def test_the_bottom_line_over_seeds_and_in_one_line():
    teacher = [40.0, 44.0, 36.0]
    c = across_seeds(_seeds(teacher, [t - 1 for t in teacher], judge=(0.6, 0.61)))
    assert c["bottom_line"]["status"] == "supported" and c["claim_holds"]
    line = verdict_line(c)
    assert line.startswith("Verdict: supported — ") and line.endswith(".")
    assert verdict_line({}).startswith("Verdict: not testable here")


def test_a_toy_run_writes_per_image_data_and_opens_report_md_with_the_verdict(tmp_path):
    """End to end on the toy backbone (no judge metric): per-image rewards in report.json make the reward
    test paired, and report.md's first line under its title is the bottom line."""
    import json

    from rats_core.config import validate_config
    from rats_core.training.trainer import train

    cfg = validate_config({
        "seed": 0, "output_dir": str(tmp_path / "run"), "backbone": {"name": "toy"},
        "student": {"steps": 2, "grad_steps": 1}, "teacher": {"kind": "ema", "steps": 6, "ema_decay": 0.9},
        "rewards": [{"name": "toy-brightness", "weight": 10.0}],
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "progress": False, "threads": 1, "export": False},
        "data": {"prompts": ["a cat", "a dog"], "eval_prompts": ["a cat", "a cow", "a bird"]},
        "eval": {"at_end": True, "batch_size": 3, "images_per_prompt": 2, "verdict": {"resamples": 200, "seed": 3}},
    }, source="test")
    train(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    per_image = report["per_image"]
    assert per_image["prompts"] == ["a cat", "a cat", "a cow", "a cow", "a bird", "a bird"]
    assert set(per_image["reward"]) >= {"base", "base_teacher_steps", "teacher", "student"}
    assert per_image["judge_right"] == {}  # the toy world has no judge
    v = report["verdict"]
    assert v["reward"]["test"] == "paired bootstrap over prompts (200 resamples, seed 3)"
    assert v["margins"] == {"judge": 0.02, "fid": 0.02, "resamples": 200, "seed": 3}
    assert v["judge"] is None and v["fair_test"] is None
    assert v["bottom_line"]["status"] == "not testable"
    md = (tmp_path / "run" / "report.md").read_text().splitlines()
    assert md[0].startswith("# RATS report") and md[1] == ""
    assert md[2] == "Verdict: not testable here — " + v["bottom_line"]["reason"] + "."


def test_judge_right_prefers_grades_then_marks_and_ablate_reads_old_and_new_reports():
    import torch

    from rats_core.evaluation.ablate import _summary, summarise
    from rats_core.evaluation.evaluate import judge_right

    class Graded:
        def grades(self, images, prompts):
            return [{"all": i % 2 == 0} for i in range(len(prompts))]

        def marks(self, images, prompts):
            return [(False, "x")] * len(prompts)

    class Marked:
        def marks(self, images, prompts):
            return [(True, "")] * len(prompts)

    images, prompts = torch.zeros(3, 3, 4, 4), ["a", "b", "c"]
    assert judge_right([("plain", lambda i, p: {}), ("g", Graded())], images, prompts) == [True, False, True]
    assert judge_right([("m", Marked())], images, prompts) == [True, True, True]
    assert judge_right([("plain", lambda i, p: {})], images, prompts) is None
    held = {"base": _entry(1.0, 0.3, 80), "base_teacher_steps": _entry(1.5, 0.6, 45),
            "teacher": _entry(2.0, 0.6, 40), "student": _entry(2.5, 0.61, 39)}
    old = _summary({"held_out": held}, 0)  # a report.json from before per_image: unpaired, still a verdict
    assert old["status_judge"] == "within noise" and old["holds_judge"] is None and old["student_beats_teacher"]
    assert "per_image" not in old
    n = 200
    per_image = {"prompts": [f"p{i}" for i in range(n)],
                 "reward": {k: [held[k]["reward"]] * n for k in held},
                 "judge_right": {"student": _right(122, n), "teacher": _right(120, n), "base": _right(60, n),
                                 "base_teacher_steps": _right(120, n), "student_1": _right(1, n)}}
    new = _summary({"held_out": held, "per_image": per_image}, 1)
    assert new["status_judge"] == "yes" and set(new["per_image"]["judge_right"]) == {"student", "teacher", "base",
                                                                                     "base_teacher_steps"}
    table = summarise({"rats": [old, new]})
    assert table["rats"]["claim"]["bottom_line"]["status"] in ("supported", "not supported", "not testable")
    assert table["rats"]["student_beats_teacher"] == 2
