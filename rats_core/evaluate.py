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

from .prompts import load_prompts
from .rollout import rollout

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


@dataclass
class Variant:
    """A model to evaluate: a label, the network, and the number of sampler steps."""

    label: str
    denoiser: nn.Module
    steps: int
    guidance_scale: float = 1.0


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
    """Images ``[n, 3, H, W]`` in [0, 1] (on CPU) for ``prompts`` sampled with ``steps`` steps."""
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
    from .plugins import get_registry

    registry = get_registry()
    return [
        (m.name, registry.build("metrics", m.name, m.options, f"eval.metrics.{i}"))
        for i, m in enumerate(cfg.eval.metrics)
    ]


@torch.no_grad()
def run_metrics(metrics: list[tuple[str, Any]], images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    from .errors import PluginError

    out: dict[str, float] = {}
    for name, metric in metrics:
        try:
            values = metric(images, list(prompts))
        except Exception as exc:
            raise PluginError(f"metric '{name}' raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(values, dict):
            raise PluginError(f"metric '{name}' returned {type(values).__name__}, expected a dict of floats")
        out.update({k: float(v) for k, v in values.items()})
    return out


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
) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor], list[str]]:
    """Sample and score every variant on the same prompts and noise.

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
        from tqdm.auto import tqdm

        bar = tqdm(total=len(expanded) * len(variants), desc="evaluating", unit="img", dynamic_ncols=True)
    try:
        for v in variants:
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
            images[v.label] = imgs
    finally:
        if bar is not None:
            bar.close()
    return results, images, expanded


# ----------------------------------------------------------------------------- during training


@contextlib.contextmanager
def swapped_weights(trainer: "Trainer", state: dict[str, Tensor]) -> Iterator[None]:
    """Temporarily load ``state`` into the student's trainable parameters (e.g. the base weights)."""
    params = dict(trainer.student.named_parameters())
    names = [n for n in trainer.trainable_names if n in state]
    gather = contextlib.nullcontext()
    if trainer.zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([params[n] for n in names], modifier_rank=0)
    with gather:
        saved = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                params[n].copy_(state[n].to(params[n].dtype))
    try:
        yield
    finally:
        gather = contextlib.nullcontext()
        if trainer.zero_stage == 3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([params[n] for n in names], modifier_rank=0)
        with gather, torch.no_grad():
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
    from .report import write_report

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
    common = dict(
        metrics=metrics, images_per_prompt=cfg.eval.images_per_prompt, seed=cfg.eval.seed,
        batch_size=cfg.eval.batch_size, device=trainer.dist.device, progress=trainer.dist.is_main,
    )
    if base_state is not None:
        with swapped_weights(trainer, base_state):
            base_variants = [Variant("base", trainer.student, k, cfg.student.guidance_scale)]
            base_variants.append(Variant("base_teacher_steps", trainer.student, n, cfg.teacher.guidance_scale))
            r, im, expanded = evaluate_variants(trainer.backbone, trainer.rewards, base_variants, prompts, **common)
            results.update(r)
            images.update(im)
    variants.append(Variant("teacher", trainer.teacher.module, n, cfg.teacher.guidance_scale))
    for s in student_steps:
        variants.append(Variant("student" if s == k else f"student_{s}", trainer.student, s, cfg.student.guidance_scale))
    r, im, expanded = evaluate_variants(trainer.backbone, trainer.rewards, variants, prompts, **common)
    results.update(r)
    images.update(im)
    if not trainer.dist.is_main:
        return None
    return write_report(trainer.output_dir, cfg, results, images, expanded, trainer.history)


def load_history(run_dir: Path) -> list[dict[str, float]]:
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
