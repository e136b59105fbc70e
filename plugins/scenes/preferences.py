"""A preference-tuned reward CLIP: the Pick-a-Pic recipe in miniature.

PickScore, ImageReward and HPS are CLIPs fine-tuned on *people's choices between generated images of
one prompt*. The scenes world's reward CLIP was trained on renders, counterfactual scenes and scenes
redrawn by the generator -- pairs whose better side is known by construction -- and on the generator's
own samples it ranks the right image above the wrong one of a prompt only 63 % of the time.

:func:`finetune_clip_on_preferences` does what the real preference models do: it samples the base
generator on the *train* prompts (several images a prompt, at the few-step counts a student samples
with), has an **annotator** say which image of a prompt is better, and fine-tunes the CLIP on those
pairs with the Bradley-Terry loss of PickScore (``softmax`` over the two images' scores for the
caption), keeping its sharp-over-degraded and right-over-counterfactual preferences on renders with
pairs of those in every batch.

The annotator stands in for the human raters: a scenes judge trained with *another seed and data
stream* than the evaluation judge (``pretrain --what judge --seed 1 --out DIR``). It reads each image's
(colour, shape) count table; the image with fewer attribute mistakes (objects missing, extra,
malformed, the relation on the wrong side) is preferred; ties give no pair. The evaluation judge is
refused. An annotator built like the judge agrees with it more than people agree with GenEval's
detector, so a student trained on this reward is graded by a close cousin of its raters: say so
wherever a result with it is reported (benchmarks/README.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import world
from .judge import grade_reading, read
from .metrics import load_frozen_judge, refuse_evaluation_judge
from .stages import STREAM, cosine_lr, log


def mistakes(judge, images: Tensor, prompts: list[str]) -> np.ndarray:
    """Attribute mistakes per image as the judge reads it: ``sum |count - wanted|`` over (colour,
    judge shape) cells (a malformed ``blob`` is never wanted), plus 1 when a relation is wrong."""
    counts, centres = read(judge, images)
    grades = grade_reading(prompts, counts, centres)   # the judge's own relation check
    return np.array([np.abs(counts[i] - world.parse(p).table()).sum() + (grades[i]["relation"] is False)
                     for i, p in enumerate(prompts)], dtype=float)


def preference_pairs(errors: np.ndarray, per_prompt: int) -> list[tuple[int, int]]:
    """(better, worse) index pairs within each prompt's ``per_prompt`` consecutive images."""
    pairs = []
    for start in range(0, len(errors), per_prompt):
        idx = range(start, start + per_prompt)
        pairs += [(i, j) for i in idx for j in idx if errors[i] < errors[j]]
    return pairs


def sample_generator(pipeline: Path, prompts: list[str], steps: tuple[int, ...], per_prompt: int, seed: int,
                     guidance: float = 3.0, chunk: int = 256) -> tuple[Tensor, list[str]]:
    """The base generator's images of ``prompts`` through the stock ``sd15`` backbone and rats'
    sampler (the one training uses): ``per_prompt`` images a prompt, split over ``steps``, each from
    its own noise; returned grouped by prompt (``per_prompt`` consecutive images each)."""
    from rats_core.evaluation.evaluate import generate
    from rats_plugins.backbones.plugin import sd15

    backbone = sd15(str(pipeline), device="cpu")
    g = torch.Generator().manual_seed(seed)
    rounds = []                                                 # round r: every prompt once, at steps[r % len]
    for r in range(per_prompt):
        noise = torch.randn(backbone.latent_shape(len(prompts)), generator=g)
        rounds.append(generate(backbone, backbone.denoiser, prompts, steps[r % len(steps)], noise,
                               batch_size=chunk, guidance_scale=guidance))
    grouped = torch.stack(rounds, 1).flatten(0, 1)              # [P * per_prompt, 3, H, W], prompt-major
    return grouped, [p for p in prompts for _ in range(per_prompt)]


