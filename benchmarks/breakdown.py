"""Where a training step's time goes, and what the usual ways of cutting the teacher's share buy.

    python benchmarks/breakdown.py [CONFIG] [key=value ...] [--steps 6] [--rollouts 4] [--threads 1]
                                   [--skip inference_mode,cfg,compile,cache]

CONFIG defaults to ``experiments/digits.yaml`` (the toy config when the digits weights are missing).

``phases``: per-phase seconds of a step from the trainer's own ``train.profile: true`` metrics
(``time/<phase>``: encode_prompts, teacher_rollout, student_rollout, student_reward, loss, backward,
optimizer, ema, logging), median over ``--steps`` steps, with each phase's share of the step.

``teacher`` (each measured on the same trainer, alternating the two variants call by call):

* ``inference_mode``: the teacher rollout under ``torch.inference_mode`` (the default) vs ``no_grad``
  (``ObjectiveSettings.teacher_inference_mode``).
* ``cfg``: classifier-free guidance batched into one forward pass of 2B (what the backbones do) vs two
  passes of B (a wrapper splitting the batch), at the config's teacher guidance (3.0 when it is 1:
  guidance 1 costs one pass, nothing to batch); with the no-guidance rollout for reference.
* ``compile``: ``teacher.compile: true`` — ``torch.compile`` time (the first two compiled rollouts minus
  two compiled rollouts' run time) with an empty inductor cache (``compile_s``, the first run on a
  machine) and again with the cache it filled (``compile_warm_cache_s``, a re-run), vs the per-rollout
  gain; ``break_even_steps``: the steps after which compiling has paid for itself.
* ``cache``: ``teacher.cache: true`` with ``teacher.kind: frozen`` and ``data.noise_pool``: step time
  when the batch's teacher rollout is cached (hit) vs computed (miss; cache emptied before the step).
  ``expected_step_s`` is the mean step over a ``train.steps``-step run with ``data.noise_pool=--pool``,
  which computes each pool batch's rollout once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_overrides, config_and_overrides, emit, machine, progress, quartiles,  # noqa: E402
                     summary)

import rats_core  # noqa: E402,F401
import torch  # noqa: E402
from torch import nn  # noqa: E402

from rats_core.config import load_config  # noqa: E402
from rats_core.training.trainer import Trainer, batch_noise  # noqa: E402

PHASES = ("encode_prompts", "teacher_rollout", "student_rollout", "teacher_continuation", "student_reward", "loss",
          "backward", "optimizer", "ema", "logging")  # teacher_continuation: 0 unless teacher.target=continuation
OPTIONS = ("inference_mode", "cfg", "compile", "cache")


class BatchProbe(nn.Module):
    """Records the batch sizes a denoiser is called with."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.sizes: list[int] = []

    def forward(self, x, *args, **kwargs):
        self.sizes.append(x.shape[0])
        return self.net(x, *args, **kwargs)


