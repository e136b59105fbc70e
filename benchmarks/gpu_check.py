"""The GPU check: real RATS steps of the full-size models with random weights, next to `rats estimate`.

For each backbone (SD1.5, SDXL, PixArt-α at their native resolutions; FLUX.1 when the estimate says it fits),
a diffusers pipeline folder is written with random weights from the architecture shipped in
``rats_plugins.archs`` (no download), plus real-size random reward towers (HPSv2.1's open_clip ViT-H-14,
PickScore's CLIP ViT-H/14, ImageReward's BLIP ViT-L + BERT in the official checkpoint layout); then a handful of training steps run with the shipped experiment's
settings (``experiments/<backbone>.yaml``) through the trainer. Reported per backbone: seconds per step
(median after the first), peak memory (CUDA: ``max_memory_allocated``/``reserved``; CPU: peak RSS of the
process), the teacher's share of a step (``train.profile`` phases), and `rats estimate`'s per-rank
prediction beside the measurement. Each backbone runs in its own process, so one that runs out of memory
is reported and the others still run. One JSON object on stdout.

    python benchmarks/gpu_check.py                         # a GPU machine: all backbones, ~8 minutes
    python benchmarks/gpu_check.py --backbones sd15 --steps 3
    python benchmarks/gpu_check.py --tiny --device cpu     # what the tests run: tiny models on the CPU
    python benchmarks/gpu_check.py --device cpu --backbones sd15 --rewards toy-brightness \\
        student.lora.rank=64 train.batch_size=1 backbone.resolution=64 teacher.steps=8   # the CPU proof

``--tiny`` swaps the full-size architectures for the tiny pipelines and rewards of ``tests/plugins``
(same classes, a few layers): the same code path, in seconds. Trailing ``key=value`` overrides apply to
every backbone's config; the estimate is computed for the reward set that actually runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, machine, progress  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "plugins"))  # tokenizers and tiny models built offline

BACKBONES = ("sd15", "sdxl", "pixart", "flux")
#: the paper's FLUX.1-dev figures (RATS, 8 GPUs) the measurements are printed beside
PAPER = {"flux": {"s_per_step": 7.57, "peak_gb": 67.67, "hours_400_steps": 0.83}}


# ----------------------------------------------------------------------------- weights


def _random_part(spec: dict, device: str, dtype):
    import torch

    from rats_core.estimate import build_part

    torch.manual_seed(0)
    return build_part(spec, device=device, dtype=dtype)


def write_pipeline(name: str, folder: Path, device: str, dtype) -> Path:
    """A diffusers pipeline folder of the shipped architecture ``name`` with random weights."""
    build_pipeline(name, device, dtype).save_pretrained(folder)
    return folder


def build_pipeline(name: str, device: str, dtype):
    """The diffusers pipeline of the shipped architecture ``name`` (random weights; ``meta``: none)."""
    import tiny_pipelines as tiny
    from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                           FluxPipeline, PixArtAlphaPipeline, PNDMScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)

    from rats_core.estimate import load_arch

    parts = load_arch(name)["parts"]
    build = {role: _random_part(spec, device, dtype) for role, spec in parts.items()}
    clip = lambda: tiny.clip_tokenizer(max_length=77)  # noqa: E731  (a truncated BPE: ids < 49408)
    if name == "sd15":
        pipe = StableDiffusionPipeline(
            vae=build["vae"], text_encoder=build["text_encoder"], tokenizer=clip(), unet=build["denoiser"],
            scheduler=PNDMScheduler(**tiny._SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif name == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=build["vae"], text_encoder=build["text_encoder"], text_encoder_2=build["text_encoder_2"],
            tokenizer=clip(), tokenizer_2=clip(), unet=build["denoiser"],
            scheduler=EulerDiscreteScheduler(**tiny._SD_BETAS, steps_offset=1, timestep_spacing="leading"))
    elif name == "pixart":
        pipe = PixArtAlphaPipeline(
            tokenizer=tiny.t5_tokenizer(max_length=120), text_encoder=build["text_encoder"], vae=build["vae"],
            transformer=build["denoiser"],
            scheduler=DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                                  num_train_timesteps=1000, prediction_type="epsilon"))
    elif name == "flux":
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                      max_shift=1.15, base_image_seq_len=256,
                                                      max_image_seq_len=4096),
            vae=build["vae"], text_encoder=build["text_encoder"], tokenizer=clip(),
            text_encoder_2=build["text_encoder_2"], tokenizer_2=tiny.t5_tokenizer(max_length=512),
            transformer=build["denoiser"])
    else:
        raise SystemExit(f"unknown backbone {name}")
    return pipe


def write_rewards(folder: Path, names: list[str], tiny_models: bool, device: str) -> list[str]:
    """Random reward towers of the real sizes (or tiny ones) and the overrides that point at them."""
    import math

    import torch

    out = []
    for i, name in enumerate(names):
        if name in ("hpsv2", "hpsv2.1"):
            if tiny_models:
                import tiny_rewards

                path, _ = tiny_rewards.build_hps(folder / "hps")
                arch = tiny_rewards.register_tiny_open_clip(folder / "hps" / "open_clip_configs")
                out.append(f"{{name: {name}, path: {path}, architecture: {arch}, weight: 1.0}}")
            else:
                import open_clip

                torch.manual_seed(0)
                model = open_clip.create_model("ViT-H-14", pretrained=None, device=device)
                path = folder / "HPS_v2.1_compressed.pt"
                torch.save({"state_dict": model.state_dict()}, path)
                del model
                out.append(f"{{name: {name}, path: {path}, weight: 1.0, normalize: fixed, mean: 0.28, std: 0.03, "
                           "dtype: bfloat16}")
        elif name == "pickscore":
            import tiny_rewards

            if tiny_models:
                model_dir, proc = tiny_rewards.build_pickscore(folder / "pick")
            else:
                from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

                from rats_core.estimate import load_arch

                model = _random_part(load_arch("pickscore")["parts"]["model"], device, None)
                with torch.no_grad():
                    model.logit_scale.fill_(math.log(100.0))
                model_dir = folder / "pick" / "pickscore"
                model.save_pretrained(str(model_dir))
                del model
                proc = tiny_rewards.write_clip_tokenizer(folder / "pick" / "processor")
                ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
                CLIPProcessor(ip, CLIPTokenizer.from_pretrained(str(proc))).save_pretrained(str(proc))
                ip.save_pretrained(str(proc))
            out.append(f"{{name: pickscore, path: {model_dir}, processor: {proc}, weight: 1.0, normalize: fixed, "
                       f"mean: 21.0, std: 1.0{'' if tiny_models else ', dtype: bfloat16'}}}")
        elif name == "imagereward":
            if tiny_models:
                import tiny_rewards

                path, tok, _ = tiny_rewards.build_imagereward(folder / "ir")
            else:
                path, tok = folder / "ImageReward.pt", write_bert_tokenizer(folder / "bert")
                torch.save(official_imagereward_state(device), path)
            out.append(f"{{name: imagereward, path: {path}, tokenizer: {tok}, weight: 1.0, normalize: fixed, "
                       f"mean: 0.5, std: 1.0{'' if tiny_models else ', dtype: bfloat16'}}}")
        else:  # a reward without weights (toy-brightness, ...)
            out.append(f"{{name: {name}, weight: 1.0}}")
    return ["rewards=[" + ", ".join(out) + "]"]


def prepare(name: str, tmp: Path, args: argparse.Namespace) -> dict:
    """Write the pipeline folder and the reward weights (a process of its own); their overrides."""
    import rats_core  # noqa: F401  (CPU torchvision guard before diffusers)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        import tiny_pipelines as tiny

        folder = tiny.BUILDERS[name](tmp / "pipe")
    else:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        folder = write_pipeline(name, tmp / "pipe", device, dtype)
    overrides = write_rewards(tmp / "rewards", args.rewards.split(","), args.tiny, device)
    return {"folder": str(folder), "overrides": overrides}


#: transformers' BLIP names -> the official ImageReward.pt names (the inverse of the plugin's mapping)
_IR_VISION = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm."),
]


def official_imagereward_state(device: str = "cpu") -> dict:
    """A random full-size ImageReward state dict in the official checkpoint's layout (BLIP ViT-L/16,
    BERT-base with cross-attention, the MLP head), from the architecture in ``rats_plugins.archs``."""
    import re

    from rats_core.estimate import load_arch

    parts = load_arch("imagereward")["parts"]
    state = {}
    for role, prefix in (("vision", "blip.visual_encoder."), ("text", "blip.text_encoder."), ("mlp", "mlp.")):
        module = _random_part(parts[role], device, None)
        for key, value in module.state_dict().items():
            if role == "vision":
                for pattern, repl in _IR_VISION:
                    key, n = re.subn(pattern, repl, key)
                    if n:
                        break
            state[prefix + key] = value.cpu() if value.device.type != "meta" else value
        del module
    return state


def write_bert_tokenizer(directory: Path) -> Path:
    """A BERT WordPiece vocabulary of bert-base-uncased's size (30522; ImageReward adds [DEC] and [ENC])."""
    import tiny_rewards

    tiny_rewards.write_bert_vocab(directory)
    tokens = (directory / "vocab.txt").read_text().split()
    tokens += [f"[unused{i}]" for i in range(30522 - len(tokens))]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return directory


