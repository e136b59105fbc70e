"""The training history: metrics.jsonl read back, smoothed curves, the step at which the student overtakes
the teacher on the reward, and how the run went (ranks, interruptions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rats_core.parallel.distributed import ranks_text


def smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def run_history(run_dir: Path, fallback: Sequence[dict[str, Any]] = (), last_step: int | None = None
                ) -> list[dict[str, Any]]:
    """The whole run's records, read from ``metrics.jsonl``, in step order.

    A resumed run appends to the file, and logs again the steps between the checkpoint it resumed
    from and the interruption: for each step the record written last wins (training records and
    held-out evaluation records separately). A torn last line (the process was killed while writing)
    is skipped. Records past ``last_step`` (an earlier attempt configured for more steps) are left out.
    Without a readable file, ``fallback`` (the records this process kept) is returned.
    """
    import json

    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return list(fallback)
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            continue
        if last_step is not None and rec["step"] > last_step:
            continue
        (evals if any(str(k).startswith("eval/") for k in rec) else train)[rec["step"]] = rec
    if not train and not evals:
        return list(fallback)
    # at one step the training record comes first, then that step's evaluation (as they were written)
    return [r for _, _, r in sorted([(s, 0, r) for s, r in train.items()] + [(s, 1, r) for s, r in evals.items()],
                                    key=lambda t: (t[0], t[1]))]


#: what report.md says about how the overtaking step is found (docs/eval.md has the full rule)
OVERTAKE_RULE = (
    "the first held-out evaluation during training (eval.every) at which the student's mean reward is above "
    "the teacher's; without such evaluations, the first logged step at which the student's training-batch "
    "reward, smoothed by a moving average over 5% of the steps, is above the teacher's"
)


def overtake_step(history: Sequence[dict[str, Any]]) -> tuple[int | None, str]:
    """The first step at which the student's reward exceeds the teacher's.

    The rule (also in docs/eval.md): when held-out evaluations were logged during training
    (``eval/reward_student`` and ``eval/reward_teacher``, every ``eval.every`` steps), the step of the
    first one where the student's mean held-out reward is strictly above the teacher's. Otherwise the
    training batches' rewards, each smoothed by a trailing moving average over ``max(1, n // 20)``
    logged steps, and the first step where the student's average is strictly above the teacher's.
    ``history`` must be the whole run's records (:func:`run_history`), not only those of the last
    resumed process. Returns ``(step or None, source)``.
    """
    evals = [h for h in history if "eval/reward_student" in h and "eval/reward_teacher" in h]
    if evals:
        source = f"held-out evaluations during training ({len(evals)}, steps {evals[0]['step']}–{evals[-1]['step']})"
        for h in evals:
            if h["eval/reward_student"] > h["eval/reward_teacher"]:
                return int(h["step"]), source
        return None, source
    train = [h for h in history if "reward_student" in h and "reward_teacher" in h]
    if not train:
        return None, "no history"
    window = max(1, len(train) // 20)
    what = f"training batches, moving average over {window} step{'s' if window > 1 else ''}"
    s = smooth([h["reward_student"] for h in train], window)
    t = smooth([h["reward_teacher"] for h in train], window)
    for h, a, b in zip(train, s, t):
        if a > b:
            return int(h["step"]), what
    return None, what


def stays_ahead(history: Sequence[dict[str, Any]], step: int | None) -> bool | None:
    """Whether the student is above the teacher at every held-out evaluation from ``step`` on (None
    without held-out evaluations or an overtaking step)."""
    evals = [h for h in history if "eval/reward_student" in h and "eval/reward_teacher" in h]
    if step is None or not evals:
        return None
    return all(h["eval/reward_student"] > h["eval/reward_teacher"] for h in evals if h["step"] >= step)


def history_summary(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    train = [h["step"] for h in history if "reward_student" in h]
    evals = [h["step"] for h in history if "eval/reward_student" in h]
    return {"train_records": len(train), "first_step": train[0] if train else None,
            "last_step": train[-1] if train else None, "eval_steps": evals}


def _history_line(history: Sequence[dict[str, Any]]) -> str:
    h = history_summary(history)
    if not h["train_records"]:
        return ""
    return (f"Curves: {h['train_records']} logged steps ({h['first_step']}–{h['last_step']}) from metrics.jsonl"
            + (f", held-out evaluations at steps {', '.join(map(str, h['eval_steps']))}" if h["eval_steps"] else "")
            + ".")


def run_line(ranks: int, resumed_at: Sequence[int]) -> str:
    """How the run went: on how many ranks, and whether it was interrupted and resumed (and where)."""
    if not resumed_at:
        return f"Trained on {ranks_text(ranks)}, in one go (never interrupted)."
    steps = ", ".join(str(s) for s in resumed_at)
    times = "once" if len(resumed_at) == 1 else f"{len(resumed_at)} times"
    return (f"Trained on {ranks_text(ranks)}; interrupted and resumed {times}, from the checkpoint at step "
            f"{steps}.")
