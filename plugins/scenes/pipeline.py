"""The scenes world's base model and reward, as standard diffusers / transformers folders.

* :func:`make_tokenizer` -- a word-level ``CLIPTokenizer`` (BPE vocab + merges written from the world's
  words, so every word is one token); the same class SD and CLIP use.
* :func:`train_vae` -- an ``AutoencoderKL`` (32x32x3 <-> 16x16x4).
* :func:`train_diffusion` -- a ``UNet2DConditionModel`` (v-prediction, SD's scaled-linear betas) and a
  2-layer ``CLIPTextModel`` trained jointly (10 % empty prompts, for classifier-free guidance), saved
  with the VAE, tokenizer and an ``EulerDiscreteScheduler`` as a ``StableDiffusionPipeline`` folder.
* :func:`train_clip` -- a tiny ``CLIPModel`` trained contrastively on (render, caption) pairs, with
  hard-negative captions (one attribute changed), saved with its tokenizer and a
  ``preprocessor_config.json`` so the ``pickscore`` reward loads the folder as is.

All of it trains on the *train* prompts only (see :func:`rats_plugins.scenes.world.split_prompts`).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import world
from .stages import STREAM, cosine_lr, log

MAX_TOKENS = 16
#: CLIP's pixel normalisation (what the reward CLIP's preprocessor_config.json says and pickscore applies)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
WORDS = (["a", "an", "one", "two", "three", "left", "of", "above"] + list(world.COLOURS)
         + list(world.SHAPES) + [s + "s" for s in world.SHAPES])


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_tokenizer(folder: Path):
    """Write and load a CLIPTokenizer whose BPE merges spell every word of the world as one token."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for w in WORDS:
        # segment the word with the merges so far (BPE: lowest rank first), then join what is left
        # from left to right with new, lower-priority merges -- earlier words keep their single token
        ranks = {m: i for i, m in enumerate(merges)}
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            r, i = min(pairs)
            if r == math.inf:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts[0:2] = [parts[0] + parts[1]]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # last, as in CLIP (the EOT token has the largest id)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return tok


def text_config(tok, seed_hidden: int = 64) -> dict:
    return dict(vocab_size=len(tok), hidden_size=seed_hidden, intermediate_size=4 * seed_hidden,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                projection_dim=64)


def train_prompt_pool() -> list[str]:
    return world.split_prompts("train")


def render_pool(prompts: list[str], n: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[str]]:
    chosen = [prompts[int(i)] for i in rng.integers(0, len(prompts), n)]
    imgs = np.stack([world.render(p, rng) for p in chosen])
    return torch.from_numpy(imgs), chosen


# ----------------------------------------------------------------------------- VAE


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=32, mid_block_add_attention=False,
    )


