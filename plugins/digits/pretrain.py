"""Pretrain the digits world on CPU: the base diffusion model, the reward classifier and the judge.

    python -m rats_plugins.digits.pretrain [--out DIR] [--seed S] [--what all|diffusion|reward|judge|eval]

Writes into ``--out`` (default: the shipped ``plugins/digits/weights/``)::

    unet/ scheduler/ text_encoder/ rats_digits.json     the base diffusion model (see backbone.py)
    reward/   config.json + model.safetensors             the digit-confidence classifier
    judge/    config.json + model.safetensors             the independent judge (metrics only)
    pretrain_report.json                                   what was trained, how long, held-out numbers

Deterministic for a given seed and thread count (``--threads``; the shipped weights were made with
``--threads 1``). Everything trains on the train split of :mod:`rats_plugins.digits.data` only.
Time on 2 CPU cores: about 10 minutes with both cores to itself (``--threads 2``, the default);
16 minutes measured with ``--threads 1`` on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import rats_core  # noqa: F401  (installs the CPU-torchvision guard before diffusers is imported)

from . import data
from .backbone import INFO_FILE, WEIGHTS_DIR, make_scheduler, make_unet
from .classifiers import DEGRADED, JudgeNet, RewardNet, augment, degrade, save_classifier
from .text_encoder import DigitsTextEncoder, build_vocab

#: seed offsets so the three models never share a random stream
SEED_OFFSET = {"diffusion": 0, "reward": 1000, "judge": 2000}


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------- classifiers


def train_classifier(arch: str, out: Path, seed: int, resolution: int = 16, steps: int = 1500,
                     batch_size: int = 64) -> dict:
    """Train the reward (``arch="reward"``) or the judge (``arch="judge"``) classifier."""
    torch.manual_seed(seed + SEED_OFFSET[arch])
    gen = torch.Generator().manual_seed(seed + SEED_OFFSET[arch])
    x, y = data.load_split("train", resolution)
    xh, yh = data.load_split("heldout", resolution)
    if arch == "reward":
        # label smoothing keeps log-probabilities bounded, so the reward's gradient stays useful;
        # 35 % of each batch is spoiled by `degrade` and labelled DEGRADED
        model, lr, smoothing, spoil = RewardNet(resolution=resolution), 2e-3, 0.1, 0.35
        aug = dict(rotate=10.0, scale=0.1, shift=1.0, noise=0.05)
    else:
        model, lr, smoothing, spoil = JudgeNet(resolution=resolution), 1e-3, 0.0, 0.0
        aug = dict(rotate=15.0, scale=0.15, shift=1.5, noise=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb, yb = augment(x[idx], gen, **aug), y[idx].clone()
        if spoil:
            bad = torch.rand(batch_size, generator=gen) < spoil
            xb = torch.where(bad[:, None, None, None], degrade(xb, gen), xb)
            yb[bad] = DEGRADED
        loss = F.cross_entropy(model(xb), yb, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            log(f"[{arch}] step {step}/{steps}  loss {loss.item():.3f}  ({time.time() - t0:.0f}s)")
    model.eval()
    with torch.no_grad():
        acc = (model(xh).argmax(1) == yh).float().mean().item()
    save_classifier(model, out / arch, extra={"seed": seed + SEED_OFFSET[arch], "heldout_accuracy": round(acc, 4)})
    log(f"[{arch}] held-out accuracy {acc:.3f}  -> {out / arch}")
    return {"heldout_accuracy": acc, "seconds": time.time() - t0, "steps": steps}


# ---------------------------------------------------------------------------- diffusion


def train_diffusion(out: Path, seed: int, resolution: int = 16, steps: int = 2000, batch_size: int = 64,
                    lr: float = 1e-3, ema_decay: float = 0.999, uncond_prob: float = 0.1,
                    min_snr_gamma: float = 5.0) -> dict:
    """Train the UNet and the text encoder jointly (eps-prediction, min-SNR weighting, EMA)."""
    torch.manual_seed(seed + SEED_OFFSET["diffusion"])
    gen = torch.Generator().manual_seed(seed + SEED_OFFSET["diffusion"])
    x, y = data.load_split("train", resolution)
    scheduler = make_scheduler()
    unet = make_unet(resolution)
    text = DigitsTextEncoder(build_vocab(data.train_prompts()))
    ema_unet = make_unet(resolution)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text = DigitsTextEncoder(text.vocab)
    ema_text.load_state_dict(text.state_dict())
    for m in (ema_unet, ema_text):
        m.requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    alphas = scheduler.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=min_snr_gamma) / snr  # min-SNR-γ for eps-prediction
    templates = data.TRAIN_TEMPLATES
    t0 = time.time()
    unet.train()
    text.train()
    running = 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        x0 = x[idx]
        tmpl = torch.randint(0, len(templates), (batch_size,), generator=gen)
        drop = torch.rand(batch_size, generator=gen) < uncond_prob
        prompts = ["" if d else data.prompt_for(int(c), templates[int(k)]) for c, k, d in zip(y[idx], tmpl, drop)]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=text(prompts)).sample
        loss = (weights[t] * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_params, params):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps:
            el = time.time() - t0
            log(f"[diffusion] step {step}/{steps}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"({el:.0f}s, ~{el / step * (steps - step):.0f}s left)")
    seconds = time.time() - t0
    ema_unet.save_pretrained(out / "unet", safe_serialization=True)
    _store_half(out / "unet" / "diffusion_pytorch_model.safetensors")
    scheduler.save_pretrained(out / "scheduler")
    ema_text.save(out / "text_encoder")
    info = {"format": "rats-digits", "resolution": resolution, "default_steps": 50, "guidance_scale": 1.0,
            "pretraining": {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                            "ema_decay": ema_decay, "uncond_prob": uncond_prob, "min_snr_gamma": min_snr_gamma}}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log(f"[diffusion] done in {seconds:.0f}s -> {out}")
    return {"seconds": seconds, "steps": steps, "batch_size": batch_size}


def _store_half(path: Path) -> None:
    """Rewrite a safetensors file in float16: half the shipped size; DigitsBackbone loads it as float32."""
    from safetensors.torch import load_file, save_file

    state = {k: v.half().contiguous() for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_base(out: Path, steps_list=(2, 50), images_per_prompt: int = 4, seed: int = 1234,
                  guidance_scale: float = 1.0) -> dict:
    """Judge accuracy, digit-confidence reward and FID of the base on held-out prompts."""
    from rats_core.method.rollout import sample

    from .backbone import DigitsBackbone
    from .metrics import DigitFID, DigitJudge
    from .rewards import DigitConfidence

    backbone = DigitsBackbone(out)
    reward = DigitConfidence(out / "reward")
    judge, fid = DigitJudge(out / "judge"), DigitFID(out / "judge")
    prompts = data.heldout_prompts() * images_per_prompt
    noise = torch.randn(backbone.latent_shape(len(prompts)), generator=torch.Generator().manual_seed(seed))
    res = {}
    for n in steps_list:
        images = sample(backbone, backbone.denoiser, prompts, n, noise=noise, guidance_scale=guidance_scale)
        r = {"reward": reward(images, prompts).mean().item(), **judge(images, prompts), **fid(images, prompts)}
        res[f"{n}_steps"] = r
        log(f"[eval] base {n:>2} steps: reward {r['reward']:.3f}  judge_accuracy {r['judge_accuracy']:.3f}  "
            f"fid {r['fid']:.2f}")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rats_plugins.digits.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the shipped weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--what", choices=("all", "diffusion", "reward", "judge", "eval"), default="all",
                   help="what to train (eval: only evaluate the base in --out on held-out prompts)")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--diffusion-steps", type=int, default=2000)
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch CPU threads (default: 2 where there are 2 cores). Results depend slightly on "
                        "the count; the shipped weights were made with --threads 1, which is also the "
                        "faster choice on a machine other processes keep busy")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation of the base")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "pretrain_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    t0 = time.time()
    if args.what in ("all", "reward"):
        report["reward"] = train_classifier("reward", out, args.seed, args.resolution, args.classifier_steps)
    if args.what in ("all", "judge"):
        report["judge"] = train_classifier("judge", out, args.seed, args.resolution, args.classifier_steps)
    if args.what in ("all", "diffusion"):
        report["diffusion"] = train_diffusion(out, args.seed, args.resolution, args.diffusion_steps)
    have_all = all((out / part / "config.json").exists() for part in ("unet", "reward", "judge"))
    if not args.no_eval and have_all:
        report["base_eval"] = evaluate_base(out)
    report["threads"] = args.threads
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"pretraining done in {time.time() - t0:.0f}s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
