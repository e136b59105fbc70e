"""Memory: peak RSS of a training step per tiny backbone, and per-rank memory under ZeRO 0/2/3.

    python benchmarks/memory.py [--backbones toy,digits,sd15,pixart,flux] [--zero 0,2,3] [--width 128]
                                [--steps 2] [--threads 1]

``backbones``: each backbone trains in its own process (so nothing else shares its heap): set up,
one warm-up step, then the kernel's peak-RSS counter (VmHWM) is reset and ``--steps`` steps run.
``peak_step_mb`` is the highest RSS during those steps, ``step_increment_mb`` its rise over the RSS
before them (activations, gradients and temporaries of a step; weights and optimizer state are
already allocated by the warm-up step). The tiny SD1.5 / PixArt-α / FLUX.1 pipelines are the real
diffusers classes with a few layers (tests/plugins/tiny_pipelines.py), built offline; digits uses
the shipped weights (skipped when they are missing).

``--host``: ZeRO-3's host memory per rank on 2 CPU ranks (same model; full fine-tune, ``eval.at_end`` on so
the base weights are kept for the report): the peak RSS of the setup, the RSS after it (what the run holds
while it trains), and the rise of the peak while the base weights are swapped in for an evaluation and while
a checkpoint is loaded back (a resume). Each rank also reports the bytes of the full trainable weights, the
unit these figures are to be read in (one "model").

``zero``: ``torchrun --standalone --nproc_per_node 2`` runs the trainer on 2 CPU ranks for each ZeRO
stage, on a digits-architecture UNet widened to ``--width``/2×/2× channels (random weights, big enough
for sharding to show). Each rank reports, measured from the live tensors (storage bytes, each
storage counted once): its parameters (ZeRO-3: its partition), its gradients (right after the
backward, before the optimizer step), its optimizer state (Adam moments plus any fp32 master
partition) and its peak RSS. The EMA teacher is a full copy on every rank at every stage (it is not
trained, so ZeRO does not shard it) and is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DIGITS, DIGITS_WEIGHTS, ROOT, TOY, emit, machine, progress  # noqa: E402

TINY_CFG = ROOT / "benchmarks" / "configs" / "tiny_sd15.yaml"
MB = 2**20


# ----------------------------------------------------------------------------- /proc helpers


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- configurations


def backbone_runs(names: list[str], tmp: Path) -> dict[str, tuple[Path, list[str]] | str]:
    """name -> (config, overrides), or a reason it cannot run."""
    runs: dict[str, tuple[Path, list[str]] | str] = {}
    tiny = None
    for name in names:
        if name == "toy":
            runs[name] = (TOY, [])
        elif name == "digits":
            if DIGITS.is_file() and (DIGITS_WEIGHTS / "unet" / "config.json").is_file():
                runs[name] = (DIGITS, [])
            else:
                runs[name] = f"skipped: {DIGITS} or its weights in {DIGITS_WEIGHTS} are missing"
        elif name in ("sd15", "pixart", "flux"):
            if tiny is None:
                sys.path.insert(0, str(ROOT / "tests" / "plugins"))
                import tiny_pipelines as tiny  # noqa: F811
            folder = tmp / f"tiny_{name}"
            if not folder.exists():
                progress(f"building the tiny {name} pipeline")
                tiny.BUILDERS[name](folder)
            section = f"{{name: {name}, path: {folder}, resolution: {tiny.RESOLUTION}"
            if name == "flux":
                section += f", max_sequence_length: {tiny.T5_MAX_LENGTH}"
            overrides = [f"backbone={section}}}"]
            if name != "sd15":
                overrides.append("teacher.guidance_scale=1.0")
            runs[name] = (TINY_CFG, overrides)
        else:
            runs[name] = f"unknown backbone {name!r} (toy, digits, sd15, pixart, flux)"
    return runs


def build_wide_digits(folder: Path, width: int) -> int:
    """A digits-architecture model folder with channels (width, 2·width, 2·width), random weights."""
    import rats_core  # noqa: F401  (CPU torchvision guard before diffusers)
    import torch
    from diffusers import UNet2DConditionModel

    from rats_plugins.digits import data
    from rats_plugins.digits.backbone import INFO_FILE, make_scheduler, unet_config
    from rats_plugins.digits.text_encoder import DigitsTextEncoder, build_vocab

    torch.manual_seed(0)
    config = unet_config(16)
    config["block_out_channels"] = (width, 2 * width, 2 * width)
    unet = UNet2DConditionModel(**config)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    make_scheduler().save_pretrained(folder / "scheduler")
    DigitsTextEncoder(build_vocab(data.train_prompts())).save(folder / "text_encoder")
    (folder / INFO_FILE).write_text(json.dumps({"format": "rats-digits", "resolution": 16, "default_steps": 50}))
    return sum(p.numel() for p in unet.parameters())


def zero_overrides(folder: Path, stage: int, out: Path) -> list[str]:
    return [
        f"backbone={{name: digits, path: {folder}}}",
        "rewards=[{name: toy-brightness, weight: 1.0}]",
        "student.steps=2", "teacher.steps=4", "teacher.guidance_scale=1.0",
        "train.batch_size=2", "train.device=cpu", "train.precision=fp32", f"output_dir={out}",
        f"deepspeed={{zero_optimization: {{stage: {stage}}}}}",
        "data.prompts=[a handwritten 3, the digit seven]", "data.eval_prompts=null",
    ]


# ----------------------------------------------------------------------------- children


def _trainer(config: str, overrides: list[str], out: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import bench_overrides

    import rats_core  # noqa: F401
    from rats_core.config import load_config
    from rats_core.training.trainer import Trainer

    cfg = load_config(config, bench_overrides(out) + overrides)
    trainer = Trainer(cfg)
    trainer.setup()
    return trainer


def child_step(config: str, overrides: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(config, overrides, f"{tmp}/run")
        try:
            rss_setup = _status("VmRSS")
            trainer.train_step()
            trainer.step += 1
            rss_before = _status("VmRSS")
            ok = reset_peak()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
                trainer.step += 1
            seconds = (time.perf_counter() - t0) / steps
            peak = _status("VmHWM")
            student = trainer.student
            n_params = sum(p.numel() for p in student.parameters())
            n_train = sum(p.numel() for p in student.parameters() if p.requires_grad)
            out = {
                "backbone": trainer.cfg.backbone.name,
                "lora": trainer.cfg.student.lora is not None,
                "denoiser_params": n_params,
                "trainable_params": n_train,
                "batch_size": trainer.cfg.train.batch_size,
                "student_steps": trainer.cfg.student.steps,
                "teacher_steps": trainer.cfg.teacher.steps,
                "rss_after_setup_mb": round(rss_setup / MB, 1),
                "rss_before_steps_mb": round(rss_before / MB, 1),
                "peak_step_mb": round(peak / MB, 1),
                "step_increment_mb": round((peak - rss_before) / MB, 1),
                "peak_is_per_step": ok,
                "step_s": round(seconds, 4),
            }
        finally:
            trainer.cleanup()
    return out


def _storage_bytes(tensors, seen: set[int]) -> int:
    import torch

    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        s = t.untyped_storage()
        if s.data_ptr() in seen:
            continue
        seen.add(s.data_ptr())
        total += s.nbytes()
    return total


def _walk(obj, depth: int = 3):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 0 and isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v, depth - 1)
    elif depth > 0 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v, depth - 1)


def child_zero(config: str, overrides: list[str], steps: int, report: str) -> None:
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(config, overrides, f"{tmp}/run")
        engine, opt = trainer.engine, trainer.optimizer
        seen: set[int] = set()
        params = [getattr(p, "ds_tensor", p) for p in trainer.student.parameters()]
        param_bytes = _storage_bytes(params, seen)
        # ZeRO-3 partitions the teacher too (a second, optimizer-less engine): count this rank's shards
        teacher_bytes = _storage_bytes([getattr(p, "ds_tensor", p) for p in trainer.teacher.module.parameters()], set())
        grads_seen: dict[str, int] = {}

        # gradients: measured right after the backward of each step, before the optimizer step
        original_step = engine.step

        def step_with_probe(*a, **k):
            g: set[int] = set(seen)
            grads = [p.grad for p in trainer.student.parameters() if p.grad is not None]
            grads += list(_walk(getattr(opt, "averaged_gradients", None)))
            buf = getattr(opt, "grad_partitions_flat_buffer", None)
            grads += [buf] if buf is not None else []
            grads_seen["bytes"] = max(grads_seen.get("bytes", 0), _storage_bytes(grads, g))
            return original_step(*a, **k)

        engine.step = step_with_probe
        try:
            trainer.train_step()
            trainer.step += 1
            reset_peak()
            for _ in range(steps):
                trainer.train_step()
                trainer.step += 1
            inner = getattr(opt, "optimizer", opt)
            state = [t for s in inner.state.values() for t in _walk(s)]
            masters = [p for g in inner.param_groups for p in g["params"]]
            opt_seen = set(seen)  # stage 0: Adam's params are the model's own (already counted)
            state_bytes = _storage_bytes(state, set())
            master_bytes = _storage_bytes(masters, opt_seen)
            rank = dist.get_rank()
            row = {
                "rank": rank,
                "zero_stage": trainer.zero_stage,
                "param_bytes": param_bytes,
                "grad_bytes": grads_seen.get("bytes", 0),
                "optimizer_state_bytes": state_bytes,
                "fp32_master_bytes": master_bytes,
                "teacher_bytes": teacher_bytes,
                "peak_rss_bytes": _status("VmHWM"),
            }
            row["param_grad_optimizer_bytes"] = (row["param_bytes"] + row["grad_bytes"] + row["optimizer_state_bytes"]
                                                 + row["fp32_master_bytes"])
            Path(report).mkdir(parents=True, exist_ok=True)
            (Path(report) / f"rank{rank}.json").write_text(json.dumps(row))
        finally:
            engine.step = original_step
            trainer.cleanup()


def child_host(config: str, overrides: list[str], report: str) -> None:
    """ZeRO-3 host memory of one rank: setup, steady state, an evaluation's base-weights swap, a resume."""
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(config, overrides + ["eval.at_end=true", "train.checkpoint_every=0"], f"{tmp}/run")
        try:
            setup_peak, after_setup = _status("VmHWM"), _status("VmRSS")
            held = trainer.base_state
            # the base weights the run holds for its report: tensors in memory (a dict), or a file read on use
            base_held = sum(t.numel() * t.element_size() for t in held.values()) if isinstance(held, dict) else 0
            full = sum(p.ds_numel * p.element_size() if hasattr(p, "ds_numel") else p.numel() * p.element_size()
                       for p in trainer.student.parameters() if p.requires_grad)
            trainer.train_step()
            trainer.step += 1
            from rats_core.evaluation.in_training import swapped_weights

            reset_peak()
            before = _status("VmRSS")
            with swapped_weights(trainer, trainer.base_state):
                pass
            swap_rise = _status("VmHWM") - before
            folder = trainer.save_checkpoint()
            reset_peak()
            before = _status("VmRSS")
            trainer.load_checkpoint(folder)
            resume_rise = _status("VmHWM") - before
            rank = dist.get_rank()
            row = {"rank": rank, "zero_stage": trainer.zero_stage, "full_trainable_mb": round(full / MB, 1),
                   "setup_peak_rss_mb": round(setup_peak / MB, 1), "rss_after_setup_mb": round(after_setup / MB, 1),
                   "base_weights_held_mb": round(base_held / MB, 1),
                   "eval_swap_peak_rise_mb": round(swap_rise / MB, 1), "resume_peak_rise_mb": round(resume_rise / MB, 1)}
            Path(report).mkdir(parents=True, exist_ok=True)
            (Path(report) / f"rank{rank}.json").write_text(json.dumps(row))
        finally:
            trainer.cleanup()