class SplitCFG(nn.Module):
    """Runs a denoiser on each half of its batch separately: classifier-free guidance as two passes."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, *args, **kwargs):
        b = x.shape[0] // 2
        if b == 0 or x.shape[0] % 2:
            return self.net(x, t, *args, **kwargs)

        def half(v, i):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 2 * b:
                return v[i * b:(i + 1) * b]
            if isinstance(v, dict):
                return {k: half(u, i) for k, u in v.items()}
            return v

        outs = [self.net(half(x, i), half(t, i), *[half(a, i) for a in args],
                         **{k: half(v, i) for k, v in kwargs.items()}) for i in range(2)]
        first = outs[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(outs)
        if isinstance(first, tuple):  # return_dict=False
            return (torch.cat([o[0] for o in outs]),) + tuple(first[1:])
        # diffusers output classes: concatenate the `sample` field
        return type(first)(sample=torch.cat([o.sample for o in outs]))


def med(xs):
    return round(statistics.median(xs), 5)


def alternate(variants: dict, calls: int) -> dict[str, list[float]]:
    """Time each variant ``calls`` times, interleaved (and in alternating order) so noise hits all alike.
    Wall seconds under each name, and this process's CPU seconds under ``<name>_cpu``."""
    times = {k: [] for k in variants} | {f"{k}_cpu": [] for k in variants}
    names = list(variants)
    for i in range(calls):
        for name in (names if i % 2 == 0 else names[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
            times[f"{name}_cpu"].append(time.process_time() - c0)
    return times


def spread(xs) -> list[float]:
    """[q1, q3] of a list of timings."""
    q1, _, q3 = quartiles(xs)
    return [round(q1, 5), round(q3, 5)]


def make_trainer(config: Path, overrides: list[str], tmp: str, name: str) -> Trainer:
    cfg = load_config(config, bench_overrides(f"{tmp}/{name}") + ["train.profile=true"] + overrides)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.callbacks.fire("fit_start", trainer.state)  # open the loggers, as train() does
    return trainer


def run_steps(trainer: Trainer, n: int) -> list[dict[str, float]]:
    out = []
    for _ in range(n):
        values = trainer.train_step()
        trainer.step += 1
        trainer.after_step(values)  # logging callbacks, as in the training loop
        out.append(values)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=6, help="profiled training steps (after one warm-up step)")
    ap.add_argument("--rollouts", type=int, default=6, help="teacher rollouts (or steps) per variant")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: steadier on a shared machine); 0 keeps torch's choice")
    ap.add_argument("--skip", default="", help=f"comma-separated options not to measure: {','.join(OPTIONS)}")
    ap.add_argument("--pool", type=int, default=16,
                    help="data.noise_pool assumed for the cache's expected_step_s (batches computed once per run)")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(OPTIONS):
        ap.error(f"--skip: unknown {sorted(skip - set(OPTIONS))}; known: {', '.join(OPTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config, args.overrides = config_and_overrides(args.config, args.overrides)
    torch.manual_seed(0)
    out: dict = {"benchmark": "breakdown", "config": str(config), "overrides": args.overrides}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(config, args.overrides, tmp, "main")
        cfg = trainer.cfg
        out.update(backbone=cfg.backbone.name, student_steps=cfg.student.steps,
                   teacher_steps=len(trainer.objective.schedules.teacher) - 1,
                   batch_size=cfg.train.batch_size, teacher_kind=cfg.teacher.kind)
        try:
            progress(f"breakdown: {config.name}: 1 warm-up + {args.steps} profiled steps")
            run_steps(trainer, 1)
            rows = run_steps(trainer, args.steps)
            step = [r["step_time"] for r in rows]
            phases = {}
            for p in PHASES:
                vals = [r.get(f"time/{p}", 0.0) for r in rows]
                phases[p] = {"s": med(vals), "share": round(statistics.median(vals) / statistics.median(step), 4)}
            named = sum(phases[p]["s"] for p in PHASES)
            out["step_s"] = summary(step)
            out["phases"] = phases
            out["unattributed_s"] = round(statistics.median(step) - named, 5)
            teacher = out["teacher"] = {}

            bs = cfg.train.batch_size
            prompts = trainer.sampler.batch(0, 0, 1)
            noise = batch_noise(trainer.backbone, cfg.seed, 0, bs, 0, bs)
            with torch.no_grad():
                cond = trainer.backbone.encode_prompts(prompts)
            obj = trainer.objective
            net = trainer.teacher.module

            def rollout(network=net):
                return obj.teacher_rollout(network, noise, cond, prompts)

            rollout()  # warm-up

            if "inference_mode" not in skip:
                progress(f"teacher under inference_mode vs no_grad: {args.rollouts} rollouts each")

                def mode(flag):
                    def f():
                        obj.s.teacher_inference_mode = flag
                        rollout()
                    return f

                t = alternate({"inference_mode": mode(True), "no_grad": mode(False)}, args.rollouts)
                obj.s.teacher_inference_mode = True
                teacher["inference_mode"] = {
                    "inference_mode_s": med(t["inference_mode"]),
                    "no_grad_s": med(t["no_grad"]),
                    "inference_mode_q1_q3": spread(t["inference_mode"]),
                    "no_grad_q1_q3": spread(t["no_grad"]),
                    "speedup": round(med(t["no_grad"]) / med(t["inference_mode"]), 4),
                    "speedup_cpu_time": round(med(t["no_grad_cpu"]) / med(t["inference_mode_cpu"]), 4),
                }

            if "cfg" not in skip:
                g = cfg.teacher.guidance_scale if cfg.teacher.guidance_scale != 1.0 else 3.0
                progress(f"teacher CFG (guidance {g}) batched vs two passes: {args.rollouts} rollouts each")
                split = SplitCFG(net)
                old = obj.s.teacher_guidance
                probe = BatchProbe(net)
                obj.s.teacher_guidance = g
                try:
                    rollout(probe)
                finally:
                    obj.s.teacher_guidance = old
                if set(probe.sizes) != {2 * bs}:
                    progress(f"  {cfg.backbone.name} does not run guidance as one doubled batch; skipped")
                    teacher["cfg"] = {"guidance_scale": g, "skipped": f"the {cfg.backbone.name} backbone calls its "
                                      f"network with batch sizes {sorted(set(probe.sizes))} under guidance, not "
                                      f"one batch of {2 * bs}: nothing to compare"}
                    skip.add("cfg")
            if "cfg" not in skip:

                def guided(network, scale):
                    def f():
                        obj.s.teacher_guidance = scale
                        rollout(network)
                    return f

                try:
                    t = alternate({"batched": guided(net, g), "two_passes": guided(split, g),
                                   "no_guidance": guided(net, 1.0)}, args.rollouts)
                finally:
                    obj.s.teacher_guidance = old
                teacher["cfg"] = {
                    "guidance_scale": g,
                    "batched_s": med(t["batched"]),
                    "two_passes_s": med(t["two_passes"]),
                    "no_guidance_s": med(t["no_guidance"]),
                    "batched_q1_q3": spread(t["batched"]),
                    "two_passes_q1_q3": spread(t["two_passes"]),
                    "speedup_of_batching": round(med(t["two_passes"]) / med(t["batched"]), 4),
                    "speedup_of_batching_cpu_time": round(med(t["two_passes_cpu"]) / med(t["batched_cpu"]), 4),
                }

            if "compile" not in skip:
                progress("teacher.compile: torch.compile of the teacher (compiling, cold cache...)")
                # A fresh inductor cache: the first compile on a machine. The second compile (after
                # resetting dynamo) finds the compiled graphs on disk, as a re-run or a resume would.
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor_cache")

                def first_rollouts():
                    compiled = torch.compile(net)
                    t0 = time.perf_counter()
                    rollout(compiled)
                    rollout(compiled)  # a shape-specialised recompile, if any, happens here
                    return compiled, time.perf_counter() - t0

                compiled, cold = first_rollouts()
                torch._dynamo.reset()
                compiled, warm = first_rollouts()
                t = alternate({"eager": lambda: rollout(net), "compiled": lambda: rollout(compiled)}, args.rollouts)
                eager_s, comp_s = med(t["eager"]), med(t["compiled"])
                gain = eager_s - comp_s
                cold_s = round(max(cold - 2 * comp_s, 0.0), 3)
                warm_s = round(max(warm - 2 * comp_s, 0.0), 3)
                teacher["compile"] = {
                    "compile_s": cold_s,
                    "compile_warm_cache_s": warm_s,
                    "eager_rollout_s": eager_s,
                    "compiled_rollout_s": comp_s,
                    "eager_q1_q3": spread(t["eager"]),
                    "compiled_q1_q3": spread(t["compiled"]),
                    "speedup": round(eager_s / comp_s, 4),
                    "speedup_cpu_time": round(med(t["eager_cpu"]) / med(t["compiled_cpu"]), 4),
                    "break_even_steps": round(cold_s / gain, 1) if gain > 0 else None,
                    "break_even_steps_warm_cache": round(warm_s / gain, 1) if gain > 0 else None,
                }
                del compiled
        finally:
            trainer.cleanup()

        if "cache" not in skip:
            progress("teacher.cache (frozen teacher): hit vs miss steps")
            # Measured with a pool of one batch, so that emptying the cache makes the next step a miss
            # and leaves the one after a hit; per-step costs do not depend on the pool's size.
            cached = make_trainer(config, args.overrides + ["teacher.kind=frozen", "teacher.cache=true",
                                                            "data.noise_pool=1"], tmp, "cache")
            try:
                run_steps(cached, 2)  # fill the cache (and warm up)

                def miss():
                    cached.teacher_cache.clear()
                    run_steps(cached, 1)

                t = alternate({"miss": miss, "hit": lambda: run_steps(cached, 1)}, args.rollouts)
                miss_s, hit_s = med(t["miss"]), med(t["hit"])
                total = load_config(config, args.overrides).train.steps  # the real run's length
                n_miss = min(args.pool, total)
                out["teacher"]["cache"] = {
                    "noise_pool": args.pool,
                    "hits_misses": [cached.teacher_cache.hits, cached.teacher_cache.misses],
                    "miss_step_s": miss_s,
                    "hit_step_s": hit_s,
                    "miss_q1_q3": spread(t["miss"]),
                    "hit_q1_q3": spread(t["hit"]),
                    "speedup_on_hits": round(miss_s / hit_s, 4),
                    "train_steps": total,
                    "expected_step_s": round((n_miss * miss_s + (total - n_miss) * hit_s) / total, 5),
                    "trade_off": "needs teacher.kind=frozen (the paper's teacher is the EMA of the student) and a "
                                 "finite noise pool: the student sees noise_pool x batch fixed noise samples",
                }
            finally:
                cached.cleanup()
    out["device"] = str(trainer.dist.device)
    out["machine"] = machine()
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
