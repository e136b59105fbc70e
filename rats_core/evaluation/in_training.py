"""Evaluation inside a run: the held-out curves every ``eval.every`` steps and the end-of-run report, sampled
with the EMA/student weights swapped in place (the built-in ``eval`` and ``report`` callbacks call these).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import Tensor

from rats_core.evaluation.evaluate import Variant, build_metrics, eval_prompt_list, evaluate_variants, grid_marker
from rats_core.training import precision

if TYPE_CHECKING:  # pragma: no cover
    from rats_core.training.trainer import Trainer



@contextlib.contextmanager
def swapped_weights(trainer: "Trainer", state: dict[str, Tensor]) -> Iterator[None]:
    """Temporarily load ``state`` into the student's trainable parameters (e.g. the base weights).
    Under ZeRO-3 each rank keeps only its own shards to put back and writes its shard of each new tensor
    (rats_core/parallel/zero.py): ``state`` may be a file read tensor by tensor (the base weights are), so no
    rank ever holds the whole model."""
    from rats_core.parallel import zero
    params = dict(trainer.student.named_parameters())
    names = [n for n in trainer.trainable_names if n in state]
    if trainer.zero_stage == 3:
        saved = zero.local_state(trainer.student, names)  # this rank's shards: 1/N of the model, no gather
        zero.load_partitioned(trainer.student, state, names)
        try:
            yield
        finally:
            zero.restore_local(trainer.student, saved)
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