# ----------------------------------------------------------------------------- one backbone (child process)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(name: str, args: argparse.Namespace, overrides: list[str]) -> dict:
    import rats_core  # noqa: F401  (CPU torchvision guard before diffusers)
    import torch

    from rats_core.config import load_config
    from rats_core.estimate import GiB, estimate
    from rats_core.training.trainer import Trainer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        # The random weights are written by another process, so this one's peak memory is the run's.
        cmd = [sys.executable, str(Path(__file__).resolve()), "--prepare", name, "--workdir", str(tmp),
               "--rewards", args.rewards, "--device", device] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"writing the random weights failed: {proc.stderr.strip()[-2000:]}")
        prepared = json.loads(proc.stdout.strip().splitlines()[-1])
        folder, reward_over = prepared["folder"], prepared["overrides"]
        sized = []
        if args.tiny and "hpsv2" in args.rewards:  # the tiny open_clip architecture, in this process too
            import tiny_rewards

            tiny_rewards.register_tiny_open_clip(tmp / "rewards" / "hps" / "open_clip_configs")
        if args.tiny:
            sized = ["backbone.resolution=16", "teacher.steps=6", "train.batch_size=2",
                     "train.gradient_accumulation=1", "backbone.dtype=fp32", "backbone.denoiser_dtype=fp32",
                     "train.precision=fp32"]
        written_s = time.perf_counter() - t_start
        over = [f"backbone.path={folder}", f"output_dir={tmp / 'run'}", f"train.steps={args.steps}",
                "train.checkpoint_every=0", "train.progress=false", "train.profile=true", "train.export=false",
                "eval.every=0", "eval.at_end=false", "train.resume=never", f"train.device={device}",
                *sized, *reward_over, *overrides]
        cfg = load_config(ROOT / "experiments" / f"{name}.yaml", over)
        t0 = time.perf_counter()
        predicted = estimate(cfg, source=f"experiments/{name}.yaml")
        estimate_s = time.perf_counter() - t0
        rss0 = _rss_bytes()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg)
        steps, teacher = [], []
        try:
            trainer.setup()
            rss_setup = _rss_bytes()
            for _ in range(args.steps):
                values = trainer.train_step()
                trainer.step += 1
                steps.append(values["step_time"])
                teacher.append(values.get("time/teacher_rollout", float("nan")))
        finally:
            trainer.cleanup()
        measured = steps[1:] or steps
        share = [t / s for t, s in zip(teacher[1:] or teacher, measured)]
        stage = predicted.stage
        out = {
            "backbone": name,
            "device": device,
            "resolution": predicted.resolution,
            "params": predicted.params,
            "steps_run": len(steps),
            "s_per_step": statistics.median(measured),
            "first_step_s": steps[0],
            "teacher_share": statistics.median(share),
            "estimate": {"zero_stage": stage, "per_rank_gib": predicted.per_rank(stage) / GiB,
                         "parts_gib": {p.name: p.bytes / GiB for p in predicted.parts[stage]},
                         "seconds": estimate_s},
            "weights_written_s": written_s,
        }
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated()
            out["peak_allocated_gib"] = peak / GiB
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
            out["measured_over_estimate"] = peak / predicted.per_rank(stage)
        else:
            # ru_maxrss: kB on Linux; the process's peak, including loading the weights
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out["peak_rss_gib"] = peak / GiB
            out["rss_before_setup_gib"] = rss0 / GiB
            out["rss_after_setup_gib"] = rss_setup / GiB
            out["measured_over_estimate"] = peak / predicted.per_rank(stage)
            out["measured_above_baseline_over_estimate"] = (peak - rss0) / predicted.per_rank(stage)
        if name in PAPER:
            out["paper"] = PAPER[name]
        return out