def finetune_clip_on_preferences(out: Path, seed: int, annotator: Path, pipeline: Path, clip: Path,
                                 steps: int = 300, batch: int = 48, per_prompt: int = 4,
                                 sampler_steps: tuple[int, ...] = (2, 4), lr: float = 1e-4,
                                 prompts: list[str] | None = None) -> dict:
    """Fine-tune the reward CLIP in ``clip`` on the base generator's images of the train prompts,
    ranked by ``annotator`` (module docstring); writes ``out/clip``. ``prompts``: the train prompts
    sampled (default: all of them; never held-out ones)."""
    from transformers import CLIPModel, CLIPTokenizer

    from .pipeline import clip_image_embeddings, clip_text_embeddings, degrade

    annotator = Path(annotator)
    refuse_evaluation_judge(annotator, "the preference annotator")
    judge = load_frozen_judge(annotator, "the preference annotator")
    t0 = time.time()
    prompts = list(prompts or world.split_prompts("train"))
    unseen = set(prompts) - set(world.split_prompts("train"))
    if unseen:
        raise ValueError(f"preferences: only train prompts may be sampled, not {sorted(unseen)[:3]}")
    images, caps = sample_generator(pipeline, prompts, sampler_steps, per_prompt, seed * 100 + STREAM["clip"] + 7)
    errors = mistakes(judge, images, caps)
    pairs = preference_pairs(errors, per_prompt)
    log(f"preferences: {len(images)} generated images, {len(pairs)} pairs, "
        f"{float((errors == 0).mean()):.3f} read as all right ({time.time() - t0:.0f}s)")
    if not pairs:
        raise RuntimeError("preferences: the annotator found no image of a prompt better than another")
    model = CLIPModel.from_pretrained(str(clip))
    tok = CLIPTokenizer.from_pretrained(str(clip))

    def score(pixels: Tensor, captions: list[str]) -> Tensor:  # PickScore's: logit_scale.exp() * cos
        img, txt = clip_image_embeddings(model, pixels), clip_text_embeddings(model, tok, captions)
        return model.logit_scale.exp().clamp(max=100) * (img * txt).sum(-1)

    def bradley_terry(better: Tensor, worse: Tensor, captions: list[str]) -> Tensor:
        s = score(torch.cat([better, worse]), captions + captions)
        n = len(captions)
        return F.cross_entropy(torch.stack([s[:n], s[n:]], 1), torch.zeros(n, dtype=torch.long))

    rng = np.random.default_rng([seed, STREAM["clip"], 7])
    gen = torch.Generator().manual_seed(seed * 100 + STREAM["clip"] + 7)
    pairs_arr = np.array(pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    for step in range(1, steps + 1):
        cosine_lr(opt, lr, step, steps, warmup=20)
        pick = pairs_arr[rng.integers(0, len(pairs_arr), batch)]
        loss = bradley_terry(images[pick[:, 0]], images[pick[:, 1]], [caps[i] for i in pick[:, 0]])
        # keep what the CLIP knew on renders: sharp over degraded, right over one attribute changed
        keep = [prompts[int(i)] for i in rng.integers(0, len(prompts), batch // 3)]
        cf = [world.render_counterfactual(c, rng) for c in keep]
        right = torch.from_numpy(np.stack([c[0] for c in cf]))
        loss = loss + 0.5 * bradley_terry(right, degrade(right, gen), keep) \
            + 0.5 * bradley_terry(right, torch.from_numpy(np.stack([c[1] for c in cf])), keep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            log(f"preferences step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    with torch.no_grad():  # how often it now agrees with its annotator on the pairs (training data)
        agree = []
        for s in range(0, len(pairs_arr), 256):
            p = pairs_arr[s : s + 256]
            c = [caps[i] for i in p[:, 0]]
            agree.append((score(images[p[:, 0]], c) > score(images[p[:, 1]], c)).float())
    folder = out / "clip"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    if (Path(clip) / "preprocessor_config.json").is_file():
        (folder / "preprocessor_config.json").write_text((Path(clip) / "preprocessor_config.json").read_text())
    info = {"seconds": round(time.time() - t0, 1), "steps": steps, "batch": batch, "lr": lr,
            "from_clip": str(clip), "annotator": str(annotator), "pipeline": str(pipeline),
            "generated_images": len(images), "sampler_steps": list(sampler_steps), "images_per_prompt": per_prompt,
            "pairs": len(pairs), "annotator_all_right_rate": round(float((errors == 0).mean()), 3),
            "agreement_with_annotator_on_its_pairs": round(float(torch.cat(agree).mean()), 3)}
    log(f"preferences: {info}")
    return info
