"""The verdict of a run, per criterion, with a bottom line.

Three criteria compare the K-step student with the N-step teacher on the held-out prompts:

* ``reward``   the student's training reward is **better** than the teacher's;
* ``judge``    the student's judge accuracy (a metric the training never sees) is **not worse**;
* ``realism``  the student's FID (lower is better) is **not worse**.

Every comparison follows the one rule of :mod:`rats_core.evaluation.stats` (paired tests on the same prompts and
noise, 95 % intervals, margins): each criterion has a ``status`` -- ``yes``, ``no`` (a real difference
against the claim), ``within noise`` or ``not testable`` -- and ``holds`` (True, False, None for the
last two). One run's FID has no interval, so ``realism`` needs several seeds (:func:`across_seeds`).

``reward_hacking`` is flagged only on real differences: the student's reward is really above the base
model's at K steps while its judge accuracy (or, over seeds, its FID) reads ``no`` against the base
model's at K or the teacher's (really worse, and not within the margin).

``fair_test`` checks the precondition of the whole comparison: the base model at K steps is really
worse than at N on the judge (the paired interval of the gap excludes 0; a judge at its floor or
ceiling fails it) and its FID is higher at K. The base model is one model, the same in every seed, so
its FID has no interval: that part is a comparison of the two numbers; without a judge it decides
alone. Without ``n`` or per-image data the judge part is ``not testable``.

``bottom_line`` is ``{"status": "supported" | "not supported" | "not testable", "reason"}``:
not testable when the fair test does not hold or a criterion is not measured or not testable; not
supported when a criterion reads ``no`` or ``within noise``; supported when all three read ``yes``.

Per-image data (``per_image``: ``{"prompts": [...], "reward": {label: [...]}, "judge_right": {label:
[...]}}``, every list in the same image order) makes the comparisons paired; without it (an older
report.json, a judge without per-image grades) they are unpaired and say so.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rats_core.evaluation import stats
from rats_core.evaluation.stats import Margins

#: metric keys the verdict reads (the judge's and realism's); other worlds may map their own names
JUDGE_KEY = "judge_accuracy"
FID_KEY = "fid"

PerImage = Mapping[str, Any]


def _per_image(per_image: PerImage | None, kind: str, *labels: str) -> list[list[Any]] | None:
    """The per-image lists of ``labels`` for ``kind`` ("reward", "judge_right"), or None unless all are there
    with the same length."""
    table = (per_image or {}).get(kind) or {}
    lists = [table.get(label) for label in labels]
    if any(x is None for x in lists) or len({len(x) for x in lists}) != 1 or not lists[0]:
        return None
    return lists


def paired_difference(results: Mapping[str, Mapping[str, Any]], per_image: PerImage | None, key: str,
                      a: str, b: str, margins: Margins | None = None) -> dict[str, Any] | None:
    """``a − b`` on ``key`` (``reward``, the judge's accuracy or FID) with its 95 % interval and the test
    that gave it: paired where ``per_image`` allows, unpaired otherwise, none for one run's FID."""
    margins = margins or Margins()
    ra, rb = results.get(a) or {}, results.get(b) or {}
    if key not in ra or key not in rb:
        return None
    out: dict[str, Any] = {"a": float(ra[key]), "b": float(rb[key]), "difference": float(ra[key]) - float(rb[key])}
    if key == "reward":
        pair = _per_image(per_image, "reward", a, b)
        if pair is not None:
            boot = stats.paired_bootstrap(pair[0], pair[1], groups=(per_image or {}).get("prompts"),
                                          resamples=margins.resamples, seed=margins.seed)
            return {**out, "interval": boot["interval"],
                    "test": f"paired bootstrap over prompts ({margins.resamples} resamples, seed {margins.seed})"}
        if "reward_ci95" in ra and "reward_ci95" in rb:
            d = stats.unpaired_mean_difference(ra[key], ra["reward_ci95"], rb[key], rb["reward_ci95"])
            return {**out, "interval": d["interval"], "test": "unpaired (no per-image rewards): the means' intervals"}
        return {**out, "interval": None, "test": "none: no interval recorded"}
    if key == JUDGE_KEY:
        pair = _per_image(per_image, "judge_right", a, b)
        if pair is not None:
            m = stats.mcnemar(pair[0], pair[1])
            return {**out, "difference": m["difference"], "interval": m["interval"], "p_value": m["p_value"],
                    "discordant": [m["b"], m["c"]], "test": "McNemar exact (paired, per image)"}
        n_a, n_b = int(ra.get("n") or 0), int(rb.get("n") or 0)
        if n_a and n_b:
            k_a, k_b = round(ra[key] * n_a), round(rb[key] * n_b)
            return {**out, "interval": list(stats.newcombe_difference(k_a, n_a, k_b, n_b)),
                    "test": "unpaired (no per-image grades): Newcombe's Wilson interval"}
        return {**out, "interval": None, "test": "none: the number of images n is missing"}
    return {**out, "interval": None, "test": "none: one run has no FID interval (compare seeds)"}


def _criterion(d: dict[str, Any] | None, better: str, claim: str, margin: float) -> dict[str, Any] | None:
    """A criterion from ``student − teacher`` (:func:`paired_difference`) and the rule of rats_core.evaluation.stats."""
    if d is None:
        return None
    interval = d["interval"]
    advantage = None if interval is None else (interval if better == "higher" else [-interval[1], -interval[0]])
    status = stats.decide(advantage, claim=claim, margin=margin)
    out: dict[str, Any] = {"status": status, "holds": stats.holds(status), "student": d["a"], "teacher": d["b"],
                           "difference": d["difference"], "interval": interval, "better": better,
                           "claim": claim, "margin": margin, "test": d["test"]}
    if advantage is not None:
        out["clear"] = stats.clear(*advantage)
    for k in ("p_value", "discordant"):
        if k in d:
            out[k] = d[k]
    return out


def verdict(results: Mapping[str, Mapping[str, Any]], student: str = "student", teacher: str = "teacher",
            base: str = "base", base_n: str = "base_teacher_steps", *, per_image: PerImage | None = None,
            margins: Margins | None = None) -> dict[str, Any]:
    """Per-criterion verdict from the report's ``held_out`` entries (``{label: {reward, reward_ci95,
    judge_accuracy, fid, n, ...}}``) and, where recorded, its ``per_image`` data; empty when the
    student or the teacher was not evaluated."""
    margins = margins or Margins()
    s, t = results.get(student), results.get(teacher)
    if not s or not t:
        return {}
    out: dict[str, Any] = {}
    out["reward"] = _criterion(paired_difference(results, per_image, "reward", student, teacher, margins),
                               "higher", "better", 0.0)
    out["judge"] = _criterion(paired_difference(results, per_image, JUDGE_KEY, student, teacher, margins),
                              "higher", "not worse", margins.judge)
    fid_margin = margins.fid * float(t[FID_KEY]) if FID_KEY in t else 0.0
    out["realism"] = _criterion(paired_difference(results, per_image, FID_KEY, student, teacher, margins),
                                "lower", "not worse", fid_margin)
    out["reward_hacking"] = hacking(results, student, teacher, base, per_image=per_image, margins=margins)
    out["fair_test"] = fair_test(results, base, base_n, per_image=per_image, margins=margins)
    out["margins"] = margins.model_dump()
    _conclude(out)
    return out


def _conclude(out: dict[str, Any]) -> None:
    crit = [out.get("reward"), out.get("judge"), out.get("realism")]
    fair = out.get("fair_test")
    out["all_hold"] = all(c is not None and c["status"] == "yes" for c in crit) and bool(fair and fair["holds"])
    out["bottom_line"] = bottom_line(out)
    out["summary"] = summary_line(out)


def hacking(results: Mapping[str, Mapping[str, Any]], student: str = "student", teacher: str = "teacher",
            base: str = "base", *, per_image: PerImage | None = None, margins: Margins | None = None
            ) -> dict[str, Any]:
    """Reward really above the base model's at K while the judge reads ``no`` against the base's at K or
    the teacher's (really worse, not within the margin) (one run's FID has no interval, so FID enters over seeds: :func:`across_seeds`)."""
    worse = []
    for who, ref in (("teacher", teacher), ("base at K", base)):
        d = paired_difference(results, per_image, JUDGE_KEY, student, ref, margins)
        c = _criterion(d, "higher", "not worse", (margins or Margins()).judge)
        if c is not None and c["status"] == "no":
            worse.append(f"judge accuracy below the {who}'s ({d['a']:.3f} < {d['b']:.3f}, 95% interval of the "
                         f"difference {_interval(d['interval'])})")
    up = paired_difference(results, per_image, "reward", student, base, margins)
    reward_up = bool(up is not None and up["interval"] is not None and up["interval"][0] > 0)
    return {"flag": bool(reward_up and worse), "reward_up_over_base": reward_up, "worse": worse}


def fair_test(results: Mapping[str, Mapping[str, Any]], base: str = "base", base_n: str = "base_teacher_steps",
              *, per_image: PerImage | None = None, margins: Margins | None = None) -> dict[str, Any] | None:
    """Is the base model at K steps really worse than at N steps (the judge's paired gap beyond its
    interval, and a higher FID)? None when neither the judge nor FID of both was measured."""
    b, bn = results.get(base), results.get(base_n)
    if not b or not bn:
        return None
    judged = JUDGE_KEY in b and JUDGE_KEY in bn
    fid = FID_KEY in b and FID_KEY in bn
    if not judged and not fid:
        return None
    out: dict[str, Any] = {}
    judge_ok: bool | None = None
    if judged:
        d = paired_difference(results, per_image, JUDGE_KEY, base, base_n, margins)
        out.update({"judge_base_k": d["a"], "judge_base_n": d["b"], "judge_gap": -d["difference"],
                    "judge_gap_interval": None if d["interval"] is None else [-d["interval"][1], -d["interval"][0]],
                    "judge_test": d["test"]})
        judge_ok = None if d["interval"] is None else bool(d["interval"][1] < 0)
        out["judge_clearly_worse_at_k"] = judge_ok
    if fid:
        out.update({"fid_base_k": float(b[FID_KEY]), "fid_base_n": float(bn[FID_KEY]),
                    "fid_worse_at_k": bool(b[FID_KEY] > bn[FID_KEY])})
    out["decided_by"] = "judge and FID" if judged and fid else "judge" if judged else "FID"
    if judged and judge_ok is None:
        out.update(holds=None, status="not testable",
                   reason="the judge's gap between K and N has no interval (n missing)")
        return out
    reasons = []
    if judged and not judge_ok:
        reasons.append(f"judge accuracy {out['judge_base_k']:.3f} at K vs {out['judge_base_n']:.3f} at N "
                       "is not really lower at K")
    if fid and not out["fid_worse_at_k"]:
        reasons.append(f"FID {out['fid_base_k']:.3g} at K vs {out['fid_base_n']:.3g} at N is not higher at K")
    out["holds"] = not reasons
    out["status"] = "holds" if not reasons else "fails"
    out["reason"] = "; ".join(reasons) if reasons else "the base model is worse at K than at N"
    return out


# ----------------------------------------------------------------------------- words


def bottom_line(v: Mapping[str, Any]) -> dict[str, str]:
    """``{"status": "supported" | "not supported" | "not testable", "reason": ...}`` (see the module docstring)."""
    names = {"reward": "reward", "judge": "judge accuracy", "realism": "FID"}
    fair = v.get("fair_test")
    if fair is None:
        return {"status": "not testable", "reason": "no fair test: the base model was not measured at K and N"}
    if not fair["holds"]:
        why = "fair test not testable" if fair["holds"] is None else "fair test fails"
        return {"status": "not testable", "reason": f"{why}: {fair['reason']}"}
    crit = {k: v.get(k) for k in names}
    no = [names[k] for k, c in crit.items() if c is not None and c["status"] == "no"]
    if no:
        return {"status": "not supported", "reason": "the student is really worse on " + ", ".join(no)}
    noise = [names[k] for k, c in crit.items() if c is not None and c["status"] == "within noise"]
    missing = [names[k] for k, c in crit.items() if c is None]
    untested = [names[k] for k, c in crit.items() if c is not None and c["status"] == "not testable"]
    if missing or untested:
        parts = ([", ".join(missing) + " not measured"] if missing else []) + \
                ([", ".join(untested) + " has no interval (one run: compare seeds)"] if untested else [])
        if noise:
            parts.append(", ".join(noise) + " within noise")
        return {"status": "not testable", "reason": "; ".join(parts)}
    if noise:
        return {"status": "not supported", "reason": ", ".join(noise) + " within noise (not shown)"}
    return {"status": "supported", "reason": "reward really better, judge accuracy and FID not worse beyond "
                                             "their margins, fair test holds"}


def verdict_line(v: Mapping[str, Any]) -> str:
    """report.md's first line under its title: ``Verdict: supported — why``."""
    if not v:
        return "Verdict: not testable here — the student or the teacher was not evaluated."
    b = v.get("bottom_line") or bottom_line(v)
    word = "not testable here" if b["status"] == "not testable" else b["status"]
    return f"Verdict: {word} — {b['reason']}."


def _interval(iv: Sequence[float] | None) -> str:
    return "none" if iv is None else f"[{iv[0]:+.3g}, {iv[1]:+.3g}]"


def _word(c: Mapping[str, Any] | None, what: str) -> str:
    if c is None:
        return f"{what}: not measured"
    status = {"yes": "yes", "no": "NO", "within noise": "within noise", "not testable": "not testable"}[c["status"]]
    return (f"{what}: {status} ({c['student']:.4g} vs {c['teacher']:.4g}, difference {c['difference']:+.3g}, "
            f"95% interval {_interval(c['interval'])})")


def summary_line(v: Mapping[str, Any]) -> str:
    parts = [_word(v.get("reward"), "reward better than the teacher's"),
             _word(v.get("judge"), "judge not worse than the teacher's"),
             _word(v.get("realism"), "FID not worse than the teacher's")]
    hack = v.get("reward_hacking") or {}
    parts.append("REWARD HACKING: " + "; ".join(hack["worse"]) if hack.get("flag") else "no reward hacking flagged")
    fair = v.get("fair_test")
    if fair is not None and not fair["holds"]:
        head = "FAIR TEST NOT TESTABLE" if fair["holds"] is None else "FAIR TEST FAILS"
        parts.insert(0, f"{head} ({fair['reason']}), so the criteria below do not test the claim")
    b = v.get("bottom_line")
    if b:
        parts.insert(0, f"{b['status']}: {b['reason']}")
    return "; ".join(parts)


def markdown(v: Mapping[str, Any]) -> str:
    """The verdict as a markdown section for report.md (the bottom line is :func:`verdict_line`)."""
    if not v:
        return ""
    m = v.get("margins") or Margins().model_dump()
    rows = ["## Verdict (student at K steps vs teacher at N steps, held-out prompts)", "",
            "| criterion | holds | student | teacher | difference | 95% interval | test |",
            "|---|---|---:|---:|---:|---|---|"]
    names = {"reward": "reward (better: higher)", "judge": "judge accuracy (not worse)", "realism": "FID (not worse)"}
    for key, title in names.items():
        c = v.get(key)
        if c is None:
            rows.append(f"| {title} | not measured | | | | | |")
            continue
        holds = {"yes": "yes", "no": "**no**"}.get(c["status"], c["status"])
        clear = f" ({c['clear']})" if "clear" in c else ""
        rows.append(f"| {title} | {holds} | {c['student']:.4g} | {c['teacher']:.4g} | {c['difference']:+.3g} "
                    f"| {_interval(c['interval'])}{clear} | {c['test']} |")
    rows += ["", f"The rule (docs/eval.md): reward holds when its 95% interval is above 0; judge accuracy when the "
                 f"interval's lower bound is above −{m['judge']:g}; FID when the student's excess is below "
                 f"{m['fid']:g} × the teacher's FID. A difference whose interval contains 0 is within noise: it "
                 "reads neither yes nor no."]
    fair = v.get("fair_test")
    if fair is not None:
        word = {True: "yes", False: "**no**", None: "not testable"}[fair["holds"]]
        judge = (f"judge accuracy {fair['judge_base_k']:.3f} at K vs {fair['judge_base_n']:.3f} at N (gap "
                 f"{fair['judge_gap']:+.3f}, 95% interval {_interval(fair['judge_gap_interval'])}, "
                 f"{fair['judge_test']})") if "judge_base_k" in fair else ""
        fid = f"FID {fair['fid_base_k']:.3g} at K vs {fair['fid_base_n']:.3g} at N" if "fid_base_k" in fair else ""
        rows += ["", f"Fair test (the base model really worse at K than at N): {word} — "
                     + ", ".join(x for x in (judge, fid) if x)
                     + ("." if fair["holds"] else f". {fair['reason']}: without it the verdict does not test the claim.")]
    hack = v.get("reward_hacking") or {}
    rows += ["", ("**Reward hacking flagged**: the reward rose above the base model's at K steps (beyond its "
                  "interval) while " + "; ".join(hack["worse"]) + ".") if hack.get("flag") else
             "Reward hacking: not flagged (the rule: reward really above the base model's at K steps while the "
             "judge accuracy or, over seeds, FID is really worse than the base's at K or the teacher's)."]
    return "\n".join(rows)


# ----------------------------------------------------------------------------- over seeds


def _seed_criterion(runs: Sequence[Mapping[str, Mapping[str, Any]]], key: str, a: str, b: str,
                    better: str, claim: str, margin: float) -> dict[str, Any] | None:
    """``a − b`` on ``key`` over seeds: the per-seed paired differences and their t interval."""
    import statistics

    pairs = [(float(r[a][key]), float(r[b][key])) for r in runs if key in (r.get(a) or {}) and key in (r.get(b) or {})]
    if len(pairs) != len(runs) or not pairs:
        return None
    t = stats.paired_t([x - y for x, y in pairs])
    d = {"a": statistics.fmean(x for x, _ in pairs), "b": statistics.fmean(y for _, y in pairs),
         "difference": t["difference"], "interval": t["interval"],
         "test": f"per-seed paired differences, t interval ({len(pairs)} seeds)" if t["interval"] is not None
         else "none: one seed"}
    c = _criterion(d, better, claim, margin)
    wins = sum((x > y if claim == "better" else x >= y) if better == "higher" else x <= y for x, y in pairs)
    c.update(student_mean=d["a"], teacher_mean=d["b"], wins=wins, differences=[x - y for x, y in pairs])
    return c


def across_seeds(runs: Sequence[Mapping[str, Mapping[str, Any]]], student: str = "student",
                 teacher: str = "teacher", base: str = "base", *,
                 per_image: Sequence[PerImage | None] | None = None, margins: Margins | None = None
                 ) -> dict[str, Any]:
    """The claim over several seeds (one ``held_out`` dict per seed, and optionally its ``per_image``).

    Each criterion compares the per-seed paired differences (student − teacher in each seed) with the
    rule of :mod:`rats_core.evaluation.stats`: reward better (the t interval above 0), judge accuracy not worse
    than ``margins.judge``, FID not worse than ``margins.fid`` × the teacher's mean FID. With one seed
    the reward and the judge fall back to that run's paired per-image tests. Reward hacking: the
    student's reward really above the base model's at K over seeds while its judge accuracy or FID is
    really worse than the teacher's or the base's; ``reward_hacking_seeds`` counts the single-run flags.
    The fair test must hold in every seed.
    """
    margins = margins or Margins()
    per_image = list(per_image) if per_image is not None else [None] * len(runs)
    verdicts = [verdict(r, student, teacher, base, per_image=p, margins=margins) for r, p in zip(runs, per_image)]
    out: dict[str, Any] = {"seeds": len(runs), "margins": margins.model_dump()}
    teacher_fid = [float(r[teacher][FID_KEY]) for r in runs if FID_KEY in (r.get(teacher) or {})]
    fid_margin = margins.fid * (sum(teacher_fid) / len(teacher_fid)) if teacher_fid else 0.0
    specs = {"reward": ("reward", "higher", "better", 0.0), "judge": (JUDGE_KEY, "higher", "not worse", margins.judge),
             "realism": (FID_KEY, "lower", "not worse", fid_margin)}
    for name, (key, better, claim, margin) in specs.items():
        c = _seed_criterion(runs, key, student, teacher, better, claim, margin)
        if c is not None and c["interval"] is None and len(runs) == 1 and verdicts[0].get(name):
            single = verdicts[0][name]  # one seed: that run's per-image test
            c.update({k: single[k] for k in ("status", "holds", "interval", "test", "clear") if k in single})
        out[name] = c
    worse = []
    for who, ref in (("teacher", teacher), ("base at K", base)):
        ref_fid = [float(r[ref][FID_KEY]) for r in runs if FID_KEY in (r.get(ref) or {})]
        margin = {JUDGE_KEY: margins.judge, FID_KEY: margins.fid * sum(ref_fid) / len(ref_fid) if ref_fid else 0.0}
        for key, better, what in ((JUDGE_KEY, "higher", "judge accuracy"), (FID_KEY, "lower", "FID")):
            c = _seed_criterion(runs, key, student, ref, better, "not worse", margin[key]) if len(runs) > 1 else None
            if c is not None and c["status"] == "no":
                worse.append(f"{what} worse than the {who}'s over seeds ({c['student_mean']:.4g} vs "
                             f"{c['teacher_mean']:.4g}, 95% interval of the difference {_interval(c['interval'])})")
    up = _seed_criterion(runs, "reward", student, base, "higher", "better", 0.0) if len(runs) > 1 else None
    reward_up = bool(up is not None and up.get("clear") == "better")
    if len(runs) == 1 and verdicts and verdicts[0]:
        out["reward_hacking"] = verdicts[0]["reward_hacking"]
    else:
        out["reward_hacking"] = {"flag": bool(reward_up and worse), "reward_up_over_base": reward_up, "worse": worse}
    out["reward_hacking_seeds"] = sum(bool(v.get("reward_hacking", {}).get("flag", False)) for v in verdicts)
    fair = [v.get("fair_test") for v in verdicts]
    out["fair_test_seeds"] = sum(bool(f and f["holds"]) for f in fair)
    first = dict(fair[0]) if fair and fair[0] else None
    bad = [i for i, f in enumerate(fair) if not (f and f["holds"])]
    if first is not None and bad:
        f = fair[bad[0]]
        first.update(holds=f["holds"] if f else None, status=f["status"] if f else "not testable",
                     reason=(f["reason"] if f else "not measured in every seed")
                     + f" (holds in {out['fair_test_seeds']}/{len(runs)} seeds)")
    out["fair_test"] = first
    crit = [out["reward"], out["judge"], out["realism"]]
    out["claim_holds"] = all(c is not None and c["status"] == "yes" for c in crit) and out["fair_test_seeds"] == len(runs)
    out["all_hold"] = out["claim_holds"]
    out["bottom_line"] = bottom_line(out)
    return out
