"""Does scene-fid order images the way the validated judge (and people) do?

    python benchmarks/scenes_fid_check.py [--steps 1,2,4,50] [--prompts FILE] [--guidance 3]
                                          [--labels DIR] [--pipeline FOLDER]

A Fréchet distance is only as good as its features. This samples the scenes base pipeline on the
held-out prompts (``--prompts``; from one fixed noise) at each number of steps, and reads every set
with the rule-based ``scene-judge`` (validated against two annotators, benchmarks/judge_agreement.py)
and with ``scene-fid`` on both feature sets (``statistics``, the default, and ``cnn``, the learnt
judge's). A sound realism distance falls as the judge's accuracy rises (few-step samples are worse).

With ``--labels DIR`` (a folder in the format of ``shared/human-labels/scenes-generated-1``), it also
compares the labelled images per ``model`` (e.g. teacher at 50 steps vs student at 2) with the
annotators' own share of fully right images.

``agrees`` per feature set: whether the FID's order of the sets is the reverse of the judge's
accuracy order (Kendall's tau between -FID and accuracy, 1.0 = the same order). Prints one JSON
object; about 3 minutes on one thread (the 50-step set is most of it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, machine, progress, scenes_base_samples, scenes_pipeline  # noqa: E402

HELDOUT = ROOT / "experiments" / "prompts" / "scenes_heldout.txt"


def kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a of two equally long lists (1: same order, -1: reversed)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s / (n * (n - 1) / 2)) if n > 1 else 1.0


def measure(sets: dict[str, tuple], human: dict[str, float] | None = None) -> dict:
    from rats_plugins.scenes.metrics import SceneFID, SceneJudge

    judge = SceneJudge()
    fids = {"statistics": SceneFID(), "cnn": SceneFID(features="cnn")}
    rows = {}
    for name, (imgs, prompts) in sets.items():
        row = {"judge_accuracy": round(judge(imgs, prompts)["judge_accuracy"], 4)}
        if human and name in human:
            row["annotators_accuracy"] = human[name]
        for kind, fid in fids.items():
            row[f"fid_{kind}"] = round(fid(imgs, prompts)["fid"], 4)
        rows[name] = row
    names = list(rows)
    acc = [rows[n]["annotators_accuracy" if human else "judge_accuracy"] for n in names]
    agree = {kind: round(kendall([-rows[n][f"fid_{kind}"] for n in names], acc), 3) for kind in fids}
    return {"sets": rows, "kendall_tau_minus_fid_vs_accuracy": agree,
            "accuracy_from": "annotators" if human else "scene-judge (rules)"}


def labelled_sets(folder: Path) -> tuple[dict, dict]:
    """Per ``model`` of a labelled folder: its images and prompts, and the annotators' mean share of
    fully right images (every CSV in the folder is one annotator; judge_agreement reads them)."""
    from judge_agreement import load_images, load_labels

    annotators = [load_labels(f) for f in sorted(folder.glob("*.csv"))]
    sets, human = {}, {}
    for model in sorted({r["model"] for r in annotators[0]}):
        rows = [r for r in annotators[0] if r["model"] == model]
        sets[model] = (load_images([r["file"] for r in rows]), [r["prompt"] for r in rows])
        votes = [[r["all"] for r in rows_a if r["model"] == model] for rows_a in annotators]
        human[model] = round(float(np.mean(votes)), 4)
    return sets, human


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="1,2,4,50")
    ap.add_argument("--prompts", default=str(HELDOUT))
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--labels", type=Path, default=None, help="a labelled folder (shared/human-labels format)")
    ap.add_argument("--pipeline", default=None)
    args = ap.parse_args(argv)

    import rats_core  # noqa: F401
    out = {"benchmark": "scenes_fid_check", "pipeline": scenes_pipeline(args.pipeline), "prompts": args.prompts}
    if args.steps:
        backbone, prompts, noise = scenes_base_samples(args.prompts, 1, args.seed, args.pipeline)
        from rats_core.evaluation.evaluate import generate

        sets = {}
        for k in (int(s) for s in args.steps.split(",")):
            progress(f"base model: {len(prompts)} images at {k} steps")
            sets[f"base@{k}"] = (generate(backbone, backbone.denoiser, prompts, k, noise, batch_size=128,
                                          guidance_scale=args.guidance), prompts)
        out["base"] = measure(sets)
    if args.labels:
        progress(f"labelled images in {args.labels}")
        out["labelled"] = measure(*labelled_sets(args.labels))
    out["machine"] = machine()
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
