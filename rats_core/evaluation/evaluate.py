"""Evaluation: sample models on fixed prompts and noise, score every reward and metric.

Used by the trainer (held-out curves during training, the end-of-run report) and by ``rats eval``.
Every variant is sampled from the **same noise** per prompt, so differences are the models'.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from rats_core.method.rewards import DEFAULT_REWARD_FRAMES, video_frames
from rats_core.method.rollout import rollout
from rats_core.prompts import load_prompts
from rats_core.registry.interfaces import SCORES_VIDEO_ATTRIBUTE, metric_marks
from rats_core.training import precision

if TYPE_CHECKING:  # pragma: no cover
    from rats_core.evaluation.report import Mark
    from rats_core.training.trainer import Trainer


@dataclass
class Variant:
    """A model to evaluate: a label, the network, and the number of sampler steps."""

    label: str
    denoiser: nn.Module
    steps: int
    guidance_scale: float = 1.0
    #: tensors swapped into ``denoiser`` while this variant is sampled (e.g. the base weights)
    weights: dict[str, Tensor] | None = None


def eval_prompt_list(cfg: Any) -> list[str]:
    spec = cfg.eval.prompts if cfg.eval.prompts is not None else cfg.data.eval_prompts
    if spec is None:
        spec = cfg.data.prompts
    return load_prompts(spec, cfg.base_dir, "eval.prompts")


def fixed_noise(backbone: Any, count: int, seed: int) -> Tensor:
    """One noise tensor per evaluated image, the same for every variant and every call."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(backbone.latent_shape(count), generator=g)


@torch.no_grad()
def generate(
    backbone: Any,
    denoiser: nn.Module,
    prompts: Sequence[str],
    steps: int,
    noise: Tensor,
    *,
    batch_size: int = 16,
    guidance_scale: float = 1.0,
    device: torch.device | str = "cpu",
    progress: Any = None,
) -> Tensor:
    """Images ``[n, 3, H, W]`` in [0, 1] (on CPU) for ``prompts`` sampled with ``steps`` steps (a video
    backbone's videos ``[n, 3, F, H, W]``)."""
    out = []
    sigmas = backbone.sigmas(steps).to(device)
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        cond = backbone.encode_prompts(chunk)
        r = rollout(
            backbone, denoiser, noise[i : i + len(chunk)].to(device), cond, sigmas, guidance_scale=guidance_scale, keep=()
        )
        out.append(backbone.decode(r.final).float().clamp(0, 1).cpu())
        if progress is not None:
            progress.update(len(chunk))
    return torch.cat(out)


@torch.no_grad()
def score(rewards: Any, images: Tensor, prompts: Sequence[str], batch_size: int = 16, device: Any = "cpu") -> dict[str, Tensor]:
    """Per-image scores: ``reward`` (the configured combination) and each reward by name."""
    parts: dict[str, list[Tensor]] = {}
    combined = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        r, p = rewards(images[i : i + len(chunk)].to(device), chunk)
        combined.append(r.float().cpu())
        for k, v in p.items():
            parts.setdefault(k, []).append(v.float().cpu())
    out = {"reward": torch.cat(combined)}
    out.update({k: torch.cat(v) for k, v in parts.items()})
    return out


def mean_ci(values: Tensor) -> dict[str, float]:
    """Mean and a normal-approximation 95% interval of the mean."""
    v = values.double()
    n = v.numel()
    mean = float(v.mean())
    half = float(1.96 * v.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "ci95": half, "n": n}


def build_metrics(cfg: Any) -> list[tuple[str, Any]]:
    from rats_core.registry.plugins import get_registry

    registry = get_registry()
    return [
        (m.name, registry.build("metrics", m.name, m.options, f"eval.metrics.{i}"))
        for i, m in enumerate(cfg.eval.metrics)
    ]


def metric_input(metric: Any, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, list[str]]:
    """What a metric is given: images as they are; videos ``[B, 3, F, H, W]`` as image rewards see them,
    ``DEFAULT_REWARD_FRAMES`` evenly spaced frames of each (:func:`rats_core.method.rewards.video_frames`, one
    batch of images, each with its video's prompt), unless the metric declares ``scores_video``."""
    if images.dim() == 5 and not getattr(metric, SCORES_VIDEO_ATTRIBUTE, False):
        return video_frames(images, prompts, DEFAULT_REWARD_FRAMES)
    return images, list(prompts)


def grid_marker(metrics: Sequence[tuple[str, Any]]) -> "Mark":
    """The report's ``mark(images, prompts)``: :func:`rats_core.registry.interfaces.metric_marks` of the first
    metric that marks images; for videos judged frame by frame (:func:`metric_input`), a video is right
    when every judged frame is, and its note is the first wrong frame's."""
    marker = [(name, m) for name, m in metrics if callable(getattr(m, "marks", None))][:1]

    def mark(images: Tensor, prompts: Sequence[str]) -> list[tuple[bool, str]] | None:
        if not marker:
            return None
        marks = metric_marks(marker, *metric_input(marker[0][1], images, prompts))
        if marks is None or len(marks) == len(prompts):
            return marks
        n = len(marks) // len(prompts)
        per_video = [marks[i * n : (i + 1) * n] for i in range(len(prompts))]
        return [next((m for m in frames if not m[0]), frames[0]) for frames in per_video]

    return mark


