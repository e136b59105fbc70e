"""The verdict of a run, per criterion, instead of one ``student_beats_teacher`` boolean.

Three criteria compare the K-step student with the N-step teacher on the held-out prompts:

* ``reward``   the student's mean training reward is above the teacher's;
* ``judge``    the student's judge accuracy (a metric the training never sees) is at least the teacher's;
* ``realism``  the student's FID is not above the teacher's (lower is better).

Each criterion says ``holds`` (the point comparison), the difference, and -- where the numbers allow
one -- whether the difference is larger than its 95 % interval (``clear``): for the reward from the
per-image intervals, for the judge's accuracy from the binomial interval of each proportion. A
single run's FID has no interval; over several seeds use :func:`across_seeds`, where "not worse
beyond the seed spread" is the rule.

``reward_hacking`` is flagged when the student's reward is above the base model's at K steps while
its judge accuracy or FID is worse than the base model's at K steps or than the teacher's: the
reward went up, the independent measures went down.

``fair_test`` checks the precondition of the whole comparison: the base model at K steps must be
clearly worse than at N steps on the judge (the difference beyond its 95 % interval, so a judge
that is saturated -- or at its floor -- fails it) and have a higher FID. When it fails, beating the
teacher says nothing about few-step quality, and ``all_hold`` is false whatever the criteria say.

A criterion whose metric was not measured (no judge or FID metric configured) is ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

#: metric keys the verdict reads (the judge's and realism's); other worlds may map their own names
JUDGE_KEY = "judge_accuracy"
FID_KEY = "fid"


def _binomial_ci(p: float, n: int) -> float:
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else 0.0


def _criterion(name: str, student: float, other: float, better: str, ci: float | None) -> dict[str, Any]:
    diff = student - other
    holds = diff > 0 if name == "reward" else (diff >= 0 if better == "higher" else diff <= 0)
    out: dict[str, Any] = {
        "holds": bool(holds),
        "student": student,
        "teacher": other,
        "difference": diff,
        "better": better,
    }
    if ci is not None:
        out["ci95"] = ci
        signed = diff if better == "higher" else -diff
        out["clear"] = "better" if signed > ci else "worse" if -signed > ci else "within noise"
    return out


def fair_test(b: Mapping[str, Any] | None, bn: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Is the base model at K steps clearly worse than at N steps (judge beyond its interval, and FID)?"""
    if not b or not bn or JUDGE_KEY not in b or JUDGE_KEY not in bn:
        return None
    n_k, n_n = int(b.get("n") or 0), int(bn.get("n") or 0)
    gap = bn[JUDGE_KEY] - b[JUDGE_KEY]
    ci = math.hypot(_binomial_ci(b[JUDGE_KEY], n_k), _binomial_ci(bn[JUDGE_KEY], n_n)) if n_k and n_n else 0.0
    out: dict[str, Any] = {"judge_base_k": b[JUDGE_KEY], "judge_base_n": bn[JUDGE_KEY], "judge_gap": gap,
                           "judge_gap_ci95": ci, "judge_clearly_worse_at_k": bool(gap > ci)}
    if FID_KEY in b and FID_KEY in bn:
        out.update({"fid_base_k": b[FID_KEY], "fid_base_n": bn[FID_KEY], "fid_worse_at_k": bool(b[FID_KEY] > bn[FID_KEY])})
    out["holds"] = bool(out["judge_clearly_worse_at_k"] and out.get("fid_worse_at_k", True))
    return out