def train_vae(out: Path, seed: int, steps: int, batch: int = 32) -> dict:
    torch.manual_seed(seed * 100 + STREAM["generator"])
    rng = np.random.default_rng([seed, STREAM["generator"], 0])
    vae = make_vae()
    prompts = train_prompt_pool()
    pool, _ = render_pool(prompts, 6000, rng)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    t0 = time.time()
    for step in range(1, steps + 1):
        cosine_lr(opt, 2e-3, step, steps, warmup=50)
        x = pool[torch.from_numpy(rng.integers(0, len(pool), batch))] * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {loss.item():.5f} kl {kl.item():.3f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(pool[i : i + 256] * 2 - 1).latent_dist.mean for i in range(0, 2048, 256)])
        scale = float(1.0 / z.std())
        vae.register_to_config(scaling_factor=scale)
        test = torch.from_numpy(world.render_batch(world.split_prompts("heldout"), seed * 100 + STREAM["eval"]))
        rec = (vae.decode(vae.encode(test * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
        mse = float(F.mse_loss(rec, test))
    vae.save_pretrained(str(out / "pipeline" / "vae"))
    info = {"seconds": round(time.time() - t0, 1), "steps": steps, "batch": batch, "scaling_factor": scale,
            "heldout_mse": mse}
    log(f"vae: {info}")
    return info


# ----------------------------------------------------------------------------- UNet + text encoder


def make_unet(width: int = 32):
    """The base UNet: ``width`` channels at 16x16, doubling twice (32 -> 4.1 M parameters; the first
    shipped base used 16 -> 1.06 M and reached 13 % fully right scenes at N = 50, the 4x wider one is the
    issue's prototype size)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(width, 2 * width, 4 * width), layers_per_block=1, cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=8,
    )


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1)


def train_diffusion(out: Path, seed: int, minutes: float, batch: int = 32, resume: bool = False) -> dict:
    """``resume``: continue from the UNet and text encoder already in ``out/pipeline`` (fresh data draws,
    a short warm-up), e.g. to give the base model more training time than one session had."""
    from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed * 100 + STREAM["generator"])
    folder = out / "pipeline"
    previous = json.loads((out / "pretrain_report.json").read_text()).get("diffusion", {}) \
        if resume and (out / "pretrain_report.json").is_file() else {}
    rounds = int(previous.get("rounds", 1)) + 1 if resume else 1
    rng = np.random.default_rng([seed, STREAM["generator"], rounds])
    tok = make_tokenizer(folder / "tokenizer")
    cfg = text_config(tok)
    cfg.pop("projection_dim")
    if resume:
        from diffusers import UNet2DConditionModel

        text = CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    else:
        text = CLIPTextModel(CLIPTextConfig(**cfg))
        unet = make_unet()
    vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval().requires_grad_(False)
    sched = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k != "timestep_spacing"})
    t0 = time.time()
    prompts = train_prompt_pool()
    images, captions = render_pool(prompts, 8000, rng)
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i : i + 500] * 2 - 1).latent_dist.mean
                         for i in range(0, len(images), 500)]) * vae.config.scaling_factor
    log(f"diffusion: {len(lat)} latents in {time.time() - t0:.0f}s, std {lat.std():.3f}")
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)]
    budget = minutes * 60
    t_train = time.time()
    step, total = 0, 10_000
    losses = []
    while True:
        step += 1
        if step == 30:  # size the cosine schedule to the time budget
            per = (time.time() - t_train) / 29
            total = max(200, int((budget - (time.time() - t0)) / per) + 29)
            log(f"diffusion: {per:.2f}s/step -> {total} steps in {minutes} min")
        if step > total:
            break
        cosine_lr(opt, 1e-3, step, total, warmup=50)
        idx = torch.from_numpy(rng.integers(0, len(lat), batch))
        x0 = lat[idx]
        caps = ["" if rng.random() < 0.1 else captions[int(i)] for i in idx]
        ids = tok(caps, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        hidden = text(ids)[0]
        t = torch.from_numpy(rng.integers(0, 1000, batch)).long()
        noise = torch.randn_like(x0)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, m in zip(ema, (unet, text)):
                for pe, pm in zip(e.parameters(), m.parameters()):
                    pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0:
            log(f"diffusion step {step}/{total} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)")
    ema[0].save_pretrained(str(folder / "unet"))
    ema[1].save_pretrained(str(folder / "text_encoder"))
    EulerDiscreteScheduler(**scheduler_config()).save_pretrained(str(folder / "scheduler"))
    write_model_index(folder)
    info = {"seconds": round(time.time() - t0, 1) + float(previous.get("seconds", 0)),
            "steps": step - 1 + int(previous.get("steps", 0)), "rounds": rounds, "batch": batch,
            "final_loss": float(np.mean(losses[-200:])), "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text.parameters())}
    log(f"diffusion: {info}")
    return info


def write_model_index(folder: Path) -> None:
    import diffusers
    import transformers  # noqa: F401

    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


# ----------------------------------------------------------------------------- the reward CLIP


def perturb(prompt: str, rng: random.Random) -> str:
    """A hard negative: the same prompt with one attribute changed (or the relation's objects swapped)."""
    spec = world.parse(prompt)
    objs = list(spec.objects)
    kind = rng.choice(["colour", "shape", "count" if spec.relation is None else "swap"])
    i = rng.randrange(len(objs))
    if kind == "colour":
        objs[i] = world.Obj(rng.choice([c for c in world.COLOURS if c != objs[i].colour]), objs[i].shape)
    elif kind == "shape":
        objs[i] = world.Obj(objs[i].colour, rng.choice([s for s in world.SHAPES if s != objs[i].shape]))
    elif kind == "count":
        return world.prompt_of(world.Spec(spec.objects, rng.choice([n for n in (1, 2, 3) if n != spec.count])))
    else:
        objs = objs[::-1]
    if spec.relation is not None and objs[0] == objs[1]:
        objs = list(spec.objects)[::-1]
    return world.prompt_of(world.Spec(tuple(objs), spec.count, spec.relation))


def degrade(images: Tensor, gen: torch.Generator) -> Tensor:
    """A worse-looking copy of each image, as a preference model learns "worse" from people: blurred,
    pixelated (2x down, bilinear up), noisy or washed out -- generic quality faults, none of them the
    judge's near-miss shapes (:func:`rats_plugins.scenes.world.malform`)."""
    b = images.shape[0]
    kind = torch.randint(0, 4, (b,), generator=gen)
    out = images.clone()
    for i in range(b):
        x = images[i : i + 1]
        k = int(kind[i])
        if k == 0:
            sigma = float(0.8 + 0.8 * torch.rand((), generator=gen))
            r = 3
            w = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
            w = (w / w.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
            x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), w, groups=3)
            x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), w.transpose(-1, -2), groups=3)
        elif k == 1:
            x = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
        elif k == 2:
            x = x + (0.06 + 0.06 * torch.rand((), generator=gen)) * torch.randn(x.shape, generator=gen)
        else:
            x = torch.lerp(x, x.mean(dim=(2, 3), keepdim=True), float(0.35 + 0.25 * torch.rand((), generator=gen)))
        out[i] = x[0].clamp(0, 1)
    return out


def img2img(pipeline: Path):
    """diffusers' img2img pipeline on the base pipeline folder (for :func:`soften`)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(pipeline), safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def soften(images: Tensor, pipe, seeds: list[int], strength: float, steps: int = 10) -> Tensor:
    """The same scenes as the base generator draws them (SDEdit with diffusers' img2img ``pipe``,
    :func:`img2img`): each image noised ``strength`` of the way and denoised back in
    ``steps * strength`` unconditional Euler steps -- the generator's soft edges and merged colours,
    not a hand-made degradation. ``seeds[i]`` seeds image i's noise, so two images with one seed get
    the same noise. At low strength the scene keeps what the source showed; from about 0.5 the
    generator redraws shapes (a square comes back round), so :func:`soft_pairs` stays below that."""
    with torch.no_grad():
        out = pipe([""] * len(images), image=images, strength=strength, num_inference_steps=steps,
                   guidance_scale=1.0, generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
                   output_type="pt").images
    return out.clamp(0, 1).float()


def soft_pairs(n: int, pipeline: Path, rng: np.random.Generator, chunk: int = 128,
               strengths=(0.2, 0.3, 0.4)) -> tuple[Tensor, Tensor, list[str]]:
    """``n`` (right, counterfactual) scene pairs of the train prompts, both softened alike by the base
    generator (:func:`soften`: same noise, same strength), with their captions."""
    pipe = img2img(pipeline)
    prompts = train_prompt_pool()
    right, wrong, caps = [], [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cs = [prompts[int(i)] for i in rng.integers(0, len(prompts), m)]
        pairs = [world.render_counterfactual(c, rng) for c in cs]
        seeds = [int(x) for x in rng.integers(0, 2**31, m)]
        strength = float(strengths[(start // chunk) % len(strengths)])
        both = torch.from_numpy(np.stack([p[0] for p in pairs] + [p[1] for p in pairs]))
        soft = soften(both, pipe, seeds + seeds, strength)
        right.append(soft[:m])
        wrong.append(soft[m:])
        caps += cs
    return torch.cat(right), torch.cat(wrong), caps


def clip_image_embeddings(model, pixels: Tensor) -> Tensor:
    """Unit-length CLIP image embeddings of images in [0, 1] (CLIP's pixel normalisation)."""
    pooled = model.vision_model(pixel_values=(pixels - CLIP_MEAN) / CLIP_STD).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


def clip_text_embeddings(model, tok, captions: list[str]) -> Tensor:
    """Unit-length CLIP caption embeddings."""
    ids = tok(captions, padding=True, return_tensors="pt")
    pooled = model.text_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


def train_clip(out: Path, seed: int, steps: int, batch: int = 96, negatives: int = 3,
               degraded: bool = True, counterfactuals: bool = True, generated: int = 0,
               pipeline: Path | None = None) -> dict:
    """Contrastive (image <-> caption, in-batch) with hard-negative captions (:func:`perturb`).

    ``degraded``: each caption must also prefer its image over a degraded copy of it
    (:func:`degrade`), so the reward says "sharper is better", not only "the right objects".
    ``counterfactuals``: each caption must also prefer its image over the same scene made wrong in
    one attribute (:func:`rats_plugins.scenes.world.counterfactual`: a shape, a colour, the count or
    the relation), clean and under the same degradation. On for the shipped CLIP: it agrees better
    with the judge on the base model's own images than the first release's CLIP (``counterfactuals=False``)
    and gave the students a much lower FID, but did not close the judge gap (benchmarks/README.md,
    "The scenes world").
    ``generated``: that many (right, counterfactual) pairs drawn again by the base generator in
    ``pipeline`` (:func:`soft_pairs`), of which each step's captions must also prefer the right one, so
    the reward learns the difference on images like the ones it will score, not only on crisp renders.
    4096 for the shipped CLIP (``pretrain``'s default; 0 here): its students' held-out FID came level
    with the teacher's; their judge accuracy did not."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed * 100 + STREAM["clip"])
    rng = np.random.default_rng([seed, STREAM["clip"]])
    prng = random.Random(seed * 100 + STREAM["clip"])
    folder = out / "clip"
    tok = make_tokenizer(folder)
    tcfg = text_config(tok)
    tcfg.pop("projection_dim")
    vcfg = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                image_size=32, patch_size=4, projection_dim=64)
    model = CLIPModel(CLIPConfig(text_config=tcfg, vision_config=vcfg, projection_dim=64))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))

    def embed_images(pixels: Tensor) -> Tensor:
        return clip_image_embeddings(model, pixels)

    def embed_text(captions: list[str]) -> Tensor:
        return clip_text_embeddings(model, tok, captions)

    prompts = train_prompt_pool()
    train_set = set(prompts)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed * 100 + STREAM["clip"])
    t0 = time.time()
    if generated:
        grng = np.random.default_rng([seed, STREAM["clip"], 1])
        soft_right, soft_wrong, soft_caps = soft_pairs(generated, pipeline or out / "pipeline", grng)
        log(f"clip: {generated} generated pairs ({time.time() - t0:.0f}s)")
    for step in range(1, steps + 1):
        cosine_lr(opt, 1e-3, step, steps)
        if counterfactuals:
            caps = [prompts[int(i)] for i in rng.integers(0, len(prompts), batch)]
            pairs = [world.render_counterfactual(c, rng) for c in caps]
            images = torch.from_numpy(np.stack([p[0] for p in pairs]))
            wrong = torch.from_numpy(np.stack([p[1] for p in pairs]))
        else:
            images, caps = render_pool(prompts, batch, rng)
        negs = []
        for c in caps:  # hard negatives from the train prompts only (held-out prompts stay unseen)
            cand = [perturb(c, prng) for _ in range(negatives * 3)]
            cand = [n for n in cand if n in train_set and n != c][:negatives]
            negs += cand + [caps[(len(negs) + 1) % batch]] * (negatives - len(cand))
        text = embed_text(caps + negs)
        parts = [images]
        if degraded:
            same = torch.Generator().set_state(gen.get_state())  # the counterfactual degraded alike
            parts.append(degrade(images, gen))
        if counterfactuals:
            parts.append(wrong)
            if degraded:
                parts.append(degrade(wrong, same))
        pixels = torch.cat(parts)
        img = embed_images(pixels).split(batch)
        scale = model.logit_scale.exp().clamp(max=100)
        pos, neg = text[:batch], text[batch:].view(batch, negatives, -1)
        logits_i = scale * img[0] @ pos.T  # [B, B]
        hard = scale * torch.einsum("bd,bnd->bn", img[0], neg)
        target = torch.arange(batch)
        loss = F.cross_entropy(torch.cat([logits_i, hard], 1), target)
        # each caption: its own image above every other image, its degraded copy and its counterfactual
        loss = loss + F.cross_entropy(torch.cat([logits_i.T] + [scale * (pos * x).sum(-1, keepdim=True)
                                                                for x in img[1:]], 1), target)
        if counterfactuals and degraded:  # and, both degraded alike, the right scene above the wrong one
            pair = torch.stack([(pos * img[1]).sum(-1), (pos * img[3]).sum(-1)], 1)
            loss = loss + F.cross_entropy(scale * pair, target * 0)
        if generated:  # and, both drawn by the generator, the right scene above the wrong one
            pick = grng.integers(0, generated, batch // 4)
            t = embed_text([soft_caps[int(i)] for i in pick])
            f = embed_images(torch.cat([soft_right[pick], soft_wrong[pick]])).split(len(pick))
            pair = torch.stack([(t * f[0]).sum(-1), (t * f[1]).sum(-1)], 1)
            loss = loss + F.cross_entropy(scale * pair, torch.zeros(len(pick), dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            log(f"clip step {step}/{steps} loss {loss.item():.4f} scale {scale.item():.1f} ({time.time() - t0:.0f}s)")
    model.eval()
    # check: on held-out prompts' real renders, is the true caption scored above its hard negatives?
    held = world.split_prompts("heldout")
    imgs = torch.from_numpy(world.render_batch(held, seed * 100 + STREAM["eval"]))
    with torch.no_grad():
        img = embed_images(imgs)
        wins = []
        for j, p in enumerate(held):
            s = embed_text([p] + [perturb(p, prng) for _ in range(4)]) @ img[j]
            wins.append(float((s[0] > s[1:]).float().mean()))
        # and does its caption prefer the clean image over a degraded copy?
        worse = embed_images(degrade(imgs, torch.Generator().manual_seed(7)))
        t = embed_text(held)
        clean_wins = float(((t * img).sum(-1) > (t * worse).sum(-1)).float().mean())
        # and the right scene over the same scene made wrong in one attribute, per kind of change?
        crng = np.random.default_rng([seed, STREAM["eval"], 1])
        cf = [world.render_counterfactual(p, crng) for p in held for _ in range(4)]
        kinds = np.array([c[2] for c in cf])
        pix = torch.from_numpy(np.stack([c[0] for c in cf] + [c[1] for c in cf]))
        f = embed_images(pix)
        tt = t.repeat_interleave(4, 0)
        right = ((tt * f[: len(cf)]).sum(-1) > (tt * f[len(cf):]).sum(-1)).numpy()
        cf_wins = {str(k): round(float(right[kinds == k].mean()), 3) for k in sorted(set(kinds))}
    model.save_pretrained(str(folder))
    info = {"seconds": round(time.time() - t0, 1), "steps": steps, "batch": batch, "degraded_negatives": degraded,
            "heldout_true_caption_beats_hard_negative": float(np.mean(wins)),
            "heldout_clean_beats_degraded": clean_wins, "counterfactual_images": counterfactuals,
            "heldout_right_scene_beats_counterfactual": cf_wins, "generated_pairs": generated}
    log(f"clip: {info}")
    return info


# ----------------------------------------------------------------------------- check the base model


def evaluate_pipeline(out: Path, seed: int, steps=(1, 2, 4, 50), guidance: float = 3.0, per_prompt: int = 2) -> dict:
    from rats_core.evaluation.evaluate import fixed_noise, generate
    from rats_plugins.backbones.plugin import sd15

    from .metrics import SceneFID, SceneJudge

    backbone = sd15(str(out / "pipeline"), device="cpu")
    prompts = [p for p in world.split_prompts("heldout") for _ in range(per_prompt)]
    noise = fixed_noise(backbone, len(prompts), 1234)
    judge, fid = SceneJudge(), SceneFID()  # the validated rule-based reader and its scene statistics
    res = {}
    t0 = time.time()
    for k in steps:
        imgs = generate(backbone, backbone.denoiser, prompts, k, noise, batch_size=128, guidance_scale=guidance)
        r = judge(imgs, prompts)
        r.update(fid(imgs, prompts))
        res[str(k)] = {m: round(v, 4) for m, v in r.items()}
        log(f"base at {k} steps (cfg {guidance}): {res[str(k)]} ({time.time() - t0:.0f}s)")
    return {"guidance_scale": guidance, "images": len(prompts), "results": res}
