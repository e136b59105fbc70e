"""Framework overhead: a rats training step vs a bare, hand-written PyTorch loop doing the same maths.

    python benchmarks/overhead.py [CONFIG] [--steps 20] [--warmup 3] [key=value ...]

Both loops use the same backbone network, rewards, σ schedules, noise and prompts: the student's K-step
rollout (gradient through the last K_grad steps and at the matched horizons), the teacher's N-step
rollout without gradient, decode, rewards, the sigmoid gate, the shape loss, backward, AdamW with
clipping, and the EMA update. The rats side is ``Trainer.train_step`` (DeepSpeed engine, registry-built
components, metric logging). Blocks of steps alternate between the two so machine noise hits both
alike. Prints JSON with ``"ratio"`` = rats step time / bare step time (median over blocks).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import rats_core  # noqa: F401  (CPU torchvision guard before diffusers)
import torch
import torch.nn.functional as F

from rats_core.config import load_config
from rats_core.sigmas import ddim_step, initial_latents
from rats_core.trainer import Trainer, batch_noise

ROOT = Path(__file__).resolve().parents[1]


def bare_setup(trainer: Trainer):
    """A hand-written copy of the step: plain modules, plain torch.optim, no framework objects."""
    cfg = trainer.cfg
    backbone = trainer.backbone
    student = copy.deepcopy(trainer.student)
    teacher = copy.deepcopy(trainer.teacher.module)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.adam_betas, weight_decay=cfg.train.weight_decay)
    rewards = [(r.reward, r.weight) for r in trainer.rewards.rewards]
    s_sig = trainer.objective.schedules.student
    t_sig = trainer.objective.schedules.teacher
    t_index = trainer.objective.schedules.teacher_index
    horizons = trainer.objective.horizons
    tau = getattr(trainer.components.gate, "tau", 1.0)
    interp = backbone.interpolation
    k_grad = cfg.student.grad_steps
    alpha, beta = cfg.loss.alpha, cfg.loss.beta
    decay = cfg.teacher.ema_decay
    s_trainable = [p for p in student.parameters() if p.requires_grad]
    t_params = dict(teacher.named_parameters())
    t_trainable = [t_params[n] for n, p in student.named_parameters() if p.requires_grad]

    def reward(images, prompts):
        return sum(w * fn(images, prompts) for fn, w in rewards)

    def step(prompts, noise):
        cond = backbone.encode_prompts(prompts)
        with torch.inference_mode():
            x = initial_latents(noise, t_sig[0], interp)
            t_x0 = {}
            for j in range(len(t_sig) - 1):
                x0 = backbone.predict_x0(teacher, x, t_sig[j], cond)
                t_x0[j] = x0
                x = ddim_step(x, x0, t_sig[j], t_sig[j + 1], interp) if t_sig[j + 1] > 0 else x0
            r_t = reward(backbone.decode(x), prompts)
        t_x0 = {k: t_x0[t_index[k]].clone() for k, _ in horizons}
        r_t = r_t.clone()
        x = initial_latents(noise, s_sig[0], interp)
        n = len(s_sig) - 1
        s_x0 = {}
        want = {k for k, _ in horizons}
        for j in range(n):
            chain = j >= n - k_grad
            if not chain:
                x = x.detach()
            with torch.set_grad_enabled(chain or j in want):
                x0 = backbone.predict_x0(student, x, s_sig[j], cond)
            s_x0[j] = x0
            nxt = x0 if chain else x0.detach()
            x = ddim_step(x, nxt, s_sig[j], s_sig[j + 1], interp) if s_sig[j + 1] > 0 else nxt
        r_s = reward(backbone.decode(x), prompts)
        g = torch.sigmoid((r_t - r_s.detach()) / tau)
        total = sum(w for _, w in horizons)
        l_shape = 0
        for k, w in horizons:
            a, b = s_x0[k].flatten(1), t_x0[k].flatten(1)
            d = (1 - F.cosine_similarity(a, b, dim=1)) + (a - b).pow(2).sum(1) / a.shape[1]
            l_shape = l_shape + w * d
        loss = (-beta * r_s + alpha * g * l_shape / total).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        with torch.no_grad():
            for t, s in zip(t_trainable, s_trainable):
                t.lerp_(s, 1 - decay)
        return loss.item()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "experiments" / "digits.yaml"))
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per side")
    ap.add_argument("--block", type=int, default=3, help="steps per alternating block")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}/run", "train.progress=false", "eval.every=0", "eval.at_end=false",
                     "train.checkpoint_every=0", "train.log_every=1", f"train.steps={10**6}"] + args.overrides
        cfg = load_config(args.config, overrides)
        trainer = Trainer(cfg)
        trainer.setup()
        bare = bare_setup(trainer)
        d = trainer.dist
        bs = cfg.train.batch_size

        def bare_step(i):
            prompts = trainer.sampler.batch(i, 0, 1)
            noise = batch_noise(trainer.backbone, cfg.seed, i, bs, 0, bs)
            bare(prompts, noise)

        def rats_step(i):
            values = trainer.train_step()
            trainer.step += 1
            if trainer.metrics is not None:  # what the loop does with them: log every step
                trainer.metrics.write(trainer.step, values)

        for i in range(args.warmup):
            bare_step(i)
            rats_step(i)
        times = {"bare": [], "rats": []}
        i = args.warmup
        while len(times["rats"]) < args.steps:
            for name, fn in (("bare", bare_step), ("rats", rats_step)):
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    fn(i)
                    times[name].append(time.perf_counter() - t0)
                i += 1
        trainer.cleanup()
    bare_med = statistics.median(times["bare"])
    rats_med = statistics.median(times["rats"])
    out = {
        "benchmark": "overhead",
        "config": str(args.config),
        "backbone": cfg.backbone.name,
        "student_steps": cfg.student.steps,
        "teacher_steps": cfg.teacher.steps,
        "batch_size": cfg.train.batch_size,
        "steps_measured": len(times["rats"]),
        "bare_step_s": round(bare_med, 5),
        "rats_step_s": round(rats_med, 5),
        "ratio": round(rats_med / bare_med, 4),
        "target_ratio": 1.10,
        "device": str(d.device),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