@torch.no_grad()
def run_metrics(metrics: list[tuple[str, Any]], images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Every metric's values on ``images`` (videos: see :func:`metric_input`)."""
    from rats_core.errors import PluginError

    out: dict[str, float] = {}
    for name, metric in metrics:
        try:
            values = metric(*metric_input(metric, images, prompts))
        except Exception as exc:
            raise PluginError(f"metric '{name}' raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(values, dict):
            raise PluginError(f"metric '{name}' returned {type(values).__name__}, expected a dict of floats")
        out.update({k: float(v) for k, v in values.items()})
    return out


def judge_right(metrics: Sequence[tuple[str, Any]], images: Tensor, prompts: Sequence[str]) -> list[bool] | None:
    """Per image, whether the judge metric reads it fully right, for the verdict's paired tests: the first
    metric with ``grades(images, prompts)`` (its ``all``), else with ``marks`` (its right/wrong). None when
    no metric judges images one by one, or when a video's frames are judged separately (then one video
    has several readings, and the verdict falls back to unpaired intervals)."""
    from rats_core.errors import PluginError

    for name, metric in metrics:
        grades, marks = getattr(metric, "grades", None), getattr(metric, "marks", None)
        if not callable(grades) and not callable(marks):
            continue
        imgs, texts = metric_input(metric, images, prompts)
        if len(texts) != len(prompts):
            return None
        try:
            right = [bool(g["all"]) for g in grades(imgs, texts)] if callable(grades) else \
                [bool(ok) for ok, _ in marks(imgs, texts)]
        except Exception as exc:
            raise PluginError(f"metric '{name}': per-image grades raised {type(exc).__name__}: {exc}") from exc
        if len(right) != len(prompts):
            raise PluginError(f"metric '{name}': {len(right)} per-image grades for {len(prompts)} images")
        return right
    return None


def evaluate_variants(
    backbone: Any,
    rewards: Any,
    variants: Sequence[Variant],
    prompts: Sequence[str],
    *,
    metrics: list[tuple[str, Any]] = (),
    images_per_prompt: int = 1,
    seed: int = 1234,
    batch_size: int = 16,
    device: Any = "cpu",
    progress: bool = False,
    per_image: dict[str, Tensor] | None = None,
    judged: dict[str, list[bool]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor], list[str]]:
    """Sample and score every variant on the same prompts and noise.

    ``per_image``, when given, receives each variant's per-image combined reward; ``judged`` whether
    the judge metric reads each image right (:func:`judge_right`; variants it cannot judge image by
    image are left out), both in prompt order, for the verdict's paired tests.

    Returns ``(results, images, expanded_prompts)``: ``results[label]`` holds ``steps``, each reward's
    mean/ci95 (``reward`` is the configured combination) and every metric; ``images[label]`` the
    samples in prompt order.
    """
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    noise = fixed_noise(backbone, len(expanded), seed)
    results: dict[str, dict[str, Any]] = {}
    images: dict[str, Tensor] = {}
    bar = None
    if progress:
        from rats_core.training.progress import progress_bar

        bar = progress_bar(total=len(expanded) * len(variants), desc="evaluating", unit="img")
    try:
        for v in variants:
            from rats_core.evaluation.runs import swapped_state

            swap = swapped_state(v.denoiser, v.weights) if v.weights is not None else contextlib.nullcontext()
            with swap:
                imgs = generate(
                    backbone, v.denoiser, expanded, v.steps, noise,
                    batch_size=batch_size, guidance_scale=v.guidance_scale, device=device, progress=bar,
                )
            scores = score(rewards, imgs, expanded, batch_size, device)
            entry: dict[str, Any] = {"steps": v.steps}
            for k, s in scores.items():
                stats = mean_ci(s)
                entry[k] = stats["mean"]
                entry[f"{k}_ci95"] = stats["ci95"]
            entry.update(run_metrics(list(metrics), imgs, expanded))
            entry["n"] = len(expanded)
            results[v.label] = entry
            if per_image is not None:
                per_image[v.label] = scores["reward"]
            if judged is not None and metrics:
                right = judge_right(list(metrics), imgs, expanded)
                if right is not None:
                    judged[v.label] = right
            images[v.label] = imgs
    finally:
        if bar is not None:
            bar.close()
    return results, images, expanded


# ----------------------------------------------------------------------------- during training


@contextlib.contextmanager
def swapped_weights(trainer: "Trainer", state: dict[str, Tensor]) -> Iterator[None]:
    """Temporarily load ``state`` into the student's trainable parameters (e.g. the base weights).
    Under ZeRO-3 every rank takes part and the tensors go through a few at a time (rats_core/parallel/zero.py),
    never the whole model gathered at once."""
    from rats_core.parallel import zero
    params = dict(trainer.student.named_parameters())
    names = [n for n in trainer.trainable_names if n in state]
    if trainer.zero_stage == 3:
        saved = zero.gathered_state(trainer.student, names, rank0_only=False)
        zero.load_partitioned(trainer.student, state, names)
        try:
            yield
        finally:
            zero.load_partitioned(trainer.student, saved, names)
        return
    saved = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():
        for n in names:
            params[n].copy_(state[n].to(params[n].dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])


def training_eval(trainer: "Trainer") -> dict[str, float]:
    """Held-out rewards of the student (K steps) and the current teacher (N steps) during training."""
    cfg = trainer.cfg
    prompts = eval_prompt_list(cfg)
    was_training = trainer.student.training
    trainer.student.eval()
    try:
        variants = [Variant("student", trainer.student, cfg.student.steps, cfg.student.guidance_scale)]
        cache = getattr(trainer, "_frozen_teacher_eval", None)
        if cache is None:
            variants.append(Variant("teacher", trainer.teacher.module, cfg.teacher.steps, cfg.teacher.guidance_scale))
        with precision.autocast(trainer.dist.device, precision.eval_precision(cfg)):
            results, _, _ = evaluate_variants(
                trainer.backbone, trainer.rewards, variants, prompts,
                images_per_prompt=cfg.eval.images_per_prompt, seed=cfg.eval.seed,
                batch_size=cfg.eval.batch_size, device=trainer.dist.device,
            )
    finally:
        trainer.student.train(was_training)
    if cache is None:
        cache = results["teacher"]
        if trainer.teacher.kind == "frozen":  # never changes: sample it once
            trainer._frozen_teacher_eval = cache
    return {
        "eval/reward_student": results["student"]["reward"],
        "eval/reward_teacher": cache["reward"],
    }


def end_of_run_report(trainer: "Trainer") -> dict[str, Any] | None:
    """Held-out table (base at K and N steps, teacher at N, student at K), grids, curves, report.json."""
    from rats_core.evaluation.report import write_report

    cfg = trainer.cfg
    prompts = eval_prompt_list(cfg)
    metrics = build_metrics(cfg)
    k, n = cfg.student.steps, cfg.eval.teacher_steps or cfg.teacher.steps
    student_steps = cfg.eval.steps or [k]
    base_state = getattr(trainer, "base_state", None)
    trainer.student.eval()
    variants: list[Variant] = []
    results: dict[str, Any] = {}
    images: dict[str, Tensor] = {}
    expanded: list[str] = []
    per_image: dict[str, Tensor] = {}
    judged: dict[str, list[bool]] = {}
    common = dict(
        metrics=metrics, images_per_prompt=cfg.eval.images_per_prompt, seed=cfg.eval.seed,
        batch_size=cfg.eval.batch_size, device=trainer.dist.device, progress=trainer.dist.is_main,
        per_image=per_image, judged=judged,
    )
    # the training step's precision by default (eval.precision): a bf16-trained student judged as it runs
    in_precision = precision.autocast(trainer.dist.device, precision.eval_precision(cfg))
    if base_state is not None:
        with swapped_weights(trainer, base_state), in_precision:
            base_variants = [Variant("base", trainer.student, k, cfg.student.guidance_scale)]
            # the base model at every other evaluated student step count too (base_1, base_4, ...)
            base_variants += [Variant(f"base_{s}", trainer.student, s, cfg.student.guidance_scale)
                              for s in student_steps if s not in (k, n)]
            base_variants.append(Variant("base_teacher_steps", trainer.student, n, cfg.teacher.guidance_scale))
            r, im, expanded = evaluate_variants(trainer.backbone, trainer.rewards, base_variants, prompts, **common)
            results.update(r)
            images.update(im)
    variants.append(Variant("teacher", trainer.teacher.module, n, cfg.teacher.guidance_scale))
    for s in student_steps:
        variants.append(Variant("student" if s == k else f"student_{s}", trainer.student, s, cfg.student.guidance_scale))
    with precision.autocast(trainer.dist.device, precision.eval_precision(cfg)):
        r, im, expanded = evaluate_variants(trainer.backbone, trainer.rewards, variants, prompts, **common)
    results.update(r)
    images.update(im)
    if not trainer.dist.is_main:
        return None
    from rats_core.evaluation.history import run_history

    # the whole run's records: after a resume, trainer.history holds only this process's steps
    history = run_history(trainer.output_dir, trainer.history, last_step=trainer.step)
    return write_report(trainer.output_dir, cfg, results, images, expanded, history, scores=per_image,
                        mark=grid_marker(metrics), judged=judged, ranks=trainer.dist.world_size,
                        resumed_at=trainer.resumed_at)


def load_history(run_dir: Path) -> list[dict[str, float]]:
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- rats eval

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
    from rats_core.evaluation.variants import steps_label
    from rats_core.evaluation.runs import check_output_path, load_run, pick_device

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