def verdict(results: Mapping[str, Mapping[str, Any]], student: str = "student", teacher: str = "teacher",
            base: str = "base", base_n: str = "base_teacher_steps") -> dict[str, Any]:
    """Per-criterion verdict from the report's ``held_out`` entries (``{label: {reward, reward_ci95,
    judge_accuracy, fid, n, ...}}``); empty when the student or the teacher was not evaluated."""
    s, t, b = results.get(student), results.get(teacher), results.get(base)
    if not s or not t:
        return {}
    out: dict[str, Any] = {}
    ci = math.hypot(s.get("reward_ci95", 0.0), t.get("reward_ci95", 0.0)) if "reward_ci95" in s else None
    out["reward"] = _criterion("reward", s["reward"], t["reward"], "higher", ci)
    if JUDGE_KEY in s and JUDGE_KEY in t:
        n_s, n_t = int(s.get("n") or 0), int(t.get("n") or 0)
        ci = math.hypot(_binomial_ci(s[JUDGE_KEY], n_s), _binomial_ci(t[JUDGE_KEY], n_t)) if n_s and n_t else None
        out["judge"] = _criterion("judge", s[JUDGE_KEY], t[JUDGE_KEY], "higher", ci)
    else:
        out["judge"] = None
    out["realism"] = _criterion("realism", s[FID_KEY], t[FID_KEY], "lower", None) \
        if FID_KEY in s and FID_KEY in t else None
    out["reward_hacking"] = hacking(s, t, b)
    out["fair_test"] = fair_test(b, results.get(base_n))
    measured = [c for c in (out["reward"], out["judge"], out["realism"]) if c is not None]
    out["all_hold"] = bool(measured) and all(c["holds"] for c in measured) and len(measured) == 3 \
        and bool(out["fair_test"] and out["fair_test"]["holds"])
    out["summary"] = summary_line(out)
    return out


def hacking(s: Mapping[str, Any], t: Mapping[str, Any], b: Mapping[str, Any] | None) -> dict[str, Any]:
    """Reward up (student above the base at K) while judge or FID is worse than the base at K or the teacher."""
    worse = []
    refs = [("teacher", t)] + ([("base at K", b)] if b else [])
    for who, ref in refs:
        if JUDGE_KEY in s and JUDGE_KEY in ref and s[JUDGE_KEY] < ref[JUDGE_KEY]:
            worse.append(f"judge accuracy below the {who}'s ({s[JUDGE_KEY]:.3f} < {ref[JUDGE_KEY]:.3f})")
        if FID_KEY in s and FID_KEY in ref and s[FID_KEY] > ref[FID_KEY]:
            worse.append(f"FID above the {who}'s ({s[FID_KEY]:.3g} > {ref[FID_KEY]:.3g})")
    reward_up = b is not None and s["reward"] > b["reward"]
    return {"flag": bool(reward_up and worse), "reward_up_over_base": reward_up, "worse": worse}


def summary_line(v: Mapping[str, Any]) -> str:
    def word(c: Mapping[str, Any] | None, what: str) -> str:
        if c is None:
            return f"{what}: not measured"
        sign = "≥" if c["better"] == "higher" and c["holds"] else "<" if c["better"] == "higher" else \
            "≤" if c["holds"] else ">"
        clear = f", {c['clear']}" if "clear" in c else ""
        return f"{what}: {'yes' if c['holds'] else 'NO'} ({c['student']:.4g} {sign} {c['teacher']:.4g}{clear})"

    parts = [word(v.get("reward"), "reward above the teacher's"), word(v.get("judge"), "judge at least the teacher's"),
             word(v.get("realism"), "FID not above the teacher's")]
    hack = v.get("reward_hacking") or {}
    parts.append("REWARD HACKING: " + "; ".join(hack["worse"]) if hack.get("flag") else "no reward hacking flagged")
    fair = v.get("fair_test")
    if fair is not None and not fair["holds"]:
        parts.insert(0, f"FAIR TEST FAILS (base judge accuracy {fair['judge_base_k']:.3f} at K vs "
                        f"{fair['judge_base_n']:.3f} at N: not clearly worse at K), so the criteria below do not test the claim")
    return "; ".join(parts)


