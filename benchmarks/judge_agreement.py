"""Does a scenes judge read generated images as people do?

    python benchmarks/judge_agreement.py --labels A.csv [--labels B.csv ...] [--images DIR]
                                         [--judge rules|FOLDER] [--json]

Reads label files in the format of ``shared/human-labels/scenes-generated-1`` (one row per image:
``file`` relative to the CSV's folder -- or to ``--images`` --, ``prompt``, and the five 0/1 columns
``all_right, count_right, colour_right, shape_right, relation_right``; ``relation_right`` empty for
prompts without a relation), grades every image with the judge (``rules``: the rule-based reader, the
shipped ``scene-judge``; a FOLDER: a learnt judge such as the old ``plugins/scenes/weights/judge``) and
compares.

Per category (``all``, ``count``, ``colour``, ``shape``, ``relation``) it prints:

* ``n``: rows where the given annotators all agree (``n`` is the ``all`` category's; ``n_by_category``
  every category's) -- the consensus the judge is held against;
* ``agreement`` and ``kappa`` (Cohen's κ) of the judge with that consensus;
* ``per_annotator``: the same against each annotator alone (every labelled row), and
  ``annotators``: the annotators against each other (two or more files);
* ``accuracy``: the share of images read fully right per ``model`` column value (e.g. teacher,
  student), by the judge and by each annotator -- what a report would say, by eye and by the judge.

These labelled images are a measuring stick: no threshold of the judge was set on them.
Prints one JSON object (``--json``; a short table on stderr either way).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, progress  # noqa: E402

CATEGORIES = ("all", "count", "colour", "shape", "relation")


def load_labels(path: Path, images: Path | None = None) -> list[dict]:
    """Rows of one label file: ``{file (resolved Path), prompt, model, all, count, ...}`` (None: not applicable)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rel = Path(r["file"])
            file = path.parent / rel
            if images is not None and not file.is_file():
                file = images / rel if (images / rel).is_file() else images / rel.name
            row = {"file": file.resolve(), "prompt": r["prompt"], "model": r.get("model", "")}
            for cat in CATEGORIES:
                v = (r.get(f"{cat}_right") or "").strip()
                row[cat] = None if v == "" else bool(int(v))
            rows.append(row)
    return rows


def kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two boolean vectors (1.0 when both are constant and equal)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return 1.0 if pe == 1 else (po - pe) / (1 - pe)


def compare(judge: list[dict], labels: list[dict]) -> dict:
    """Agreement and κ per category between the judge's grades and one set of labels (same order)."""
    out = {"n": {}, "agreement": {}, "kappa": {}}
    for cat in CATEGORIES:
        pairs = [(j[cat], l[cat]) for j, l in zip(judge, labels) if l[cat] is not None and j[cat] is not None]
        if not pairs:
            continue
        a, b = np.array(pairs).T
        out["n"][cat] = len(pairs)
        out["agreement"][cat] = round(float((a == b).mean()), 4)
        out["kappa"][cat] = round(kappa(a, b), 4)
    return out


def consensus(annotators: list[list[dict]]) -> list[dict]:
    """Per row and category: the annotators' common label, or None where they disagree (or n/a)."""
    out = []
    for rows in zip(*annotators):
        c = {"file": rows[0]["file"], "prompt": rows[0]["prompt"], "model": rows[0]["model"]}
        for cat in CATEGORIES:
            vals = {r[cat] for r in rows}
            c[cat] = vals.pop() if len(vals) == 1 else None
        out.append(c)
    return out


def load_images(files: list[Path]):
    """The image files as one tensor ``[n, 3, H, W]`` in [0, 1]."""
    import torch
    from PIL import Image

    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
                        .permute(2, 0, 1) for f in files])


def grade_images(files: list[Path], prompts: list[str], judge: str) -> list[dict]:
    from rats_plugins.scenes.metrics import SceneJudge

    metric = SceneJudge() if judge == "rules" else SceneJudge(reader="cnn", path=judge)
    return metric.grades(load_images(files), prompts)


def accuracy_by_model(rows: list[dict], grades: list[dict] | None = None) -> dict:
    out: dict[str, float] = {}
    for model in sorted({r["model"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["model"] == model]
        vals = [(grades[i] if grades else rows[i])["all"] for i in idx]
        out[model or "all"] = round(float(np.mean([bool(v) for v in vals])), 4)
    return out


def run(label_files: list[Path], images: Path | None, judge: str) -> dict:
    annotators = [load_labels(p, images) for p in label_files]
    first = annotators[0]
    for p, rows in zip(label_files[1:], annotators[1:]):
        if [r["file"] for r in rows] != [r["file"] for r in first]:
            # align by file when the files list the images in another order
            by_file = {r["file"]: r for r in rows}
            missing = [str(r["file"]) for r in first if r["file"] not in by_file]
            if missing:
                raise SystemExit(f"judge_agreement: {p} has no row for {missing[0]} (and {len(missing) - 1} more)")
            rows[:] = [by_file[r["file"]] for r in first]
    missing = [r["file"] for r in first if not r["file"].is_file()]
    if missing:
        raise SystemExit(f"judge_agreement: image not found: {missing[0]} (give --images DIR)")
    progress(f"judge_agreement: grading {len(first)} images with the {judge} judge")
    grades = grade_images([r["file"] for r in first], [r["prompt"] for r in first], judge)
    cons = consensus(annotators)
    vs = compare(grades, cons)
    out = {
        "judge": judge,
        "labels": [str(p) for p in label_files],
        "images": len(first),
        "n": vs["n"].get("all", 0),
        "n_by_category": vs["n"],
        "agreement": vs["agreement"],
        "kappa": vs["kappa"],
        "per_annotator": {p.stem: {k: v for k, v in compare(grades, rows).items()}
                          for p, rows in zip(label_files, annotators)},
        "accuracy": {"judge": accuracy_by_model(first, grades),
                     **{p.stem: accuracy_by_model(rows) for p, rows in zip(label_files, annotators)}},
    }
    if len(annotators) > 1:
        out["annotators"] = {f"{a.stem} vs {b.stem}": compare(ra, rb)
                             for i, (a, ra) in enumerate(zip(label_files, annotators))
                             for b, rb in list(zip(label_files, annotators))[i + 1:]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", action="append", required=True, type=Path, help="a label CSV (repeat per annotator)")
    ap.add_argument("--images", type=Path, default=None, help="folder the CSV's `file` paths are relative to "
                    "(default: the CSV's own folder)")
    ap.add_argument("--judge", default="rules", help="'rules' (the shipped scene-judge) or a learnt judge's folder")
    ap.add_argument("--json", action="store_true", help="print the JSON object (always printed; kept for scripts)")
    args = ap.parse_args(argv)
    for p in args.labels:
        if not p.is_file():
            ap.error(f"no label file {p}")
    out = run(args.labels, args.images, args.judge)
    for cat in CATEGORIES:
        if cat in out["agreement"]:
            progress(f"  {cat:9s} n={out['n_by_category'][cat]:4d}  agreement {out['agreement'][cat]:.3f}  "
                     f"kappa {out['kappa'][cat]:.3f}")
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
