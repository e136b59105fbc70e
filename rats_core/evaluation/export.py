"""``rats sample`` and ``rats export``: use a trained student outside the training loop.

``rats export`` writes what the backbone's ``export()`` writes — for the diffusers backbones a
complete pipeline folder that plain ``DiffusionPipeline.from_pretrained(DIR)`` loads, with the
trained step count as its default — so the few-step student costs nothing extra at sampling time.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rats_core.errors import UsageError

#: written into every export folder (backbones put their own sampling settings in it; ``rats export``
#: adds a ``run`` entry saying which run and checkpoint the weights come from)
MANIFEST = "rats_export.json"

# ----------------------------------------------------------------------------- LoRA


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every peft LoRA adapter into its base layer and remove the adapter modules, in place
    (peft's ``merge_and_unload`` for a model that was injected rather than wrapped). Afterwards the
    module has the base architecture's state-dict keys and computes what the adapted model did.
    For backbones' ``export()``; call it on a copy (``copy.deepcopy``) to leave the student as it is."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return module


# ----------------------------------------------------------------------------- rats sample


def sample_noise(backbone: Any, seed: int, prompt_index: int, count: int) -> torch.Tensor:
    """Initial noise for the ``count`` images of prompt ``prompt_index``: depends only on the seed
    and the prompt's position, so a prompt's images do not change with the batch around it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + prompt_index)
    return torch.randn(backbone.latent_shape(count), generator=g)


def _slug(text: str, width: int = 48) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s[:width].rstrip("-") or "prompt"


def _parse_positive(text: str | None, what: str, default: int | None = None) -> int | None:
    if text is None:
        return default
    t = str(text).strip()
    if not t.isdigit() or int(t) < 1:
        raise UsageError(f"{what} '{text}': expected a positive whole number")
    return int(t)


