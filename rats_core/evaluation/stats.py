"""The statistics of the verdict, and the one rule for what "holds" means.

Base model, teacher and student are sampled on the same held-out prompts from the same initial noise,
so they are compared **image by image** (paired), not as two independent samples:

* **judge accuracy** (right/wrong per image): the exact McNemar test on the discordant pairs (images
  one model gets right and the other wrong) and its interval on the difference of accuracies,
  ``(b + c) / n · (2π − 1)`` with ``π`` the exact (Clopper–Pearson) interval of ``b`` out of ``b + c``
  (conditional on the number of discordant pairs; it excludes 0 exactly when McNemar's ``p < 0.05``);
* **reward** (a number per image): a paired bootstrap over prompts (resampling prompts, each with all
  of its images, for both models at once) with a fixed seed, so the same numbers give the same interval;
* **FID** (one number per image set): no interval in one run; over seeds, the per-seed paired
  differences (student − teacher in each seed) and their t interval;
* **without per-image data** (an older report.json, a metric without per-image grades): unpaired
  intervals, Newcombe's hybrid score interval (Wilson, continuity-corrected) for a difference of two
  accuracies and ``hypot`` of the two means' intervals for rewards; the output says "unpaired".

Single proportions get the continuity-corrected Wilson interval, which never collapses at 0 or 1.

**The rule** (every criterion, everywhere: report.md, report.json, ``rats ablate``,
``benchmarks/student_beats_teacher.py``, the reward-hacking flag). ``[lo, hi]`` is the 95 % interval of
the student's advantage (the difference oriented so that positive is better for the student: accuracy
and reward student − other, FID other − student).

* a **real** difference is one whose interval excludes 0: ``clear`` is ``"better"`` (``lo > 0``) or
  ``"worse"`` (``hi < 0``); otherwise it is ``"within noise"``;
* **"better"** criteria (reward): ``yes`` when ``lo > 0``, ``no`` when ``hi < 0``, else ``within noise``;
* **"not worse"** criteria (judge accuracy, FID): ``yes`` when ``lo > −margin`` (worse by less than the
  margin, at 95 %), ``no`` when the student is really worse (``hi < 0``) and that is not ruled to be
  within the margin, else ``within noise``;
* ``not testable`` when there is no interval (one run's FID; a judge accuracy without ``n``).

Margins (:class:`Margins`, ``eval.verdict`` in a config): ``judge`` 0.02 (two points of accuracy;
a margin of 0 would ask the student to be shown at least as good, which no finite sample shows for an
exact tie) and ``fid`` 0.02 (2 % of the teacher's mean FID, since FID's scale differs between worlds:
digits' FIDs are tens, scenes' below 1).

Only a real difference says "no", and only a "no" (of the judge, or over seeds FID, against the
teacher or the base model) sets off the reward-hacking flag: a difference the statistics call within
noise reads "within noise", never "no".
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from rats_core.config import Margins  # noqa: F401  (the config section eval.verdict; defined with the schema)

#: the two-sided 95 % normal quantile
Z95 = 1.959963984540054

#: two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
_T95 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
        2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
        2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
        2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
        2.045229642, 2.042272456)

STATUSES = ("yes", "no", "within noise", "not testable")


# ----------------------------------------------------------------------------- single proportions


def wilson(k: int, n: int, *, correction: bool = True, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` (continuity-corrected by default: Newcombe
    1998's method 4; ``correction=False`` is method 3). ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p, q = k / n, 1 - k / n
    if not correction:
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * q / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)
    lo = 0.0 if k == 0 else (2 * n * p + z * z - 1 - z * math.sqrt(z * z - 2 - 1 / n + 4 * p * (n * q + 1))) / (2 * (n + z * z))
    hi = 1.0 if k == n else (2 * n * p + z * z + 1 + z * math.sqrt(z * z + 2 - 1 / n + 4 * p * (n * q - 1))) / (2 * (n + z * z))
    return max(0.0, lo), min(1.0, hi)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Interval of ``k1/n1 − k2/n2`` for two *independent* proportions: Newcombe's hybrid score interval
    from continuity-corrected Wilson limits (Newcombe 1998b, method 11)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def _binom_logpmf(i: int, n: int, p: float) -> float:
    if p <= 0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1:
        return 0.0 if i == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_binom_logpmf(i, n, p)) for i in range(k + 1)))


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of ``k`` successes in ``n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0

    def solve(f: Any) -> float:  # f is monotone increasing in p; find f(p) = 0
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(lambda p: (1 - binomial_cdf(k - 1, n, p)) - alpha / 2)
    upper = 1.0 if k == n else solve(lambda p: alpha / 2 - binomial_cdf(k, n, p))
    return lower, upper


# ----------------------------------------------------------------------------- paired comparisons


def mcnemar(a_right: Sequence[bool], b_right: Sequence[bool]) -> dict[str, Any]:
    """Paired comparison of two accuracies on the same images: ``a − b``.

    ``b``/``c``: images only ``a`` / only ``b`` gets right; ``p_value`` the exact two-sided McNemar test
    (``min(1, 2·P(X ≤ min(b, c)))``, X ~ Binomial(b + c, ½)); ``interval`` the difference's 95 % interval
    conditional on the b + c discordant pairs (see the module docstring).
    """
    if len(a_right) != len(b_right):
        raise ValueError(f"paired data of different lengths: {len(a_right)} and {len(b_right)}")
    n = len(a_right)
    b = sum(bool(x) and not bool(y) for x, y in zip(a_right, b_right))
    c = sum(bool(y) and not bool(x) for x, y in zip(a_right, b_right))
    d = b + c
    p_value = 1.0 if d == 0 else min(1.0, 2 * binomial_cdf(min(b, c), d, 0.5))
    if n == 0:
        return {"difference": 0.0, "interval": None, "n": 0, "b": 0, "c": 0, "p_value": 1.0}
    lo, hi = clopper_pearson(b, d) if d else (0.5, 0.5)
    return {"difference": (b - c) / n, "interval": [d / n * (2 * lo - 1), d / n * (2 * hi - 1)],
            "n": n, "b": b, "c": c, "p_value": p_value}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, groups: Sequence[Any] | None = None,
                     resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``a − b`` and its 95 % percentile interval from a paired bootstrap.

    ``groups`` (e.g. each image's prompt) are resampled whole, with all their images, so several
    images of one prompt count as one draw. Deterministic: the same inputs and seed give the same
    interval.
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired data of different lengths: {len(a)} and {len(b)}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size == 0:
        return {"difference": 0.0, "interval": None, "n": 0}
    keys = list(range(diff.size)) if groups is None else list(groups)
    index: dict[Any, int] = {}
    codes = np.array([index.setdefault(k, len(index)) for k in keys])
    sums = np.bincount(codes, weights=diff)
    counts = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"difference": float(diff.mean()), "interval": [float(lo), float(hi)], "n": int(diff.size),
            "groups": len(sums)}


def t_quantile(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("t_quantile needs at least one degree of freedom")
    if df <= len(_T95):
        return _T95[df - 1]
    z, v = Z95, float(df)  # Cornish-Fisher expansion: within 2e-6 of the exact value beyond 30
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def paired_t(differences: Sequence[float]) -> dict[str, Any]:
    """Mean of per-seed paired differences and its 95 % t interval (None with fewer than two)."""
    import statistics

    n = len(differences)
    if n == 0:
        return {"difference": 0.0, "interval": None, "n": 0}
    mean = statistics.fmean(differences)
    if n < 2:
        return {"difference": mean, "interval": None, "n": n}
    half = t_quantile(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return {"difference": mean, "interval": [mean - half, mean + half], "n": n}


def unpaired_mean_difference(a: float, a_ci: float, b: float, b_ci: float) -> dict[str, Any]:
    """``a − b`` of two means given their 95 % half-widths, as independent (no per-image data)."""
    half = math.hypot(a_ci, b_ci)
    return {"difference": a - b, "interval": [a - b - half, a - b + half]}


# ----------------------------------------------------------------------------- the rule


def clear(lo: float, hi: float) -> str:
    """``better`` / ``worse`` when the interval of the student's advantage excludes 0, else ``within noise``."""
    return "better" if lo > 0 else "worse" if hi < 0 else "within noise"


def decide(interval: Sequence[float] | None, *, claim: str, margin: float = 0.0) -> str:
    """The status of a criterion from the interval of the student's advantage (positive = better).

    ``claim`` is ``"better"`` (the interval above 0) or ``"not worse"`` (above ``−margin``); see the
    module docstring. Returns one of :data:`STATUSES`.
    """
    if interval is None:
        return "not testable"
    lo, hi = interval
    if claim == "better":
        return "yes" if lo > 0 else "no" if hi < 0 else "within noise"
    if claim == "not worse":
        return "yes" if lo > -margin else "no" if hi < 0 else "within noise"
    raise ValueError(f"claim must be 'better' or 'not worse', not {claim!r}")


def holds(status: str) -> bool | None:
    """``True`` for yes, ``False`` for no, ``None`` for within noise / not testable."""
    return True if status == "yes" else False if status == "no" else None
