"""Framework overhead: a rats training step vs a bare, hand-written PyTorch loop doing the same maths.

    python benchmarks/overhead.py [CONFIG] [key=value ...] [--steps 24] [--block 3] [--warmup 2] [--profile]

CONFIG defaults to the embedded experiment ``experiments/digits.yaml`` (the toy config when the digits
weights are missing). Both loops use the same backbone network, rewards, σ schedules, noise and
prompts: the teacher's N-step rollout under ``torch.inference_mode``, the student's K-step rollout
(gradient through the last K_grad steps and at the matched horizons), decode, the weighted rewards,
the gate, the shape loss, backward, AdamW with global-norm clipping, and the EMA update. The bare
loop is written the way a careful user would write it by hand: plain modules, ``torch.optim.AdamW``,
``torch.nn.utils.clip_grad_norm_``, a multi-tensor ``torch._foreach_lerp_`` EMA, one ``loss.item()``.
The rats side is ``Trainer.train_step`` (DeepSpeed engine, registry-built components, metric logging
to metrics.jsonl and TensorBoard every step).

Blocks of ``--block`` steps alternate between the two loops so machine noise hits both alike; the JSON
gives ``"ratio"`` = median rats step / median bare step, the per-block-pair ratios' median and
quartiles, and each side's relative spread. ``--profile`` prints the rats side's cProfile top
functions to stderr.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_overrides, config_and_overrides, emit, machine, progress, quartiles,  # noqa: E402
                     summary)

import rats_core  # noqa: E402,F401  (CPU torchvision guard before diffusers)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rats_core.config import load_config  # noqa: E402
from rats_core.method.sigmas import ddim_step, initial_latents  # noqa: E402
from rats_core.training.trainer import Trainer, batch_noise  # noqa: E402


def bare_setup(trainer: Trainer):
    """A hand-written copy of the step: plain modules, plain torch.optim, no framework objects."""
    cfg = trainer.cfg
    if cfg.train.precision != "fp32" or cfg.train.gradient_accumulation != 1:
        raise SystemExit("overhead.py: the bare loop covers fp32 without gradient accumulation only")
    backbone = trainer.backbone
    student = copy.deepcopy(trainer.student)
    teacher = copy.deepcopy(trainer.teacher.module)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.adam_betas, weight_decay=cfg.train.weight_decay)
    rewards = [
        (r.reward, r.weight, r.mean if r.normalize == "fixed" else 0.0, r.std if r.normalize == "fixed" else 1.0)
        for r in trainer.rewards.rewards
    ]
    gate = trainer.components.gate
    sched = trainer.objective.schedules
    s_sig, t_sig, t_index = sched.student, sched.teacher, sched.teacher_index
    s_last = [float(s) > 0 for s in s_sig[1:]]
    t_last = [float(s) > 0 for s in t_sig[1:]]
    horizons = [(k, w) for k, w in trainer.objective.horizons if w > 0]
    total_w = sum(w for _, w in horizons)
    want = {k for k, _ in horizons}
    interp = backbone.interpolation
    k_grad = cfg.student.grad_steps
    alpha, beta = cfg.loss.alpha, cfg.loss.beta
    lam_cos, lam_2 = cfg.loss.cosine_weight, cfg.loss.l2_weight
    g_s, g_t = cfg.student.guidance_scale, cfg.teacher.guidance_scale
    decay = cfg.teacher.ema_decay
    ema = cfg.teacher.kind == "ema"
    t_params = dict(teacher.named_parameters())
    t_trainable = [t_params[n] for n, p in student.named_parameters() if p.requires_grad]

    def reward(images, prompts):
        return sum(w * (fn(images, prompts).float() - m) / s for fn, w, m, s in rewards)

    def step(prompts, noise):
        with torch.no_grad():
            cond = backbone.encode_prompts(prompts)
        with torch.inference_mode():
            x = initial_latents(noise, t_sig[0], interp)
            t_x0 = {}
            for j in range(len(t_sig) - 1):
                x0 = backbone.predict_x0(teacher, x, t_sig[j], cond, guidance_scale=g_t)
                t_x0[j] = x0
                x = ddim_step(x, x0, t_sig[j], t_sig[j + 1], interp) if t_last[j] else x0
            r_t = reward(backbone.decode(x), prompts)
        t_x0 = {k: t_x0[t_index[k]].clone() for k in want}
        r_t = r_t.clone()
        x = initial_latents(noise, s_sig[0], interp)
        n = len(s_sig) - 1
        s_x0 = {}
        for j in range(n):
            chain = j >= n - k_grad
            if not chain:
                x = x.detach()
            with torch.set_grad_enabled(chain or (alpha > 0 and j in want)):
                x0 = backbone.predict_x0(student, x, s_sig[j], cond, guidance_scale=g_s)
            s_x0[j] = x0
            nxt = x0 if chain else x0.detach()
            x = ddim_step(x, nxt, s_sig[j], s_sig[j + 1], interp) if s_last[j] else nxt
        r_s = reward(backbone.decode(x), prompts)
        with torch.no_grad():
            g = gate(r_t, r_s.detach())
        l_shape = 0
        for k, w in horizons:
            a, b = s_x0[k].flatten(1), t_x0[k].flatten(1)
            d = lam_cos * (1 - F.cosine_similarity(a, b, dim=1)) + lam_2 * (a - b).pow(2).sum(1) / a.shape[1]
            l_shape = l_shape + w * d
        loss = (-beta * r_s + alpha * g * l_shape / total_w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        if ema:
            with torch.no_grad():
                torch._foreach_lerp_(t_trainable, params, 1 - decay)
        return loss.item()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=None, help="experiment YAML (default: experiments/digits.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--steps", type=int, default=24, help="measured steps per side")
    ap.add_argument("--block", type=int, default=3, help="steps per alternating block")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps per side first")
    ap.add_argument("--profile", action="store_true", help="cProfile the rats side; top functions to stderr")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)
    config, args.overrides = config_and_overrides(args.config, args.overrides)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    prof = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, bench_overrides(f"{tmp}/run") + args.overrides)
        trainer = Trainer(cfg)
        trainer.setup()
        trainer.callbacks.fire("fit_start", trainer.state)  # open the loggers, as train() does
        bare = bare_setup(trainer)
        bs = cfg.train.batch_size

        def bare_step(i):
            prompts = trainer.sampler.batch(i, 0, 1)
            noise = batch_noise(trainer.backbone, cfg.seed, i, bs, 0, bs)
            bare(prompts, noise)

        def rats_step(i):
            if prof:
                prof.enable()
            values = trainer.train_step()
            trainer.step += 1
            trainer.after_step(values)  # what the training loop does with them: the step_end callbacks
            if prof:
                prof.disable()

        try:
            progress(f"overhead: {config.name}, {args.warmup} warm-up + {args.steps} measured steps per side")
            for i in range(args.warmup):
                bare_step(i)
                rats_step(i)
            times: dict[str, list[float]] = {"bare": [], "rats": []}
            cpu: dict[str, list[float]] = {"bare": [], "rats": []}
            blocks: dict[str, list[float]] = {"bare": [], "rats": []}
            i = args.warmup
            order = (("bare", bare_step), ("rats", rats_step))
            b = 0
            while len(times["rats"]) < args.steps:
                # alternate which side goes first, so neither always follows the other
                for name, fn in (order if b % 2 == 0 else order[::-1]):
                    block = []
                    for _ in range(args.block):
                        c0, t0 = time.process_time(), time.perf_counter()
                        fn(i)
                        block.append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
                    times[name] += block
                    blocks[name].append(sorted(block)[len(block) // 2])
                i += args.block
                b += 1
                progress(f"  block {b}: bare {blocks['bare'][-1]:.4f}s  rats {blocks['rats'][-1]:.4f}s")
        finally:
            trainer.cleanup()
    bare_s, rats_s = summary(times["bare"]), summary(times["rats"])
    pair = [r / bb for r, bb in zip(blocks["rats"], blocks["bare"])]
    q1, med, q3 = quartiles(pair)
    out = {
        "benchmark": "overhead",
        "config": str(config),
        "overrides": args.overrides,
        "backbone": cfg.backbone.name,
        "student_steps": cfg.student.steps,
        "teacher_steps": cfg.teacher.steps,
        "batch_size": cfg.train.batch_size,
        "steps_measured": len(times["rats"]),
        "block": args.block,
        "bare_step_s": bare_s["median"],
        "rats_step_s": rats_s["median"],
        "ratio": round(rats_s["median"] / bare_s["median"], 4),
        "block_ratio_median": round(med, 4),
        "block_ratio_q1_q3": [round(q1, 4), round(q3, 4)],
        "bare_step": bare_s,
        "rats_step": rats_s,
        # CPU seconds this process used per step (all its threads): insensitive to being descheduled
        # by other users of a shared machine, so steadier than wall time there
        "cpu_ratio": round(summary(cpu["rats"])["median"] / summary(cpu["bare"])["median"], 4),
        "bare_step_cpu": summary(cpu["bare"]),
        "rats_step_cpu": summary(cpu["rats"]),
        "target_ratio": 1.10,
        "device": str(trainer.dist.device),
        "machine": machine(),
    }
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(40)
        progress(s.getvalue())
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
