"""Does the scenes reward see what the judge sees -- on the base model's *own* images?

    python benchmarks/scenes_reward.py [--clip FOLDER ...] [--attribute-judge FOLDER ...] [--prompts FILE]
                                       [--per-prompt 4] [--steps 2,50] [--pipeline FOLDER]

The reward CLIP is trained on clean renders; RATS scores the generator's soft, sometimes malformed
images with it. This samples the shipped base pipeline (plugins/scenes/weights/pipeline; ``--pipeline``
another) on the given prompts (default ``experiments/prompts/scenes_val.txt``: *train* combinations, so that choosing a
reward by this never looks at the held-out prompts), ``--per-prompt`` images each from fixed noise,
grades them with the judge and scores them with each ``--clip`` folder (through the stock
``pickscore`` reward). Per CLIP and sampler steps:

* ``auc_<category>``: the chance that a random image the judge calls right (in that category) has a
  higher reward than a random one it calls wrong -- 0.5 is a reward blind to it;
* ``pairs_<category>``: the same within one prompt (images of the same prompt, one right, one wrong):
  what a per-prompt reward gradient can use; with the number of such pairs;
* ``counterfactual``: on real renders of the prompts, how often the reward prefers a scene over the
  same scene made wrong in one attribute (rats_plugins.scenes.world.counterfactual), per kind.

``--attribute-judge FOLDER`` scores the same images with the diagnostic ``scene-attributes`` reward on
that (second, independently trained) judge as well (``rewards["scene-attributes:FOLDER"]``): how close to
the evaluation judge an ideal-ish reward comes on the generator's images.

Prints one JSON object; progress on stderr. About 4 minutes on one thread with the defaults
(sampling 484 images at 50 steps is most of it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    SCENES_VAL, SCENES_WEIGHTS as WEIGHTS, emit, machine, progress, scenes_base_samples, scenes_pipeline,
)
CATEGORIES = ("all", "count", "colour", "shape")


def agreement(rewards: np.ndarray, right: np.ndarray, per_prompt: int) -> dict:
    """AUC over all images and the within-prompt pairwise agreement of rewards with right/wrong."""
    a, b = rewards[right], rewards[~right]
    auc = float((a[:, None] > b[None, :]).mean()) if len(a) and len(b) else None
    wins = []
    for start in range(0, len(rewards), per_prompt):
        r, ok = rewards[start : start + per_prompt], right[start : start + per_prompt]
        wins += [float(x > y) for x in r[ok] for y in r[~ok]]
    return {"auc": None if auc is None else round(auc, 3),
            "pairs": round(float(np.mean(wins)), 3) if wins else None, "n_pairs": len(wins)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", nargs="+", default=[str(WEIGHTS / "clip")])
    ap.add_argument("--attribute-judge", nargs="*", default=[],
                    help="also score with the scene-attributes reward on these judge folders (never the evaluation judge)")
    ap.add_argument("--prompts", default=str(SCENES_VAL))
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--steps", default="2,50")
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--pipeline", default=None, help="the base pipeline folder whose images are scored (default: the shipped one)")
    args = ap.parse_args(argv)

    backbone, prompts, noise = scenes_base_samples(args.prompts, args.per_prompt, args.seed, args.pipeline)
    from rats_core.evaluation.evaluate import generate
    from rats_plugins.rewards.plugin import pickscore
    from rats_plugins.scenes import world
    from rats_plugins.scenes.plugin import scene_attributes
    from rats_plugins.scenes.metrics import SceneJudge

    judge = SceneJudge()
    images, grades = {}, {}
    for k in (int(s) for s in args.steps.split(",")):
        progress(f"sampling {len(prompts)} images at {k} steps")
        images[k] = generate(backbone, backbone.denoiser, prompts, k, noise, batch_size=128,
                             guidance_scale=args.guidance_scale)
        grades[k] = judge.grades(images[k], prompts)
    rng = np.random.default_rng(args.seed)
    pairs = [world.render_counterfactual(p, rng) for p in prompts]
    kinds = np.array([p[2] for p in pairs])
    out = {"benchmark": "scenes_reward", "pipeline": scenes_pipeline(args.pipeline),
           "prompts": args.prompts, "images_per_prompt": args.per_prompt,
           "judge_right_rate": {str(k): round(float(np.mean([g["all"] for g in gs])), 3) for k, gs in grades.items()},
           "machine": machine(), "clips": {}}
    rewards = [("clips", folder, lambda f=folder: pickscore(path=f)) for folder in args.clip] + [
        ("rewards", f"scene-attributes:{folder}", lambda f=folder: scene_attributes(path=f)) for folder in args.attribute_judge]
    for section, label, build in rewards:
        progress(f"scoring with {label}")
        reward = build()
        res = {}
        with torch.no_grad():
            for k, imgs in images.items():
                r = reward(imgs, prompts).float().numpy()
                res[f"{k}_steps"] = {"mean_reward": round(float(r.mean()), 2)} | {
                    c: agreement(r, np.array([bool(g[c]) for g in grades[k]]), args.per_prompt) for c in CATEGORIES}
            good = reward(torch.from_numpy(np.stack([p[0] for p in pairs])), prompts).float().numpy()
            bad = reward(torch.from_numpy(np.stack([p[1] for p in pairs])), prompts).float().numpy()
        res["counterfactual"] = {str(k): round(float((good > bad)[kinds == k].mean()), 3) for k in sorted(set(kinds))}
        out.setdefault(section, {})[label] = res
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