# ----------------------------------------------------------------------------- driver


def run_child(args: list[str], env: dict, timeout: float, torchrun: bool = False) -> subprocess.CompletedProcess:
    script = str(Path(__file__).resolve())
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    else:
        cmd = [sys.executable, script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="toy,digits,sd15,pixart,flux", help="comma-separated; empty: none")
    ap.add_argument("--zero", default="0,2,3", help="ZeRO stages for the 2-rank runs; empty: none")
    ap.add_argument("--width", type=int, default=128, help="first UNet width of the ZeRO model (digits: 32)")
    ap.add_argument("--steps", type=int, default=2, help="measured steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the child processes")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--child-step", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    ap.add_argument("--child-zero", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    ap.add_argument("--host", action="store_true", help="only ZeRO-3's host memory per rank (see above)")
    ap.add_argument("--child-host", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_host:
        report, config, *overrides = args.child_host
        child_host(config, overrides, report)
        return 0
    if args.child_step:
        print("RESULT " + json.dumps(child_step(args.child_step[0], args.child_step[1:], args.steps)))
        return 0
    if args.child_zero:
        report, config, *overrides = args.child_zero
        child_zero(config, overrides, args.steps, report)
        return 0

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["OMP_NUM_THREADS"] = str(args.threads)
    out: dict = {"benchmark": "memory", "steps": args.steps, "backbones": {}, "zero": {}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        names = [n.strip() for n in args.backbones.split(",") if n.strip()]
        for name, run in backbone_runs(names, tmp).items():
            if isinstance(run, str):
                out["backbones"][name] = {"skipped": run}
                progress(f"{name}: {run}")
                continue
            config, overrides = run
            progress(f"{name}: peak RSS of a training step")
            proc = run_child(["--steps", str(args.steps), "--child-step", str(config), *overrides], env, args.timeout)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                ok = False
                out["backbones"][name] = {"error": proc.stderr[-2000:]}
                progress(proc.stderr[-3000:])
                continue
            out["backbones"][name] = json.loads(line[len("RESULT "):])

        if args.host:
            folder = tmp / "wide_digits"
            n = build_wide_digits(folder, args.width)
            progress("ZeRO-3 host memory: 2 ranks (torchrun)")
            report = tmp / "host"
            overrides = zero_overrides(folder, 3, tmp / "host_run")
            proc = run_child(["--child-host", str(report), str(TOY), *overrides], env, args.timeout, torchrun=True)
            rows = [json.loads(p.read_text()) for p in sorted(report.glob("rank*.json"))]
            if proc.returncode != 0 or len(rows) != 2:
                ok = False
                out["zero3_host"] = {"error": proc.stderr[-2000:]}
                progress(proc.stderr[-3000:])
            else:
                out["zero3_host"] = {"unet_params": n, "channels": [args.width, 2 * args.width, 2 * args.width],
                                     "ranks": rows}
        stages = [int(s) for s in args.zero.split(",") if s.strip()] if not args.host else []
        if stages:
            folder = tmp / "wide_digits"
            n = build_wide_digits(folder, args.width)
            out["zero"]["model"] = {"architecture": "digits UNet", "channels": [args.width, 2 * args.width,
                                                                              2 * args.width],
                                    "unet_params": n, "ranks": 2, "precision": "fp32"}
            for stage in stages:
                progress(f"ZeRO-{stage}: 2 ranks (torchrun)")
                report = tmp / f"zero{stage}"
                overrides = zero_overrides(folder, stage, tmp / f"zero{stage}_run")
                proc = run_child(["--steps", str(args.steps), "--child-zero", str(report), str(TOY), *overrides],
                                 env, args.timeout, torchrun=True)
                rows = [json.loads(p.read_text()) for p in sorted(report.glob("rank*.json"))]
                if proc.returncode != 0 or len(rows) != 2:
                    ok = False
                    out["zero"][f"stage{stage}"] = {"error": proc.stderr[-2000:]}
                    progress(proc.stderr[-3000:])
                    continue
                mb = {k: [round(r[k] / MB, 2) for r in rows] for k in rows[0] if k.endswith("_bytes")}
                out["zero"][f"stage{stage}"] = {k.replace("_bytes", "_mb"): v for k, v in mb.items()}
            base = out["zero"].get("stage0", {}).get("param_grad_optimizer_mb")
            for stage in stages:
                row = out["zero"].get(f"stage{stage}", {})
                if base and "param_grad_optimizer_mb" in row:
                    row["vs_stage0"] = round(max(row["param_grad_optimizer_mb"]) / max(base), 3)
    out["machine"] = {**machine(), "torch_threads": args.threads}  # the measured processes' threads
    emit(out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
