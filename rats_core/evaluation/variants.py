"""What the report calls each model variant (base model, teacher, RATS student, at each step count), and the
order it shows them in.
"""

from __future__ import annotations

from typing import Any, Sequence

LABELS = {
    "base": "base model",
    "base_teacher_steps": "base model",
    "teacher": "teacher",
    "student": "RATS student",
}


def human_label(label: str) -> str:
    """Human name of a training-report variant (``student_4`` is the student sampled with 4 steps,
    ``base_4`` the base model)."""
    head, _, tail = label.rpartition("_")
    if tail.isdigit() and head in LABELS:
        return LABELS[head]
    return LABELS.get(label, label)


def ordered(labels: Sequence[str], results: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Base model, teacher, student, then anything else; within each by sampler steps (``results``'
    ``steps``, else the number a label ends with): base 1, 2, 4, 50 steps, teacher, student 1, 2, 4."""
    group = {"base": 0, "base_teacher_steps": 0, "teacher": 1, "student": 2}

    def key(label: str) -> tuple[int, float, str]:
        head, _, tail = label.rpartition("_")
        numbered = tail.isdigit() and head in group
        steps = (results or {}).get(label, {}).get("steps")
        if not isinstance(steps, (int, float)):
            steps = int(tail) if numbered else float("inf") if label == "base_teacher_steps" else 0
        return (group.get(head if numbered else label, len(group)), float(steps), label)

    return sorted(labels, key=key)


def steps_label(steps: Any) -> str:
    return "1 step" if str(steps) == "1" else f"{steps} steps"