def cmd_sample(args: Any) -> int:
    from rats_core.evaluation.evaluate import generate
    from rats_core.evaluation.pictures import image_suffix, save_image
    from rats_core.evaluation.runs import check_output_path, check_run_dir, load_run, swapped_state
    from rats_core.prompts import load_prompts

    if (args.prompt is None) == (args.prompts is None):
        raise UsageError('give either one prompt ("a photo of a cat") or --prompts FILE, not both or neither')
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("the prompt is empty")
    n = _parse_positive(args.n, "--n")
    scale = _parse_positive(args.scale, "--scale")
    seed_text = str(args.seed).strip()
    if not re.fullmatch(r"\d+", seed_text):
        raise UsageError(f"--seed '{args.seed}': expected a whole number ≥ 0")
    seed = int(seed_text)
    steps = _parse_positive(args.steps, "--steps")
    check_run_dir(args.run_dir)
    batch = args.prompts is not None
    out = Path(args.output).expanduser()
    if not batch and out.suffix.lower() not in (".png", ".gif"):
        raise UsageError(f"-o {out}: expected a file name ending in .png (or .gif for a video; use --prompts FILE "
                         "-o FOLDER for many)")
    out = check_output_path(out, folder=batch)
    prompts = load_prompts(args.prompts, Path.cwd(), "--prompts") if batch else [args.prompt]

    run = load_run(args.run_dir, args.checkpoint, teacher=args.model == "teacher", base=args.model == "base",
                   device=args.device)
    backbone = run.components.backbone
    steps = steps or run.trained_steps
    guidance = args.guidance_scale if args.guidance_scale is not None else run.cfg.student.guidance_scale
    network = run.teacher if args.model == "teacher" else run.student
    swap = swapped_state(run.student, run.base_state) if args.model == "base" else contextlib.nullcontext()

    written = []
    index = []
    kind = "images"
    from rats_core.training.progress import progress_bar

    with swap, progress_bar(total=len(prompts) * n, desc="sampling", unit="img", disable=len(prompts) * n < 4) as bar:
        for j, prompt in enumerate(prompts):
            noise = sample_noise(backbone, seed, j, n)
            images = generate(backbone, network, [prompt] * n, steps, noise, batch_size=max(1, run.cfg.eval.batch_size),
                              guidance_scale=guidance, device=run.device)
            kind = "videos" if images.dim() == 5 else "images"
            for i, img in enumerate(images):
                if batch:  # a video as an animated GIF
                    path = out / (f"{j:04d}-{_slug(prompt)}" + (f"-{i}" if n > 1 else "") + image_suffix(img))
                else:
                    path = out if n == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
                save_image(img, path, scale=scale)
                written.append(path)
                index.append({"file": path.name, "prompt": prompt, "seed": seed, "image": i, "steps": steps,
                              "model": args.model})
            bar.update(n)
    if batch:
        with open(out / "index.jsonl", "w", encoding="utf-8") as fh:
            for row in index:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(written)} {kind} and index.jsonl to {out} ({args.model}, {steps} steps)", file=sys.stderr)
    else:
        print(f"wrote {', '.join(str(p) for p in written)} ({args.model}, {steps} steps)", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- rats export


def export_run(
    run_dir: str | Path,
    output: str | Path,
    *,
    lora_only: bool = False,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = "cpu",
    dtype: str | None = None,
) -> Path:
    """Export a run's student with its backbone's ``export()`` into ``output``.

    Default: a complete model (a diffusers pipeline folder for the diffusers backbones; the backbone
    merges the adapter of a LoRA run into the weights it writes). ``lora_only``: only the adapter,
    for LoRA runs. The folder is written beside ``output`` and renamed into place when complete;
    ``rats_export.json`` in it gains a ``run`` entry naming the run and checkpoint. ``dtype``
    (``fp32``/``bf16``/``fp16``) is the one dtype every component of an exported pipeline is saved
    in; default: the backbone's choice (float32 for the diffusers backbones, which plain
    ``from_pretrained(folder)`` loads without a ``torch_dtype``).
    """
    from rats_core.evaluation.runs import check_output_path, check_run_dir, load_run

    run_dir = check_run_dir(run_dir)
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file, expected a folder to create")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"-o {out}: exists and is not empty; choose a new folder or pass --overwrite")
    check_output_path(out.parent, folder=True)
    run = load_run(run_dir, checkpoint, teacher=False, base=False, rewards=False, device=device)
    if lora_only and not run.is_lora:
        raise UsageError(
            f"--lora-only: {run_dir} trained the whole network (its config has no student.lora), so there is no "
            "LoRA to write; export without --lora-only for a complete model"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    backbone = run.components.backbone
    kwargs: dict[str, Any] = {"steps": run.trained_steps, "lora_only": lora_only}
    accepted = inspect.signature(backbone.export).parameters
    if "guidance_scale" in accepted:
        kwargs["guidance_scale"] = run.cfg.student.guidance_scale
    if dtype is not None:
        if "dtype" not in accepted:
            raise UsageError(f"--dtype: the '{run.cfg.backbone.name}' backbone's export takes no dtype")
        kwargs["dtype"] = dtype
    try:
        # The backbone merges a LoRA into the written weights itself (see Backbone.export).
        backbone.export(run.student, tmp, **kwargs)
        manifest_path = tmp / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        manifest["run"] = {
            "run_dir": str(run_dir),
            "checkpoint": str(run.checkpoint),
            "checkpoint_step": run.step,
            "backbone": run.cfg.backbone.name,
            "steps": run.trained_steps,
            "guidance_scale": run.cfg.student.guidance_scale,
            "content": "lora" if lora_only else ("merged lora" if run.is_lora else "full"),
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def cmd_export(args: Any) -> int:
    out = export_run(args.run_dir, args.output, lora_only=args.lora_only, checkpoint=args.checkpoint,
                     overwrite=args.overwrite, device=args.device, dtype=args.dtype)
    kind = "LoRA adapter" if args.lora_only else "model"
    print(f"exported the {kind} to {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- at the end of training


def export_trained(trainer: Any) -> Path | None:
    """What the built-in ``export`` callback runs at ``fit_end``: the student as ``rats export`` writes it,
    from the final checkpoint, with the run recorded in ``rats_export.json`` (``export/``, or
    ``export_lora/`` for a LoRA run). Rank 0 rebuilds the backbone in host memory for it, so a ZeRO-3
    student is never gathered whole on a device; the other ranks wait for it, bounded by
    ``train.save_timeout`` (a FLUX export on the CPU can outlast the collective timeout); were rank 0 to
    die meanwhile, their heartbeats notice it. ``None`` when ``train.export`` is off."""
    from rats_core.parallel.distributed import barrier
    from rats_core.training.checkpoint import latest_checkpoint

    cfg = trainer.cfg
    if not cfg.train.export:
        return None
    watch = getattr(trainer, "watch", None)
    if watch is not None:
        watch.set_phase("export")  # rank 0 may be busy (and quiet) for long
    target = None
    if trainer.dist.is_main:
        target = trainer.output_dir / ("export_lora" if cfg.student.lora is not None else "export")
        export_run(trainer.output_dir, target, lora_only=cfg.student.lora is not None,
                   checkpoint=latest_checkpoint(trainer.output_dir), overwrite=True, device="cpu")
    barrier(long=True)
    if watch is not None:
        watch.set_phase("done")
    return target
