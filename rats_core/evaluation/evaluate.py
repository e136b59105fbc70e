"""Evaluation: sample models on fixed prompts and noise, score every reward and metric.

Used during training (``in_training``), by ``rats eval`` (``compare``) and by the benchmarks. Every variant is
sampled from the **same noise** per prompt, so differences are the models'.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from rats_core.method.rewards import DEFAULT_REWARD_FRAMES, video_frames
from rats_core.method.rollout import rollout
from rats_core.prompts import load_prompts
from rats_core.registry.interfaces import SCORES_VIDEO_ATTRIBUTE, metric_marks

if TYPE_CHECKING:  # pragma: no cover
    from rats_core.evaluation.report import Mark


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
