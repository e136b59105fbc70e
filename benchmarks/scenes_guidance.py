"""The scenes base model by sampler steps and classifier-free guidance: where is it already good?

    python benchmarks/scenes_guidance.py [--steps 2,4,50] [--guidance 1.5,2,3,4] [--prompts FILE] [--per-prompt 2]
                                         [--pipeline FOLDER]

Samples the shipped base pipeline (plugins/scenes/weights/pipeline; ``--pipeline`` another one, e.g. a
retrained base in ``pretrain --out DIR``'s ``DIR/pipeline``) on the prompts (default
``experiments/prompts/scenes_val.txt``: *train* combinations, so a student's or teacher's guidance
chosen from this never looks at the held-out prompts), ``--per-prompt`` images each from the same
fixed noise for every setting, and reads them with the judge (``scene-judge``: all right and per
category, malformed-object rate) and ``scene-fid``. Prints one JSON object; about 2 minutes per
guidance value at 50 steps on one thread with the defaults (242 images), seconds at 2 or 4 steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    SCENES_VAL, emit, machine, progress, scenes_base_samples, scenes_pipeline,
)

KEEP = ("judge_accuracy", "judge_count", "judge_colour", "judge_shape", "judge_relation", "judge_malformed_rate", "fid")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="2,4,50")
    ap.add_argument("--guidance", default="1.5,2,3,4")
    ap.add_argument("--prompts", default=str(SCENES_VAL))
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--pipeline", default=None, help="a StableDiffusionPipeline folder (default: the shipped base)")
    args = ap.parse_args(argv)

    backbone, prompts, noise = scenes_base_samples(args.prompts, args.per_prompt, args.seed, args.pipeline)
    from rats_core.evaluation.evaluate import generate
    from rats_plugins.scenes.metrics import SceneFID, SceneJudge

    judge, fid = SceneJudge(), SceneFID()
    results = {}
    for k in (int(s) for s in args.steps.split(",")):
        for g in (float(s) for s in args.guidance.split(",")):
            progress(f"{len(prompts)} images at {k} steps, guidance {g}")
            imgs = generate(backbone, backbone.denoiser, prompts, k, noise, batch_size=128, guidance_scale=g)
            r = judge(imgs, prompts) | fid(imgs, prompts)
            results.setdefault(str(k), {})[f"{g:g}"] = {m: round(r[m], 4) for m in KEEP if m in r}
    emit({"benchmark": "scenes_guidance", "pipeline": scenes_pipeline(args.pipeline),
          "prompts": args.prompts, "images": len(prompts),
          "noise_seed": args.seed, "results": results, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
