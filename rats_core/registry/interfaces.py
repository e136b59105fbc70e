"""Component interfaces (typing Protocols) that plugins implement.

Conventions shared by every component:

* **σ (sigma)** is the noise level. A backbone declares how a latent at noise level σ is formed from
  the clean latent ``x0`` and unit noise ``eps`` through :attr:`Backbone.interpolation`:

  - ``"ve"``   ``x = x0 + σ·eps`` (the Karras/Euler view of eps- and v-prediction models: SD1.5, SDXL,
    PixArt; the model input is ``x / sqrt(σ² + 1)``, which the backbone applies itself);
  - ``"flow"`` ``x = (1 − σ)·x0 + σ·eps`` with σ ∈ [0, 1] (rectified flow: FLUX, SD3).

* Every schedule is a 1-D float tensor ``[σ_0 > σ_1 > … > σ_S = 0]`` of length ``S + 1``; step ``k``
  evaluates the network at ``σ_k``.
* Everything the method compares goes through the backbone's **x0-prediction**, so eps-, v- and
  flow-parameterised networks are handled alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Reward(Protocol):
    """A differentiable preference score.

    ``images`` is ``[B, 3, H, W]`` in ``[0, 1]`` (any H, W: the reward resizes and normalises with
    differentiable torch ops). Returns ``[B]`` scores on the model's official scale; the gradient
    must reach ``images``. Rewards are frozen: the trainer never updates their parameters.

    Example::

        class Brightness:
            def __call__(self, images, prompts):
                return images.mean(dim=(1, 2, 3))

    **Video.** A video backbone decodes to frames ``[B, 3, F, H, W]``. An image reward needs nothing
    for that: rats scores it frame by frame and averages (:func:`rats_core.method.rewards.score_frames`; the
    reward's ``frames`` setting picks how many evenly spaced frames are scored). A reward that scores
    whole videos itself (temporal consistency, motion, a video model) sets the class attribute
    ``scores_video = True`` (:data:`SCORES_VIDEO_ATTRIBUTE`): it then receives ``[B, 3, F, H, W]`` as is
    and still returns ``[B]``.
    """

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


#: Optional attribute of a reward: ``scores_video = True`` declares that it takes videos
#: ``[B, 3, F, H, W]`` natively, so rats passes videos to it whole instead of frame by frame.
SCORES_VIDEO_ATTRIBUTE = "scores_video"


#: Optional attribute of a reward or metric: ``example_prompts: list[str]``, prompts it understands.
#: Domain-specific components (a digit classifier scores "a handwritten 7", not "a cat") set it so
#: the contract test, and tools that probe a component, feed it prompts it can score.
EXAMPLE_PROMPTS_ATTRIBUTE = "example_prompts"


@runtime_checkable
class Gate(Protocol):
    """Per-sample weight in ``[0, 1]`` of the trajectory-matching loss.

    Receives detached rewards ``[B]`` of the teacher's and the student's final samples. 1 means
    "imitate the teacher fully", 0 "let the reward drive". Called under ``torch.no_grad``.

    Example (the paper's gate)::

        def sigmoid_gate(r_t, r_s, tau=1.0):
            return torch.sigmoid((r_t - r_s) / tau)
    """

    def __call__(self, teacher_reward: Tensor, student_reward: Tensor) -> Tensor: ...


@runtime_checkable
class HorizonSchedule(Protocol):
    """Chooses the student steps matched to the teacher, and their weights.

    Receives the student's σ schedule (length ``K + 1``). Returns ``[(k, w_k), ...]`` with
    ``0 <= k < K`` unique and ``w_k >= 0``, at least one positive. Step ``k`` compares the student's
    and the teacher's x0-predictions at ``σ_k``.

    Example::

        def last_step(student_sigmas):
            return [(len(student_sigmas) - 2, 1.0)]
    """

    def __call__(self, student_sigmas: Tensor) -> list[tuple[int, float]]: ...


@runtime_checkable
class Backbone(Protocol):
    """A text-to-image (or text-to-video) diffusion or flow model, seen through what RATS needs.

    The backbone owns the frozen parts (text encoders, VAE, scheduler) and exposes the trainable
    network as :attr:`denoiser`. Student and teacher are two networks of the same architecture run
    through the same backbone: :meth:`predict_x0` takes the network to use as an argument.

    Example (shape of an implementation)::

        class MyBackbone:
            interpolation = "ve"
            def __init__(self, path, resolution=512): ...
            def encode_prompts(self, prompts): return {"text": ...}
            def sigmas(self, num_steps): return scheduler_sigmas(num_steps)   # ends in 0
            def latent_shape(self, batch_size): return (batch_size, 4, 64, 64)
            def predict_x0(self, denoiser, x, sigma, cond, guidance_scale=1.0): ...
            def decode(self, x0): return (vae.decode(x0 / sf).sample / 2 + 0.5).clamp(0, 1)
            def export(self, denoiser, directory, *, steps, lora_only=False): ...
    """

    #: ``"ve"`` or ``"flow"``; see the module docstring.
    interpolation: Literal["ve", "flow"]
    #: The trainable network (UNet / transformer). Trainers wrap or copy it; never replaced in place.
    denoiser: nn.Module
    #: Module names peft should adapt for LoRA training (e.g. ``["to_q", "to_k", "to_v", "to_out.0"]``).
    lora_target_modules: list[str]

    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Encode prompts once per batch; the result is passed back to :meth:`predict_x0` as ``cond``."""

    def sigmas(self, num_steps: int) -> Tensor:
        """The backbone's own σ schedule for ``num_steps`` sampler steps: ``[num_steps + 1]``, last 0."""

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        """Shape of the latent tensor for ``batch_size`` images."""

    def predict_x0(
        self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Any, guidance_scale: float = 1.0
    ) -> Tensor:
        """x0-prediction of ``denoiser`` at latent ``x`` and noise level ``sigma`` (scalar tensor).

        Must accept any σ in the schedule's range, not only the ones :meth:`sigmas` returns
        (the teacher is evaluated at the student's σ's). ``guidance_scale > 1`` applies
        classifier-free guidance where the backbone supports it.
        """

    def decode(self, x0: Tensor) -> Tensor:
        """Latents to images ``[B, 3, H, W]`` in ``[0, 1]``, differentiable. A video backbone (latents
        ``[B, C, F', h, w]``) returns frames ``[B, 3, F, H, W]``; rewards score them frame-wise unless
        they declare :data:`SCORES_VIDEO_ATTRIBUTE`."""

    def export(self, denoiser: nn.Module, directory: Path, *, steps: int, lora_only: bool = False) -> Path:
        """Write ``denoiser`` so it is usable without rats (a diffusers pipeline folder, or LoRA
        safetensors when ``lora_only``), recording ``steps`` as the default number of sampler steps.

        A ``denoiser`` carrying peft LoRA adapters is written merged when not ``lora_only``; merge a
        copy (:func:`rats_core.evaluation.export.merge_lora` on ``copy.deepcopy(denoiser)``), since training may
        go on with the live network. An optional ``guidance_scale`` keyword, where accepted, receives
        the student's guidance scale (``rats export`` passes it)."""


@runtime_checkable
class Metric(Protocol):
    """A set-level evaluation measure, never used for training.

    Receives every evaluated image ``[B, 3, H, W]`` in ``[0, 1]`` with its prompt and returns named
    floats (e.g. ``{"judge_accuracy": 0.93}``). Called under ``torch.no_grad``.

    Example::

        def brightness(images, prompts):
            return {"brightness": images.mean().item()}

    Optional: a metric that judges each image (a GenEval-style detector) may also offer
    ``marks(images, prompts) -> list[tuple[bool, str]]``: per image, right or wrong and a short note
    (e.g. ``(False, "count, shape")``). The report's sample grid then frames every image green or
    red and prints the note.

    **Video.** Videos ``[B, 3, F, H, W]`` reach a metric as images, as image rewards see them: evenly
    spaced frames of each (:func:`rats_core.evaluation.evaluate.metric_input`), unless it sets ``scores_video = True``.
    """

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]: ...


def metric_marks(metrics: Sequence[tuple[str, Any]], images: Tensor, prompts: Sequence[str]) -> list[tuple[bool, str]] | None:
    """The per-image marks of the first metric offering ``marks`` (see :class:`Metric`), checked; None
    when no configured metric marks images."""
    from rats_core.errors import PluginError

    for name, metric in metrics:
        fn = getattr(metric, "marks", None)
        if not callable(fn):
            continue
        try:
            marks = [(bool(ok), str(note)) for ok, note in fn(images, list(prompts))]
        except Exception as exc:
            raise PluginError(f"metric '{name}': marks() raised {type(exc).__name__}: {exc}") from exc
        if len(marks) != len(prompts):
            raise PluginError(f"metric '{name}': marks() returned {len(marks)} marks for {len(prompts)} images")
        return marks
    return None


def check_reward_output(name: str, scores: Any, batch_size: int) -> Tensor:
    """Validate what a reward plugin returned; raise a PluginError naming it otherwise."""
    from rats_core.errors import PluginError

    if not isinstance(scores, torch.Tensor):
        raise PluginError(f"reward '{name}' returned {type(scores).__name__}, expected a tensor of shape [{batch_size}]")
    if scores.shape != (batch_size,):
        raise PluginError(f"reward '{name}' returned shape {tuple(scores.shape)}, expected [{batch_size}]")
    if not torch.isfinite(scores).all():
        raise PluginError(f"reward '{name}' returned non-finite scores (NaN or Inf)")
    return scores
