"""The shell every diffusers backbone shares: loading its parts from the options, the prompt-encoding
entry point, the cached empty prompt for classifier-free guidance, latent shapes, decoding and export."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .devices import DTYPES, resolve_device
from .export import export_backbone
from .options import DiffusersOptions
from .sampling import guidance_batch, per_sample, to_device
from .text import load_text_encoder
from .vae import configure_vae, decode_latents, load_vae
from .weights import Part, Source, load_part, locate_weights


def check_resolution(resolution: int, multiple: int, backbone: str) -> int:
    if resolution <= 0 or resolution % multiple:
        raise ValueError(f"{backbone}: resolution must be a positive multiple of {multiple}, got {resolution}")
    return resolution


class NetworkInputs(NamedTuple):
    """One network call's inputs, per sample (doubled as ``[empty prompt ; prompt]`` when ``guided``)."""

    sigma: Tensor  # [B] σ's (not doubled: x0 is computed on the B samples)
    x: Tensor  # the network input
    t: Tensor  # the network's timesteps
    cond: dict[str, Any]
    guided: bool


class DiffusersBackbone:
    """What every diffusers backbone does the same way.

    Subclasses call :meth:`_locate` first in ``__init__``, load their parts with the ``_load_*`` helpers,
    set the attributes below and implement ``_encode``, ``predict_x0`` and ``_export_pipeline`` (plus
    ``_save_lora`` where the diffusers pipeline has a LoRA loader). σ's, timesteps and the exported
    scheduler come from ``schedule`` (the model's own scheduler behind ``sigmas(n)``, ``timestep(σ)`` and
    ``export_scheduler()``), unless a subclass overrides them.
    """

    name: str
    pipeline_class: str
    interpolation: Literal["ve", "flow"]
    options: DiffusersOptions
    schedule: Any
    denoiser: nn.Module
    vae: nn.Module
    lora_target_modules: list[str]
    source: Source
    device: torch.device
    resolution: int
    latent_channels: int
    vae_factor: int
    _negative: dict[str, Any] | None = None
    _trained_guidance: float | None = None

    # -- loading

    def _locate(self, options: DiffusersOptions, default_id: str, parts: Sequence[Part], **kwargs: Any) -> None:
        """Keep the options, resolve the device and find the weights (``kwargs``: :func:`locate_weights`'s)."""
        self.options = options
        self.device = resolve_device(options.device)
        self.source = locate_weights(options.path, default_id, parts, self.name, revision=options.revision,
                                     variant=options.variant, **kwargs)

    def _load_text_encoder(self, part: Part, loader: Callable[..., Any]) -> nn.Module:
        """A frozen text encoder in ``options.dtype``."""
        return load_text_encoder(self.source, part, loader, DTYPES[self.options.dtype], self.options.variant,
                                 self.device)

    def _load_vae(self, part: Part) -> nn.Module:
        """The frozen ``AutoencoderKL`` in ``options.dtype``, sliced / tiled as the options say."""
        vae = load_vae(self.source, part, DTYPES[self.options.dtype], self.options.variant, self.device)
        configure_vae(vae, self.options.vae_slicing, self.options.vae_tiling)
        return vae

    def _load_denoiser(self, part: Part, loader: Callable[..., Any]) -> nn.Module:
        """The trained network in ``options.denoiser_dtype``, checkpointed if the options say so."""
        model = load_part(self.source, part, loader, dtype=DTYPES[self.options.denoiser_dtype],
                          variant=self.options.variant).to(self.device)
        if self.options.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    # -- σ

    def sigmas(self, num_steps: int) -> Tensor:
        """The model's scheduler's ``num_steps``-step σ's, ``[σ_max … 0]``."""
        return self.schedule.sigmas(num_steps)

    def timestep(self, sigma: Tensor | float) -> Tensor:
        """The network's timestep(s) for σ (same shape, float32), as the scheduler maps them, on or off its grid."""
        return self.schedule.timestep(torch.as_tensor(sigma, dtype=torch.float32).detach().cpu())

    # -- prompts

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, Any]:
        """Text-encoder outputs for ``prompts`` (a dict of tensors on the backbone's device)."""
        with torch.no_grad():
            return self._encode(list(prompts))

    def _encode(self, prompts: list[str]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def negative_cond(self) -> dict[str, Any]:
        """The empty prompt, encoded once and cached (the unconditional branch of CFG)."""
        if self._negative is None:
            self._negative = self._encode_negative()
        return self._negative

    def _encode_negative(self) -> dict[str, Any]:
        return self.encode_prompts([""])

    def _note_guidance(self, guidance_scale: float) -> None:
        # The guidance used with gradients is the student's; export records it as the sampling default.
        if torch.is_grad_enabled():
            self._trained_guidance = float(guidance_scale)

    def _guided(self, cond: dict[str, Any], *inputs: Tensor) -> tuple[dict[str, Any], list[Tensor]]:
        """``cond`` and ``inputs`` batched with the empty prompt for one classifier-free-guidance pass."""
        return guidance_batch(cond, self.negative_cond(), *inputs)

    def _network_inputs(self, x: Tensor, sigma: Tensor | float, cond: dict[str, Any], guidance_scale: float,
                        model_input: Callable[[Tensor, Tensor], Tensor] = lambda x, s: x) -> NetworkInputs:
        """σ and the scheduler's timestep per sample, ``model_input(x, σ)`` and ``cond`` on ``x``'s device,
        batched with the empty prompt when ``guidance_scale > 1`` (classifier-free guidance in one pass).
        Also notes the guidance for the export (see :meth:`_note_guidance`)."""
        self._note_guidance(guidance_scale)
        b = x.shape[0]
        s = per_sample(sigma, b, x.device)
        t = per_sample(self.timestep(sigma), b, x.device)
        inp = model_input(x, s)
        cond = to_device(cond, x.device)
        guided = guidance_scale > 1
        if guided:
            cond, (inp, t) = self._guided(cond, inp, t)
        return NetworkInputs(s, inp, t, cond, guided)

    # -- latents and images

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        side = self.resolution // self.vae_factor
        return (batch_size, self.latent_channels, side, side)

    def decode(self, x0: Tensor) -> Tensor:
        """Latents to images in [0, 1], differentiable (the VAE is frozen, the graph is kept)."""
        return decode_latents(self.vae, x0)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae]

    def to(self, device: str | torch.device) -> "DiffusersBackbone":
        """Move the frozen parts and the denoiser (and the cached empty prompt) to ``device``."""
        self.device = torch.device(device)
        for m in self.frozen_modules() + [self.denoiser]:
            m.to(self.device)
        if self._negative is not None:
            self._negative = to_device(self._negative, self.device)
        return self

    # -- export

    def _export_pipeline(self, denoiser: nn.Module, scheduler: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _export_scheduler(self) -> Any:
        """A fresh scheduler with the trained settings, for the exported pipeline."""
        return self.schedule.export_scheduler()

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        """Write LoRA weights in the pipeline's ``load_lora_weights`` format; False where it has none."""
        return False

    def _describe_export(self, info: dict[str, Any]) -> None:
        """Add to (or reword) the export's ``rats_export.json`` before it is written."""

    def loading_kwargs(self) -> dict[str, Any]:
        """What the exported pipeline's ``from_pretrained`` needs besides the folder (components left out)."""
        return {}

    def sampling_kwargs(self, steps: int, guidance: float | None) -> dict[str, Any]:
        """What to pass to the exported pipeline's ``__call__`` to sample as the student was trained."""
        kwargs: dict[str, Any] = {"num_inference_steps": int(steps), "height": self.resolution, "width": self.resolution}
        if guidance is not None:
            kwargs["guidance_scale"] = float(guidance)
        return kwargs

    def export(self, denoiser: nn.Module, directory: Path, *, steps: int, lora_only: bool = False,
               guidance_scale: float | None = None, dtype: str | None = None) -> Path:
        """A diffusers pipeline folder (LoRA merged), or with ``lora_only`` the LoRA weights alone.

        The folder holds the trained scheduler settings (trailing spacing, shift) and
        ``rats_export.json`` with the step count and guidance the student was trained for, so
        ``DiffusionPipeline.from_pretrained(folder)(prompt, num_inference_steps=steps)`` samples as
        trained. ``guidance_scale`` defaults to the one last used for the student in training.
        ``dtype`` (``fp32``/``bf16``/``fp16``, default ``fp32``): every component is saved in it (the
        saved files are cast; the live modules are neither changed nor copied). A float32 folder loads
        with a plain ``from_pretrained(folder)`` (diffusers loads its models in float32 by default,
        transformers in the saved dtype: a mixed or 16-bit folder would mix dtypes); a 16-bit one needs
        ``torch_dtype=`` that dtype, as the manifest's ``usage`` line says.
        """
        return export_backbone(self, denoiser, directory, steps=steps, lora_only=lora_only,
                               guidance_scale=guidance_scale, dtype=dtype)
