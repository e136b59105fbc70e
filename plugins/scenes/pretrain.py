"""Pretrain the scenes world on CPU: the judge, the VAE, the base text-to-image pipeline and the reward CLIP.

    OMP_NUM_THREADS=1 python -m rats_plugins.scenes.pretrain [--what all|judge|vae|diffusion|clip|eval]
                                                             [--out DIR] [--minutes-unet M] [--no-counterfactuals]
                                                             [--generated N] [--resume]
    OMP_NUM_THREADS=1 python -m rats_plugins.scenes.pretrain --what preferences --annotator DIR/judge
                                                             [--clip FOLDER] [--pipeline FOLDER] --out OUT

Writes into ``--out`` (default: the shipped ``plugins/scenes/weights/``)::

    pipeline/   a diffusers StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer,
                scheduler, model_index.json), loaded by the ``sd15`` backbone through backbone.path
    clip/       a transformers CLIPModel + tokenizer + preprocessor_config.json, loaded by the
                ``pickscore`` reward through rewards.N.path
    judge/      the attribute judge (metrics only; never used in training)
    pretrain_report.json   what was trained, how long, and the pipeline's held-out judge numbers

Data: the generator (VAE, UNet, text encoder) trains on renders of the *train* prompts, data seed
stream 1; the reward CLIP on renders of the train prompts from another seed stream (2) with its own
initialisation, and on such renders redrawn by the trained generator (its UNet and VAE, unconditionally:
never its text encoder), as a preference model learns from generated images; the judge on random scenes
with near misses (seed stream 3), including the held-out combinations' attributes in random scenes (it is
an evaluator, not a generator).

The shipped weights (each stage one thread, on a 2-core machine running other jobs beside it):

* judge: 700 steps of batch 64, 631 s; VAE: 400 steps of batch 32, 814 s (the first release's, kept);
* UNet (width 32: 4.13 M parameters) + text encoder: 5854 steps of batch 32 in a 40-minute budget
  (``--minutes-unet 40``), 2665 s wall; the first release's UNet was 4x narrower (1.06 M) and reached
  13 % fully right held-out scenes at N = 50, too weak a base for the claim;
* reward CLIP: 1000 steps of batch 96, 1097 s, with degraded-copy and counterfactual-scene negatives and
  4096 right/counterfactual pairs redrawn by the base generator (``--generated 4096``; drawing them took
  145 s; see :func:`rats_plugins.scenes.pipeline.train_clip`): on held-out real renders it prefers the
  right scene over the same scene with one shape changed 93 % of the time (colour, count 100 %, the two
  objects swapped 97 %) and a render over its degraded copy 100 %. The CLIPs before it (benchmarks/README.md):
  without degraded copies (preferred a render over its degraded copy 79 % of the time, by 1.6 reward
  points; with them 100 %, by 7.7), without counterfactual scenes (``--no-counterfactuals --generated 0``,
  428 s; its students' held-out FID 1.01) and without generated pairs (``--generated 0``, 761 s; FID 0.69;
  this one's 0.62, the teacher's 0.61).

The UNet's step count follows its time budget (``--minutes-unet``), so a faster machine trains it
longer and the result is not bit-identical across machines.

``--what preferences`` (not part of ``all``) fine-tunes a reward CLIP the way PickScore was made: on
the base generator's own images of the train prompts, pairs ranked by an *annotator* -- a judge trained
with another seed (``--what judge --seed 1 --out DIR``), never the evaluation judge, which is refused
(:mod:`rats_plugins.scenes.preferences`).

``--what diffusion --resume`` continues the UNet and text encoder in ``--out`` for another budget. The
shipped base is undertrained: a second 40-minute round nearly doubles its judge accuracy on the val
prompts (50 steps 0.38 -> 0.57, 2 steps 0.15 -> 0.30) but not what a 2-step RATS student reaches, so the
claim gets further away; it is not shipped (benchmarks/README.md, "A stronger base model").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import rats_core  # noqa: F401  (installs the CPU-torchvision guard before diffusers is imported)

from . import world
from .stages import STREAM, cosine_lr, log  # noqa: F401  (the stages' shared pieces)
from .judge import JudgeNet, counts_and_centres, density_target, grade, save_judge, summarise

WEIGHTS_DIR = Path(__file__).parent / "weights"
# ----------------------------------------------------------------------------- judge


def judge_batch(rng: np.random.Generator, n: int, generated_like: float = 0.0):
    ex = [world.judge_example(rng, generated_like=generated_like) for _ in range(n)]
    x = torch.from_numpy(np.stack([e.image for e in ex]))
    c = torch.from_numpy(np.stack([e.counts for e in ex]))
    d = torch.stack([density_target(e.objects) for e in ex])
    return x, c, d


def train_judge(out: Path, seed: int, steps: int, batch: int = 64, generated_like: float = 0.0) -> dict:
    """The learnt judge; ``generated_like``: the share of its training scenes drawn the way a generator
    draws them (world.draw_generated_like) -- 0 for the shipped (pre-2026-12) judge."""
    torch.manual_seed(seed * 100 + STREAM["judge"])
    rng = np.random.default_rng([seed, STREAM["judge"]])
    model = JudgeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    xv, cv, _ = judge_batch(np.random.default_rng([seed, STREAM["judge"], 1]), 256)
    t0 = time.time()
    for step in range(1, steps + 1):
        cosine_lr(opt, 2e-3, step, steps, warmup=50)
        x, c, d = judge_batch(rng, batch, generated_like)
        pred = model(x)
        # the density map itself, and its mass per cell (the count), which must come out right
        loss = 100 * F.mse_loss(pred, d) + F.smooth_l1_loss(pred.sum(dim=(-1, -2)), d.sum(dim=(-1, -2)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            with torch.no_grad():
                model.eval()
                exact = float((counts_and_centres(model(xv))[0] == cv).flatten(1).all(1).float().mean())
                model.train()
            log(f"judge step {step}/{steps} loss {loss.item():.4f} exact tables {exact:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    # held-out check: real renders of the held-out prompts, and fresh near-miss scenes
    prompts = world.split_prompts("heldout") * 2
    real = torch.from_numpy(world.render_batch(prompts, seed * 100 + STREAM["eval"]))
    acc_real = summarise(grade(model, real, prompts))
    x, c, _ = judge_batch(np.random.default_rng([seed, STREAM["eval"]]), 1000)
    with torch.no_grad():
        table = counts_and_centres(model(x))[0]
    exact = float((table == c).flatten(1).all(1).float().mean())
    info = {"seconds": round(time.time() - t0, 1), "steps": steps, "batch": batch, "generated_like": generated_like,
            "heldout_real_renders": acc_real, "random_scenes_with_near_misses_exact_table": exact}
    save_judge(model, out / "judge", {"trained": info})
    log(f"judge: {info}")
    return info


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", default="all", choices=["all", "judge", "vae", "diffusion", "clip", "preferences", "eval"])
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge-steps", type=int, default=700)
    ap.add_argument("--generated-like", type=float, default=0.0,
                    help="judge: share of training scenes drawn the way a generator draws them (0: renders only)")
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--clip-steps", type=int, default=1000)
    ap.add_argument("--minutes-unet", type=float, default=40.0)
    ap.add_argument("--counterfactuals", action=argparse.BooleanOptionalAction, default=True,
                    help="clip: also train on counterfactual scenes (the shipped CLIP; --no-counterfactuals "
                         "trains the first release's, see train_clip)")
    ap.add_argument("--generated", type=int, default=4096,
                    help="clip: also train on this many right/counterfactual pairs redrawn by the base pipeline "
                         "in --out (or --pipeline); 0: none (see train_clip)")
    ap.add_argument("--pipeline", default=None,
                    help="clip --generated: the base pipeline folder (default: OUT/pipeline)")
    ap.add_argument("--resume", action="store_true", help="diffusion: continue from the UNet/text encoder in --out")
    ap.add_argument("--annotator", default=None,
                    help="preferences: a judge folder trained with another seed than the evaluation judge "
                         "(--what judge --seed 1 --out DIR makes DIR/judge), which ranks the generator's images")
    ap.add_argument("--clip", default=None, help="preferences: the reward CLIP to fine-tune (default: OUT/clip)")
    ap.add_argument("--preference-steps", type=int, default=300)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "pretrain_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["threads"] = torch.get_num_threads()
    stages = ["judge", "vae", "diffusion", "clip", "eval"] if args.what == "all" else [args.what]
    for stage in stages:
        if stage == "judge":
            report["judge"] = train_judge(out, args.seed, args.judge_steps, generated_like=args.generated_like)
        elif stage == "vae":
            from .pipeline import train_vae
            report["vae"] = train_vae(out, args.seed, args.vae_steps)
        elif stage == "diffusion":
            from .pipeline import train_diffusion
            report["diffusion"] = train_diffusion(out, args.seed, args.minutes_unet, resume=args.resume)
        elif stage == "clip":
            from .pipeline import train_clip
            pipeline = Path(args.pipeline) if args.pipeline else out / "pipeline"
            if args.generated and not (pipeline / "model_index.json").exists():
                raise SystemExit(f"error: the reward CLIP's generated pairs (--generated {args.generated}) are drawn by "
                                 f"the base pipeline, and {pipeline} has none (no model_index.json). Train it first "
                                 "(--what diffusion), point --pipeline at one (e.g. plugins/scenes/weights/pipeline), "
                                 "or pass --generated 0.")
            report["clip"] = train_clip(out, args.seed, args.clip_steps, counterfactuals=args.counterfactuals,
                                        generated=args.generated, pipeline=pipeline)
        elif stage == "preferences":
            from .preferences import finetune_clip_on_preferences
            if not args.annotator:
                raise SystemExit("error: --what preferences needs --annotator DIR/judge, a judge trained with another "
                                 "seed than the evaluation judge (python -m rats_plugins.scenes.pretrain --what judge "
                                 "--seed 1 --out DIR)")
            pipeline = Path(args.pipeline) if args.pipeline else out / "pipeline"
            report["preferences"] = finetune_clip_on_preferences(
                out, args.seed, Path(args.annotator), pipeline, Path(args.clip) if args.clip else out / "clip",
                steps=args.preference_steps)
        elif stage == "eval":
            from .pipeline import evaluate_pipeline
            report["eval"] = evaluate_pipeline(out, args.seed)
        # merge with what other stages (possibly running side by side) wrote meanwhile
        latest = json.loads(report_path.read_text()) if report_path.exists() else {}
        latest.update({k: v for k, v in report.items() if k == stage or k == "threads"})
        report_path.write_text(json.dumps(latest, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
