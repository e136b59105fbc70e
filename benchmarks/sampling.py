"""No test-time overhead: an exported K-step student costs K/N of the N-step teacher per image.

    python benchmarks/sampling.py [--variants tiny,wide] [--reps 7] [--threads 1]

For each pipeline variant, a tiny SD1.5-shaped diffusers pipeline (real diffusers classes, random
weights, built offline; ``tiny``: tests/plugins/tiny_pipelines.py, ``wide``: the same with a wider
UNet so that, as in real models, the UNet dominates a sampler step) is trained for one RATS step
(``rats-run benchmarks/configs/tiny_sd15.yaml``, K = 2, N = 50) and exported. Then a separate process
that never imports rats (it asserts so; only the CPU-torchvision import guard of rats_core/_compat.py
is loaded by file path, an install quirk of this machine) times plain
``DiffusionPipeline.from_pretrained(export)(prompt, num_inference_steps=s, ...)`` per image, with the
exported call's arguments, alternating step counts, median over ``--reps``:

* ``ratio`` = time(K) / time(N) at the student's guidance, against ``k_over_n``; per image this
  includes the text encoder and VAE decode, which do not depend on the step count;
* ``fixed_s`` and ``per_step_s``: a least-squares line through the times at several step counts;
  ``denoising_ratio`` = (time(K) − fixed) / (time(N) − fixed), the sampler loop alone;
* ``teacher_as_trained_s``: N steps at the teacher's guidance (CFG doubles each step's batch);
* ``student_vs_base_at_k``: the exported student against the untrained base pipeline at K steps
  (same architecture: the trained student costs nothing extra per step);
* ``unet_calls``: network calls counted at K and N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = ROOT / "benchmarks" / "configs" / "tiny_sd15.yaml"
PROMPT = "a photo of a cat"


# ----------------------------------------------------------------------------- timed child (no rats)


def child(export: str, base: str, k: int, n: int, g_teacher: float, reps: int) -> dict:
    import importlib.util

    # The machine's torchvision wheel needs its op schemas defined before diffusers imports (see
    # rats_core/_compat.py); load that one file by path so that no rats package is imported.
    spec = importlib.util.spec_from_file_location("_torchvision_guard", ROOT / "rats_core" / "_compat.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    guard.patch_cpu_torchvision()

    import torch
    from diffusers import DiffusionPipeline

    manifest = json.loads((Path(export) / "rats_export.json").read_text())
    call = dict(manifest["call"])
    call.pop("num_inference_steps")
    pipes = {"student": DiffusionPipeline.from_pretrained(export), "base": DiffusionPipeline.from_pretrained(base)}
    # the base as the student samples: the exported scheduler (trailing spacing)
    pipes["base"].scheduler = type(pipes["student"].scheduler).from_config(pipes["student"].scheduler.config)
    calls = {"n": 0}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
        p.unet.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    mid = max(k + 1, n // 4)
    variants = {
        f"student_{k}": ("student", k, call.get("guidance_scale", 1.0)),
        f"student_{mid}": ("student", mid, call.get("guidance_scale", 1.0)),
        f"student_{n}": ("student", n, call.get("guidance_scale", 1.0)),
        f"teacher_{n}_cfg": ("student", n, g_teacher),
        f"base_{k}": ("base", k, call.get("guidance_scale", 1.0)),
    }
    unet_calls = {}

    def run(name):
        which, steps, g = variants[name]
        calls["n"] = 0
        g_ = torch.Generator().manual_seed(0)
        pipes[which](PROMPT, num_inference_steps=steps, generator=g_, output_type="pt",
                     **{**call, "guidance_scale": g})
        unet_calls[name] = calls["n"]

    for name in variants:  # warm-up
        run(name)
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    names = list(variants)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(v) for name, v in times.items()}
    spread = {name: round((max(v) - min(v)) / statistics.median(v), 3) for name, v in times.items()}
    xs = [k, mid, n]
    ys = [med[f"student_{s}"] for s in xs]
    mx, my = sum(xs) / 3, sum(ys) / 3
    per_step = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    fixed = my - per_step * mx
    t_k, t_n = med[f"student_{k}"], med[f"student_{n}"]
    out = {
        "k": k,
        "n": n,
        "guidance_student": call.get("guidance_scale", 1.0),
        "guidance_teacher": g_teacher,
        "per_image_s": {name: round(v, 5) for name, v in med.items()},
        "range_over_median": spread,
        "ratio": round(t_k / t_n, 4),
        "k_over_n": round(k / n, 4),
        "ratio_within_10pct": abs(t_k / t_n - k / n) <= 0.1 * k / n,
        "fixed_s": round(fixed, 5),
        "per_step_s": round(per_step, 5),
        "denoising_ratio": round((t_k - fixed) / (t_n - fixed), 4),
        "denoising_ratio_within_10pct": abs((t_k - fixed) / (t_n - fixed) - k / n) <= 0.1 * k / n,
        "teacher_as_trained_s": round(med[f"teacher_{n}_cfg"], 5),
        "ratio_vs_teacher_as_trained": round(t_k / med[f"teacher_{n}_cfg"], 4),
        "student_vs_base_at_k": round(t_k / med[f"base_{k}"], 4),
        # the same from the process's CPU time (steadier than wall time on a shared machine)
        "ratio_cpu": round(statistics.median(cpu[f"student_{k}"]) / statistics.median(cpu[f"student_{n}"]), 4),
        "student_vs_base_at_k_cpu": round(statistics.median(cpu[f"student_{k}"]) / statistics.median(cpu[f"base_{k}"]), 4),
        "unet_calls": unet_calls,
        "rats_imported": any(m == "rats_core" or m.startswith(("rats_core.", "rats_plugins")) for m in sys.modules),
    }
    return out


# ----------------------------------------------------------------------------- driver


def build_wide_sd15(folder: Path) -> Path:
    """The tiny SD1.5 pipeline with a UNet of channels (64, 128), two layers per block."""
    sys.path.insert(0, str(ROOT / "tests" / "plugins"))
    import tiny_pipelines as tiny
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tok = tiny.clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=tiny.RESOLUTION // 2, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=tiny.vae(), text_encoder=tiny.clip_text_model(tok), tokenizer=tok, unet=unet,
        scheduler=PNDMScheduler(**tiny._SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="tiny,wide", help="comma-separated: tiny, wide")
    ap.add_argument("--k", type=int, default=2, help="student steps K")
    ap.add_argument("--n", type=int, default=50, help="teacher steps N")
    ap.add_argument("--reps", type=int, default=15, help="timed images per step count")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the timed process")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        export, base, k, n, g, reps = args.child
        print("RESULT " + json.dumps(child(export, base, int(k), int(n), float(g), int(reps))))
        return 0

    from _common import emit, machine, progress

    import rats_core  # noqa: F401  (CPU torchvision guard before diffusers, in this driver only)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["OMP_NUM_THREADS"] = str(args.threads)
    out: dict = {"benchmark": "sampling", "pipelines": {}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            base = tmp / f"base_{variant}"
            progress(f"{variant}: building the pipeline")
            if variant == "tiny":
                sys.path.insert(0, str(ROOT / "tests" / "plugins"))
                import tiny_pipelines as tiny

                tiny.build_sd15(base)
            elif variant == "wide":
                build_wide_sd15(base)
            else:
                raise SystemExit(f"--variants: unknown {variant!r} (tiny, wide)")
            run = tmp / f"run_{variant}"
            from rats_core.config import load_config

            cfg = load_config(TINY_CFG, [f"student.steps={args.k}", f"teacher.steps={args.n}"])
            progress(f"{variant}: one RATS step (K={args.k}, N={args.n}) and export")
            train = subprocess.run(
                [sys.executable, "-m", "rats_core.cli", "run", str(TINY_CFG), f"backbone.path={base}",
                 f"output_dir={run}", "train.steps=1", "train.export=true", "eval.at_end=false",
                 f"student.steps={args.k}", f"teacher.steps={args.n}", "train.checkpoint_every=0"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
            )
            if train.returncode != 0:
                progress(train.stderr[-3000:])
                out["pipelines"][variant] = {"error": train.stderr[-2000:]}
                ok = False
                continue
            progress(f"{variant}: timing plain diffusers sampling ({args.reps} images per step count)")
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(run / "export"), str(base),
                 str(args.k), str(args.n), str(cfg.teacher.guidance_scale), str(args.reps)],
                cwd=tmp, env=env, capture_output=True, text=True, timeout=1800,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                progress(proc.stderr[-3000:])
                out["pipelines"][variant] = {"error": proc.stderr[-2000:]}
                ok = False
                continue
            out["pipelines"][variant] = json.loads(line[len("RESULT "):])
    out["machine"] = {**machine(), "torch_threads": args.threads}
    emit(out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
