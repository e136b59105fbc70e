"""``rats eval``: base model, teacher and a run's student compared over step counts on held-out prompts,
with the same noise per prompt, written as a report.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from rats_core.evaluation.evaluate import (
    Variant,
    build_metrics,
    fixed_noise,
    generate,
    grid_marker,
    mean_ci,
    run_metrics,
    score,
)
from rats_core.prompts import load_prompts

#: student step counts ``rats eval`` compares when neither --steps nor eval.steps is given
DEFAULT_EVAL_STEPS = (1, 2, 4, 8)


def parse_steps(text: str, what: str = "--steps") -> list[int]:
    """``"1,2,4,8"`` → ``[1, 2, 4, 8]`` (sorted, unique); UsageError on anything else."""
    from rats_core.errors import UsageError

    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise UsageError(f"{what}: empty; give step counts separated by commas, e.g. {what} 1,2,4,8")
    out = []
    for t in items:
        if not t.isdigit() or int(t) < 1:
            raise UsageError(f"{what} '{text}': '{t}' is not a positive whole number; e.g. {what} 1,2,4,8")
        out.append(int(t))
    return sorted(set(out))


@dataclass
class Comparison:
    """What :func:`compare` measured."""

    #: ``{model: {steps: {"steps", "guidance_scale", "rewards": {name: {mean, ci95, n}}, "metrics": {...}}}}``
    results: dict[str, dict[int, dict[str, Any]]]
    #: the first ``keep`` images of every variant, keyed ``"model@steps"``
    images: dict[str, Tensor]
    #: their combined rewards
    scores: dict[str, Tensor]
    #: the evaluated prompt of every image (prompts repeated ``images_per_prompt`` times)
    prompts: list[str]


def compare(
    backbone: Any,
    rewards: Any,
    variants: Sequence[Variant],
    prompts: Sequence[str],
    *,
    metrics: Sequence[tuple[str, Any]] = (),
    images_per_prompt: int = 1,
    seed: int = 1234,
    batch_size: int = 16,
    device: Any = "cpu",
    keep: int = 8,
    save_dir: Path | None = None,
    progress: bool = False,
) -> Comparison:
    """Sample every variant on the same prompts and noise and score each reward and metric.

    Works batch by batch, so memory does not grow with the number of prompts (unless metrics are
    configured: a set-level metric needs all of a variant's images at once). ``save_dir`` also
    writes every image as ``save_dir/<model>_<steps>steps/<index>.png`` with an ``index.jsonl``.
    """
    from rats_core.evaluation.pictures import image_suffix, save_image
    from rats_core.evaluation.runs import swapped_state

    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    noise = fixed_noise(backbone, len(expanded), seed)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    kept: dict[str, Tensor] = {}
    kept_scores: dict[str, Tensor] = {}
    index = []
    bar = None
    if progress:
        from rats_core.training.progress import progress_bar

        bar = progress_bar(total=len(expanded) * len(variants), desc="rats eval", unit="img")
    try:
        for v in variants:
            key = f"{v.label}@{v.steps}"
            if bar is not None:
                bar.set_description(f"{v.label}, {v.steps} steps")
            folder = None
            if save_dir is not None:
                folder = Path(save_dir) / f"{v.label}_{v.steps}steps"
                folder.mkdir(parents=True, exist_ok=True)
            parts: dict[str, list[Tensor]] = {}
            all_images: list[Tensor] = []
            first: list[Tensor] = []
            swap = swapped_state(v.denoiser, v.weights) if v.weights is not None else contextlib.nullcontext()
            with swap:
                for i in range(0, len(expanded), batch_size):
                    chunk = expanded[i : i + batch_size]
                    imgs = generate(
                        backbone, v.denoiser, chunk, v.steps, noise[i : i + len(chunk)],
                        batch_size=batch_size, guidance_scale=v.guidance_scale, device=device,
                    )
                    for k, s in score(rewards, imgs, chunk, batch_size, device).items():
                        parts.setdefault(k, []).append(s)
                    if metrics:
                        all_images.append(imgs)
                    if sum(len(x) for x in first) < keep:
                        first.append(imgs[: keep - sum(len(x) for x in first)])
                    if folder is not None:
                        for j, img in enumerate(imgs):
                            name = f"{i + j:05d}{image_suffix(img)}"  # videos animated
                            save_image(img, folder / name)
                            index.append({"file": f"{folder.name}/{name}", "model": v.label, "steps": v.steps,
                                          "prompt": chunk[j], "reward": float(parts["reward"][-1][j])})
                    if bar is not None:
                        bar.update(len(chunk))
            scores = {k: torch.cat(s) for k, s in parts.items()}
            cell = {
                "steps": v.steps,
                "guidance_scale": v.guidance_scale,
                "rewards": {k: mean_ci(s) for k, s in scores.items()},
                "metrics": run_metrics(list(metrics), torch.cat(all_images), expanded) if metrics else {},
            }
            results.setdefault(v.label, {})[v.steps] = cell
            kept[key] = torch.cat(first)
            kept_scores[key] = scores["reward"][:keep]
    finally:
        if bar is not None:
            bar.close()
    if save_dir is not None:
        import json

        with open(Path(save_dir) / "index.jsonl", "w", encoding="utf-8") as fh:
            for row in index:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Comparison(results, kept, kept_scores, expanded)


def _eval_variants(
    student: nn.Module,
    teacher: nn.Module | None,
    base_state: dict[str, Tensor] | None,
    cfg: Any,
    steps: Sequence[int],
    teacher_steps: int,
    is_run: bool,
) -> list[Variant]:
    """Base model at every K and at N; for runs also the teacher at N and the student at every K."""
    s_g, t_g = cfg.student.guidance_scale, cfg.teacher.guidance_scale
    base_steps = sorted(set(steps) | {teacher_steps})
    variants = [
        Variant("base", student, s, t_g if s == teacher_steps else s_g, weights=base_state if is_run else None)
        for s in base_steps
    ]
    if is_run:
        if teacher is not None and cfg.teacher.kind == "ema":  # a frozen teacher *is* the base model
            variants.append(Variant("teacher", teacher, teacher_steps, t_g))
        variants += [Variant("student", student, s, s_g) for s in steps]
    return variants


def _prompt_source(spec: Any) -> str:
    if spec is None or spec == "default":
        return "the built-in default set (rats_core.prompts.DEFAULT_PROMPTS)"
    if isinstance(spec, (list, tuple)):
        return "the config's eval prompts"
    return f"`{spec}`"


def _load_eval_prompts(args_prompts: str | None, cfg: Any, run_dir: Path | None) -> tuple[list[str], str]:
    from rats_core.errors import ConfigError

    if args_prompts is not None:
        return load_prompts(args_prompts, Path.cwd(), "--prompts"), _prompt_source(args_prompts)
    spec = cfg.eval.prompts if cfg.eval.prompts is not None else cfg.data.eval_prompts
    if spec is None:
        spec = cfg.data.prompts
    try:
        return load_prompts(spec, cfg.base_dir, "eval.prompts"), _prompt_source(spec)
    except ConfigError:
        # A run's config.yaml keeps relative prompt-file paths as written, relative to the original
        # YAML's folder, which the run folder does not record; try the working directory too.
        if isinstance(spec, str) and run_dir is not None and (Path.cwd() / spec).is_file():
            return load_prompts(spec, Path.cwd(), "eval.prompts"), _prompt_source(spec)
        raise


def cmd_eval(args: Any) -> int:
    import sys

    from rats_core.config import check_components, load_config
    from rats_core.errors import UsageError
    from rats_core.evaluation.report import write_eval_report
    from rats_core.evaluation.runs import check_output_path, load_run, pick_device
    from rats_core.evaluation.variants import steps_label

    target = Path(args.target).expanduser()
    if not target.exists():
        raise UsageError(f"{target}: no such run folder or config file")
    steps = parse_steps(args.steps) if args.steps is not None else None
    teacher_steps = parse_steps(args.teacher_steps, "--teacher-steps") if args.teacher_steps is not None else None
    if teacher_steps is not None and len(teacher_steps) != 1:
        raise UsageError(f"--teacher-steps '{args.teacher_steps}': give one step count, e.g. --teacher-steps 50")
    grid_prompts = parse_steps(args.grid_prompts, "--grid-prompts")
    if len(grid_prompts) != 1:
        raise UsageError(f"--grid-prompts '{args.grid_prompts}': give one number")
    is_run = target.is_dir()
    out = Path(args.output) if args.output else (target / "eval" if is_run else Path.cwd() / f"eval-{target.stem}")

    if is_run:
        run = load_run(target, args.checkpoint, overrides=args.overrides, device=args.device)
        cfg, components, student, teacher, base_state = run
        device = run.device
    else:
        if args.checkpoint:
            raise UsageError("--checkpoint needs a run folder; a config evaluates the base model")
        from rats_core.training.components import build_components

        cfg = load_config(target, args.overrides)
        check_components(cfg, source=str(target))
        device = pick_device(args.device, cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            components = build_components(cfg)
        student = components.backbone.denoiser.to(device).eval().requires_grad_(False)
        components.rewards.to(device)
        teacher, base_state, run = None, None, None

    prompts, prompt_source = _load_eval_prompts(args.prompts, cfg, target if is_run else None)
    out = check_output_path(out, folder=True)  # only once the inputs are known good: nothing left behind
    k = run.trained_steps if run is not None else cfg.student.steps
    steps = steps or cfg.eval.steps or sorted(set(DEFAULT_EVAL_STEPS) | {k})
    n = teacher_steps[0] if teacher_steps else (cfg.eval.teacher_steps or cfg.teacher.steps)
    variants = _eval_variants(student, teacher, base_state, cfg, steps, n, is_run)
    metrics = build_metrics(cfg)
    comp = compare(
        components.backbone, components.rewards, variants, prompts,
        metrics=metrics, images_per_prompt=cfg.eval.images_per_prompt, seed=cfg.eval.seed,
        batch_size=cfg.eval.batch_size, device=device, keep=grid_prompts[0] * cfg.eval.images_per_prompt,
        save_dir=out / "images" if args.save_images else None, progress=not args.no_progress,
    )
    only = cfg.rewards[0] if len(cfg.rewards) == 1 else None
    combined_is_raw = only is not None and only.weight == 1 and only.normalize == "none"
    reward_names = [r.name for r in cfg.rewards] if combined_is_raw else ["reward"] + [r.name for r in cfg.rewards]
    summary = {
        "kind": "run" if is_run else "config",
        "source": str(target.resolve()),
        "checkpoint": str(run.checkpoint) if run else None,
        "checkpoint_step": run.step if run else None,
        "backbone": cfg.backbone.name,
        "trained_steps": k,
        "steps": list(steps),
        "teacher_steps": n,
        "teacher_kind": cfg.teacher.kind,
        "prompts": {"source": prompt_source, "count": len(prompts), "images_per_prompt": cfg.eval.images_per_prompt,
                    "images": len(comp.prompts)},
        "seed": cfg.eval.seed,
        "rewards": [{"name": r.name, "weight": r.weight, "normalize": r.normalize} for r in cfg.rewards],
        # the table's and plot's columns; "reward" is the configured combination (left out when it
        # equals the only reward)
        "reward_names": reward_names,
        "metric_names": sorted({m for cells in comp.results.values() for c in cells.values() for m in c["metrics"]}),
        "results": {m: {str(s): c for s, c in sorted(cells.items())} for m, cells in comp.results.items()},
    }
    # Grid: one row per variant, one column per prompt (its first image).
    per = cfg.eval.images_per_prompt
    titles = {"base": "base model", "teacher": f"teacher ({cfg.teacher.kind})", "student": "RATS student"}
    rows = {f"{v.label}@{v.steps}": f"{titles.get(v.label, v.label)}\n{steps_label(v.steps)}" for v in variants}
    grid_images = {key: imgs[::per] for key, imgs in comp.images.items()}
    grid_scores = {key: s[::per] for key, s in comp.scores.items()}
    grid_prompts = comp.prompts[::per][: grid_prompts[0]]
    paths = write_eval_report(out, summary, grid_images, rows, grid_scores, grid_prompts,
                              mark=grid_marker(metrics))
    print(f"wrote {paths['markdown']}, {paths['json'].name}, {paths['plot'].name}, {paths['grid'].name}"
          + (", images/" if args.save_images else "") + f" in {out}", file=sys.stderr)
    return 0