# ----------------------------------------------------------------------------- activations alone


def activation_check(args: argparse.Namespace) -> dict:
    """The trace's activation figure against a real forward + backward of full-size parts with random
    weights: SD1.5's VAE decode (what dominates a step's activations) and its UNet (LoRA rank 64,
    gradient checkpointing off and on), at ``--act-resolution`` px, batch 1. Measured: the peak
    memory of the backward above what was allocated before the forward (CUDA: the allocator's peak;
    CPU: the process's peak RSS), which also holds the backward's own transient gradients."""
    import rats_core  # noqa: F401
    import torch

    from rats_core import estimate as est
    from rats_core.config import load_config

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    arch = est.load_arch("sd15")
    side = args.act_resolution // 8
    cases = {}

    def peak_now():
        if device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _status_bytes("VmHWM")

    def reset_peak():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:  # the kernel's peak-RSS counter (VmHWM) restarts from the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def current():
        return torch.cuda.memory_allocated() if device == "cuda" else _rss_bytes()

    def measure(name, module, make_call):
        # the trace: the same call on the meta device
        meta = est.build_part(arch["parts"][name], dtype=dtype)
        fn_meta, inputs, prep = make_call(meta, "meta")
        predicted = est.trace(fn_meta, [meta], [meta], inputs)
        fn, _, _ = make_call(module, device)
        # the trainable tensors' gradients are the table's "gradients" row, not activations
        grads = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
        reset_peak()
        before = current()
        out = fn()
        (out[0] if isinstance(out, tuple) else out).float().mean().backward()
        used = peak_now() - before - grads
        pred = predicted.saved + predicted.max_unit
        return {"predicted_gib": pred / 2**30, "measured_gib": used / 2**30, "trainable_grads_gib": grads / 2**30,
                "measured_over_predicted": used / max(1, pred)}

    torch.manual_seed(0)
    vae = est.build_part(arch["parts"]["vae"], device=device, dtype=dtype).requires_grad_(False)

    def vae_call(m, dev):
        z = torch.zeros(1, 4, side, side, device=dev, dtype=dtype, requires_grad=True)
        return (lambda: m.decode(z, return_dict=False)[0]), [z], None

    with est.quiet_libraries():
        cases["vae_decode"] = measure("vae", vae, vae_call)
    del vae
    cfg = load_config(ROOT / "experiments" / "sd15.yaml", ["student.lora={rank: 64, alpha: 64}"])
    for ckpt in (False, True):
        unet = est.build_part(arch["parts"]["denoiser"], device=device, dtype=dtype).requires_grad_(False)

        def unet_call(m, dev):
            if not any("lora_" in n for n, _ in m.named_parameters()):
                est.lora_trainable(m, cfg, "sd15", None)
                m.to(dtype)
            if ckpt:
                m.enable_gradient_checkpointing()
            m.train()
            fn, inputs = est.denoiser_call(arch["parts"]["denoiser"], m, 1, side, 77, torch.device(dev), dtype)
            return fn, inputs, None

        with est.quiet_libraries():
            cases[f"unet_lora64{'_checkpointed' if ckpt else ''}"] = measure("denoiser", unet, unet_call)
        del unet
    return {"device": device, "resolution": args.act_resolution, "dtype": str(dtype), "cases": cases}


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every backbone's config")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated; default: all four")
    p.add_argument("--steps", type=int, default=4, help="training steps per backbone (the first is not timed)")
    p.add_argument("--rewards", default="hpsv2.1,pickscore,imagereward",
                   help="reward towers to build and train with (default: the shipped experiments' three)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--tiny", action="store_true", help="tiny models of the same classes (the tests)")
    p.add_argument("--budget-s", type=float, default=450, help="skip backbones not started by this time")
    p.add_argument("--workdir", default=None, help="where the random weights are written (default: $TMPDIR)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    p.add_argument("--activations", action="store_true",
                   help="only check the activation trace against a real forward+backward (SD1.5 VAE and UNet)")
    p.add_argument("--act-resolution", type=int, default=256, help="image side for --activations")
    args = p.parse_args(argv)
    if args.activations:
        emit(activation_check(args))
        return 0
    if args.prepare:
        print(json.dumps(prepare(args.prepare, Path(args.workdir), args)))
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args, args.overrides)))
        return 0

    import rats_core  # noqa: F401
    import torch

    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for name in [b for b in args.backbones.split(",") if b]:
        if time.perf_counter() - t0 > args.budget_s:
            results[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
            continue
        if name == "flux" and not args.tiny and torch.cuda.is_available():
            fits = _flux_fits(args)
            if fits is not None:
                results[name] = {"skipped": fits}
                continue
        progress(f"gpu_check: {name} ...")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--steps", str(args.steps),
               "--rewards", args.rewards] + (["--tiny"] if args.tiny else []) + \
              (["--device", args.device] if args.device else []) + \
              (["--workdir", args.workdir] if args.workdir else []) + args.overrides
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            tail = proc.stderr.strip().splitlines()[-3:]
            results[name] = {"failed": f"exit {proc.returncode}", "stderr_tail": tail}
        progress(f"gpu_check: {name}: {json.dumps(results[name])[:300]}")
    out = {"benchmark": "gpu_check", "tiny": args.tiny, "machine": machine(), "steps": args.steps,
           "rewards": args.rewards.split(","), "overrides": args.overrides, "backbones": results,
           "seconds": time.perf_counter() - t0}
    if torch.cuda.is_available():
        out["gpu"] = {"name": torch.cuda.get_device_name(0),
                      "memory_gib": torch.cuda.get_device_properties(0).total_memory / 1024**3}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    emit(out)
    return 0 if all("failed" not in r for r in results.values()) else 1


def _flux_fits(args: argparse.Namespace) -> str | None:
    """FLUX only when `rats estimate` says its config fits this GPU; the reason to skip otherwise."""
    import torch

    from rats_core.config import load_config
    from rats_core.estimate import GiB, estimate

    cfg = load_config(ROOT / "experiments" / "flux.yaml", list(args.overrides))
    e = estimate(cfg)
    need = e.per_rank(e.stage)
    have = torch.cuda.get_device_properties(0).total_memory
    if need > 0.9 * have:
        return f"estimate {need / GiB:.1f} GiB per rank > 90% of this GPU's {have / GiB:.1f} GiB"
    return None


if __name__ == "__main__":
    sys.exit(main())