def markdown(v: Mapping[str, Any]) -> str:
    """The verdict as a markdown section for report.md."""
    if not v:
        return ""
    rows = ["## Verdict (student at K steps vs teacher at N steps, held-out prompts)", "",
            "| criterion | holds | student | teacher | difference | 95% interval |", "|---|---|---:|---:|---:|---|"]
    names = {"reward": "reward (higher is better)", "judge": "judge accuracy (higher)", "realism": "FID (lower)"}
    for key, title in names.items():
        c = v.get(key)
        if c is None:
            rows.append(f"| {title} | not measured | | | | |")
            continue
        ci = f"±{c['ci95']:.3g} ({c['clear']})" if "ci95" in c else "none in one run: compare seeds"
        rows.append(f"| {title} | {'yes' if c['holds'] else '**no**'} | {c['student']:.4g} | {c['teacher']:.4g} "
                    f"| {c['difference']:+.3g} | {ci} |")
    fair = v.get("fair_test")
    if fair is not None:
        rows += ["", (f"Fair test (base model clearly worse at K than at N): {'yes' if fair['holds'] else '**no**'} — "
                      f"judge accuracy {fair['judge_base_k']:.3f} at K vs {fair['judge_base_n']:.3f} at N "
                      f"(gap {fair['judge_gap']:+.3f}, 95% interval ±{fair['judge_gap_ci95']:.3f})"
                      + (f", FID {fair['fid_base_k']:.3g} vs {fair['fid_base_n']:.3g}" if "fid_base_k" in fair else "")
                      + ("." if fair["holds"] else ". Without it the verdict does not test the claim."))]
    hack = v.get("reward_hacking") or {}
    rows += ["", ("**Reward hacking flagged**: the reward rose above the base model's at K steps while "
                  + "; ".join(hack["worse"]) + ".") if hack.get("flag") else
             "Reward hacking: not flagged (the rule: reward above the base model's at K steps while the judge "
             "accuracy or FID is worse than the base's at K or the teacher's)."]
    return "\n".join(rows)


def across_seeds(runs: Sequence[Mapping[str, Mapping[str, Any]]], student: str = "student",
                 teacher: str = "teacher", base: str = "base") -> dict[str, Any]:
    """The claim over several seeds (one ``held_out`` dict per seed).

    reward: the student's mean over seeds is above the teacher's and it is above in every seed;
    judge: the student's mean accuracy is at least the teacher's; realism: the student's mean FID
    exceeds the teacher's by no more than the seed spread (the larger of the two standard deviations
    over seeds). Reward hacking: flagged when any seed flags it.
    """
    import statistics as st

    def col(label: str, key: str) -> list[float]:
        return [float(r[label][key]) for r in runs if label in r and key in r[label]]

    out: dict[str, Any] = {"seeds": len(runs)}
    sr, tr = col(student, "reward"), col(teacher, "reward")
    out["reward"] = {"student_mean": st.fmean(sr), "teacher_mean": st.fmean(tr),
                     "wins": sum(a > b for a, b in zip(sr, tr)),
                     "holds": st.fmean(sr) > st.fmean(tr) and all(a > b for a, b in zip(sr, tr))}
    sj, tj = col(student, JUDGE_KEY), col(teacher, JUDGE_KEY)
    out["judge"] = None if not sj or not tj else {
        "student_mean": st.fmean(sj), "teacher_mean": st.fmean(tj), "wins": sum(a >= b for a, b in zip(sj, tj)),
        "holds": st.fmean(sj) >= st.fmean(tj)}
    sf, tf = col(student, FID_KEY), col(teacher, FID_KEY)
    if sf and tf:
        spread = max(st.stdev(sf) if len(sf) > 1 else 0.0, st.stdev(tf) if len(tf) > 1 else 0.0)
        out["realism"] = {"student_mean": st.fmean(sf), "teacher_mean": st.fmean(tf), "seed_spread": spread,
                          "wins": sum(a <= b for a, b in zip(sf, tf)),
                          "holds": st.fmean(sf) - st.fmean(tf) <= spread}
    else:
        out["realism"] = None
    verdicts = [verdict(r, student, teacher, base) for r in runs]
    out["reward_hacking_seeds"] = sum(bool(v.get("reward_hacking", {}).get("flag", False)) for v in verdicts)
    fair = [v.get("fair_test") for v in verdicts]
    out["fair_test_seeds"] = sum(bool(f and f["holds"]) for f in fair)
    out["fair_test"] = fair[0] if fair else None
    crit = [out["reward"], out["judge"], out["realism"]]
    out["claim_holds"] = all(c is not None and c["holds"] for c in crit) and out["fair_test_seeds"] == len(runs)
    return out
