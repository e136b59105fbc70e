"""The RATS objective for one batch: rollouts, rewards, gate, shape loss.

``L = mean_i( −β·R_S(i) + α·g(i)·L_shape(i) )`` with ``g = gate(R_T, R_S)`` computed without gradient.
The same object serves the trainer, the benchmarks and anyone scripting RATS by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from rats_core.errors import PluginError
from rats_core.method.rewards import RewardSet
from rats_core.method.rollout import rollout
from rats_core.method.shaping import shape_loss, validate_horizons
from rats_core.method.sigmas import align_schedules
from rats_core.registry.interfaces import Backbone
from rats_core.timing import PhaseTimer

#: what the student is matched against at each horizon (``teacher.target``)
TEACHER_TARGETS = ("prediction", "sample", "continuation")


@dataclass
class ObjectiveSettings:
    student_steps: int = 4
    teacher_steps: int = 50
    alignment: str = "superset"
    #: ``prediction``: the teacher's x0-prediction at each student σ; ``sample``: its final sample;
    #: ``continuation``: its sample continued from the student's own state at each horizon
    teacher_target: str = "prediction"
    grad_steps: int = 1
    alpha: float = 1.0
    beta: float = 1.0
    cosine_weight: float = 1.0
    l2_weight: float = 1.0
    student_guidance: float = 1.0
    teacher_guidance: float = 1.0
    checkpointing: bool = False
    teacher_inference_mode: bool = True
    #: matched horizons before the last ``grad_steps`` get their own one-step gradient (METHOD.md §7)
    horizon_gradients: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> "ObjectiveSettings":
        return cls(
            student_steps=cfg.student.steps,
            teacher_steps=cfg.teacher.steps,
            alignment=cfg.teacher.alignment,
            teacher_target=cfg.teacher.target,
            grad_steps=cfg.student.grad_steps,
            alpha=cfg.loss.alpha,
            beta=cfg.loss.beta,
            cosine_weight=cfg.loss.cosine_weight,
            l2_weight=cfg.loss.l2_weight,
            student_guidance=cfg.student.guidance_scale,
            teacher_guidance=cfg.teacher.guidance_scale,
            checkpointing=cfg.student.gradient_checkpointing,
            horizon_gradients=cfg.student.horizon_gradients,
        )


@dataclass
class TeacherOutput:
    x0: dict[int, Tensor]  # keyed by *student* step
    final: Tensor
    #: the decoded final sample; ``None`` in outputs kept by a TeacherCache (the loss does not use it)
    images: Tensor | None
    reward: Tensor
    parts: dict[str, Tensor]


class RatsObjective:
    """Computes the RATS loss and its logged terms for a batch of prompts and noise."""

    def __init__(
        self,
        backbone: Backbone,
        rewards: RewardSet,
        gate: Callable[[Tensor, Tensor], Tensor],
        horizons: Callable[[Tensor], list[tuple[int, float]]],
        settings: ObjectiveSettings,
        *,
        gate_name: str = "gate",
        horizons_name: str = "horizons",
    ):
        self.backbone = backbone
        self.rewards = rewards
        self.gate = gate
        self.gate_name = gate_name
        self.s = settings
        if settings.teacher_target not in TEACHER_TARGETS:
            raise ValueError(f"teacher target must be one of {TEACHER_TARGETS}, got {settings.teacher_target!r}")
        self.schedules = align_schedules(
            backbone.sigmas(settings.student_steps), backbone.sigmas(settings.teacher_steps), settings.alignment
        )
        try:
            raw = horizons(self.schedules.student)
        except Exception as exc:
            raise PluginError(f"horizon schedule '{horizons_name}' raised {type(exc).__name__}: {exc}") from exc
        self.horizons = validate_horizons(raw, settings.student_steps, horizons_name)
        self.horizon_steps = [k for k, w in self.horizons if w > 0]
        #: set to an enabled PhaseTimer to time the phases of each call
        self.timer = PhaseTimer(False)

    # -- pieces, public so benchmarks and tests can time and check them one by one

    def teacher_rollout(self, teacher: nn.Module, noise: Tensor, cond: Any, prompts: Sequence[str]) -> TeacherOutput:
        """The teacher's N-step rollout from the same noise, its x0 at the student's σ's and its reward.

        ``x0`` holds each horizon's target: the teacher's x0-prediction there (``teacher_target``
        ``prediction``) or its final sample (``sample``; and ``continuation``, whose later horizons are
        replaced by :meth:`teacher_continuations` once the student's states are known).

        Runs under ``torch.inference_mode`` (no autograd bookkeeping at all) unless
        ``teacher_inference_mode`` is off; the few tensors the loss needs are cloned out of it.
        """
        ctx = torch.inference_mode() if self.s.teacher_inference_mode else torch.no_grad()
        with ctx:
            out = self._teacher_rollout(teacher, noise, cond, prompts)
        if self.s.teacher_inference_mode:
            out = TeacherOutput(
                {k: v.clone() for k, v in out.x0.items()},
                out.final.clone(),
                out.images.clone(),
                out.reward.clone(),
                {k: v.clone() for k, v in out.parts.items()},
            )
        return out

    def _teacher_rollout(self, teacher: nn.Module, noise: Tensor, cond: Any, prompts: Sequence[str]) -> TeacherOutput:
        sched = self.schedules
        # Not a teacher-index -> student-step dict: with `nearest` alignment two student steps can
        # share one teacher step, and each still needs its teacher prediction.
        by_sample = self.s.teacher_target != "prediction"  # a continuation from σ_0 is the sample itself
        keep = [] if by_sample else sorted({sched.teacher_index[k] for k in self.horizon_steps})
        r = rollout(
            self.backbone,
            teacher,
            noise,
            cond,
            sched.teacher.to(noise.device),
            guidance_scale=self.s.teacher_guidance,
            keep=keep,
        )
        images = self.backbone.decode(r.final)
        reward, parts = self.rewards(images, prompts)
        if by_sample:  # every horizon is pulled towards where the teacher's trajectory ends
            x0 = {k: r.final for k in self.horizon_steps}
        else:
            x0 = {k: r.x0[sched.teacher_index[k]] for k in self.horizon_steps}
        return TeacherOutput(x0, r.final, images, reward, parts)

    def teacher_continuations(self, teacher: nn.Module, states: dict[int, Tensor], cond: Any,
                              teacher_out: TeacherOutput) -> dict[int, Tensor]:
        """``teacher.target: continuation``: the teacher's sample continued from the student's own
        (detached) state at each horizon, along the teacher schedule's tail from that σ; the first
        student step starts from the shared noise, where the continuation is the teacher's sample."""
        sched = self.schedules
        out = {}
        ctx = torch.inference_mode() if self.s.teacher_inference_mode else torch.no_grad()
        for k in self.horizon_steps:
            if k == 0:
                out[k] = teacher_out.final
                continue
            # the teacher's schedule from the student's σ_k on (exact under `superset`; under `nearest`
            # the continuation still starts at σ_k, where the student's state is)
            tail = sched.teacher[sched.teacher_index[k]:].clone()
            tail[0] = sched.student[k]
            with ctx:
                r = rollout(self.backbone, teacher, None, cond, tail.to(states[k].device),
                            guidance_scale=self.s.teacher_guidance, keep=(), start=states[k])
            out[k] = r.final.clone() if self.s.teacher_inference_mode else r.final
        return out

    def student_rollout(self, student: nn.Module, noise: Tensor, cond: Any):
        return rollout(
            self.backbone,
            student,
            noise,
            cond,
            self.schedules.student.to(noise.device),
            guidance_scale=self.s.student_guidance,
            grad_steps=self.s.grad_steps,
            local_grad_steps=self.horizon_steps if self.s.alpha > 0 and self.s.horizon_gradients else (),
            keep=self.horizon_steps,
            checkpointing=self.s.checkpointing,
            keep_states=self.horizon_steps if self.s.teacher_target == "continuation" else (),
        )

    def gate_values(self, teacher_reward: Tensor, student_reward: Tensor) -> Tensor:
        with torch.no_grad():
            try:
                g = self.gate(teacher_reward.detach(), student_reward.detach())
            except Exception as exc:
                raise PluginError(f"gate '{self.gate_name}' raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(g, Tensor) or g.shape != teacher_reward.shape:
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise PluginError(f"gate '{self.gate_name}' returned {shape}, expected shape {tuple(teacher_reward.shape)}")
        # One device-to-host read instead of three (NaN fails both comparisons, so it is caught too).
        if not bool(((g >= 0) & (g <= 1)).all()):
            raise PluginError(f"gate '{self.gate_name}' returned values outside [0, 1]: {g.tolist()}")
        return g.detach()

    def __call__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        prompts: Sequence[str],
        noise: Tensor,
        cond: Any = None,
        teacher_out: TeacherOutput | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss (scalar, differentiable in the student) and detached per-batch metrics."""
        prompts = list(prompts)
        timer = self.timer
        if cond is None:
            with timer.phase("encode_prompts"), torch.no_grad():
                cond = self.backbone.encode_prompts(prompts)
        with timer.phase("teacher_rollout"):
            t = teacher_out if teacher_out is not None else self.teacher_rollout(teacher, noise, cond, prompts)
        with timer.phase("student_rollout"):
            s = self.student_rollout(student, noise, cond)
        teacher_x0 = t.x0
        if self.s.teacher_target == "continuation" and self.s.alpha > 0:
            with timer.phase("teacher_continuation"):
                teacher_x0 = self.teacher_continuations(teacher, s.states, cond, t)
        with timer.phase("student_reward"):
            images = self.backbone.decode(s.final)
            r_s, parts_s = self.rewards(images, prompts)
        with timer.phase("loss"):
            g = self.gate_values(t.reward, r_s)
            if self.s.alpha > 0:
                l_shape = shape_loss(s.x0, teacher_x0, self.horizons, self.s.cosine_weight, self.s.l2_weight)
            else:
                l_shape = torch.zeros_like(r_s)
            per_sample = -self.s.beta * r_s + self.s.alpha * g * l_shape
            loss = per_sample.mean()
        metrics: dict[str, Tensor] = {
            "loss": loss.detach(),
            "reward_student": r_s.detach().mean(),
            "reward_teacher": t.reward.detach().mean(),
            "gate_mean": g.mean(),
            # the gate's spread: a temperature far above the reward gaps keeps every g near 0.5
            "gate_low": (g < 0.1).float().mean(),
            "gate_high": (g > 0.9).float().mean(),
            "reward_gap": (t.reward.detach() - r_s.detach()).abs().mean(),
            "shape_loss": l_shape.detach().mean(),
            "student_wins": (r_s.detach() > t.reward).float().mean(),
        }
        for name, v in parts_s.items():
            metrics[f"reward_student/{name}"] = v.detach().float().mean()
        for name, v in t.parts.items():
            metrics[f"reward_teacher/{name}"] = v.detach().float().mean()
        return loss, metrics
