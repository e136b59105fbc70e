"""The ``digits`` backbone: a tiny text-conditioned pixel-space diffusion model of handwritten digits.

* network: a diffusers ``UNet2DConditionModel`` (channels 32-64-64, cross-attention at 4×4 and in the
  middle block, cross-attention dim 32), eps-prediction, one grey channel at 16×16;
* text: :class:`~rats_plugins.digits.text_encoder.DigitsTextEncoder` (word vocabulary + one
  transformer layer), frozen; trained with 10 % empty prompts, so classifier-free guidance works;
* scheduler: diffusers ``EulerDiscreteScheduler``, scaled-linear betas, ``timestep_spacing="trailing"``
  (every schedule starts at σ_max ≈ 14.6, even with one step).

Seen by RATS through the :class:`rats_core.registry.interfaces.Backbone` protocol with ``interpolation="ve"``.

Model folder (the shipped ``weights/`` folder and every :meth:`DigitsBackbone.export` have this form)::

    unet/                 diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
    scheduler/            diffusers EulerDiscreteScheduler (scheduler_config.json)
    text_encoder/         config.json, model.safetensors, vocab.txt
    rats_digits.json      format, resolution, default_steps (the sampler steps it was trained for)

A LoRA export (``lora_only``) holds instead ``adapter_config.json`` + ``adapter_model.safetensors``
(peft format) and a ``rats_digits.json`` whose ``base`` names the folder the adapter goes on.

Reload one with ``DigitsBackbone(path)`` or ``backbone: {name: digits, path: <folder>}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from rats_core.errors import WeightsNotFoundError
from rats_core.method.sigmas import ve_model_input, x0_from_eps

from .text_encoder import DigitsTextEncoder

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INFO_FILE = "rats_digits.json"

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="trailing",
)


def unet_config(resolution: int = 16, cross_attention_dim: int = 32) -> dict:
    return dict(
        sample_size=resolution,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def make_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**SCHEDULER_CONFIG)


def make_unet(resolution: int = 16, cross_attention_dim: int = 32) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(resolution, cross_attention_dim))


class DigitsBackbone:
    """Pixel-space digits diffusion model; see the module docstring for the folder it loads."""

    interpolation = "ve"
    lora_target_modules = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]

    def __init__(self, path: str | Path | None = None, resolution: int | None = None):
        from diffusers import EulerDiscreteScheduler

        folder = Path(path).expanduser() if path is not None else WEIGHTS_DIR
        self.path = folder
        self.info = _read_info(folder)
        #: the folder holding unet/, scheduler/ and text_encoder/ (a LoRA export names its base)
        self.base_path = Path(self.info["base"]) if self.info.get("format") == "rats-digits-lora" else folder
        _require(self.base_path, ("unet/config.json", "scheduler/scheduler_config.json", "text_encoder/vocab.txt"))
        self.resolution = int(self.info["resolution"])
        if resolution is not None and resolution != self.resolution:
            raise ValueError(
                f"the digits weights in {folder} were trained at resolution {self.resolution}, not {resolution}; "
                f"leave backbone.resolution unset or pretrain at {resolution} "
                f"(python -m rats_plugins.digits.pretrain --resolution {resolution} --out DIR)"
            )
        self.scheduler = EulerDiscreteScheduler.from_pretrained(self.base_path / "scheduler")
        self.denoiser = _load_unet(self.base_path, lora=folder if self.base_path != folder else None)
        self.text_encoder = DigitsTextEncoder.load(self.base_path / "text_encoder")
        self.text_encoder.requires_grad_(False).eval()
        alphas_cumprod = self.scheduler.alphas_cumprod.double()
        train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        #: log σ of every training timestep, increasing with t (what σ → t interpolates over)
        self._log_sigmas = train_sigmas.log().float()
        with torch.no_grad():
            self._uncond = self.text_encoder([""])

    # -- Backbone protocol

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """``[B, 8, 32]`` token features; the encoder is frozen."""
        return self.text_encoder(list(prompts))

    def sigmas(self, num_steps: int) -> Tensor:
        """The scheduler's own σ's for ``num_steps`` steps (trailing spacing): starts at σ_max, ends in 0."""
        from diffusers import EulerDiscreteScheduler

        sched = EulerDiscreteScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(num_steps)
        return sched.sigmas.detach().float().clone()

    @property
    def sigma_max(self) -> float:
        return float(self._log_sigmas[-1].exp())

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, 1, self.resolution, self.resolution)

    def sigma_to_timestep(self, sigma: Tensor) -> Tensor:
        """Continuous timestep of a noise level: linear interpolation of log σ over the training
        timesteps, as diffusers' ``EulerDiscreteScheduler._sigma_to_t`` does; exact for the σ's of
        the scheduler's own schedules. Clipped to ``[0, T − 1]``."""
        log_sigmas = self._log_sigmas.to(sigma.device)
        ls = sigma.float().clamp_min(1e-10).log()
        hi = torch.searchsorted(log_sigmas, ls.reshape(-1).contiguous()).clamp(1, len(log_sigmas) - 1)
        lo = hi - 1
        w = ((ls.reshape(-1) - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])).clamp(0, 1)
        return (lo.float() + w).reshape(sigma.shape)

    def predict_x0(self, denoiser: nn.Module, x: Tensor, sigma: Tensor, cond: Tensor,
                   guidance_scale: float = 1.0) -> Tensor:
        """eps-prediction of ``denoiser`` at ``x = x0 + σ·eps`` turned into x0, for any σ in range
        (a scalar or one per sample); classifier-free guidance when ``guidance_scale != 1``."""
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        t = self.sigma_to_timestep(sigma)
        t = t.expand(b) if t.dim() == 0 else t
        text = cond.to(device=x.device, dtype=x.dtype)
        inp = ve_model_input(x, sigma.to(x.dtype))
        if guidance_scale == 1.0:
            eps = denoiser(inp, t, encoder_hidden_states=text).sample
        else:
            uncond = self._uncond.to(device=x.device, dtype=x.dtype).expand(b, -1, -1)
            both = denoiser(torch.cat([inp, inp]), torch.cat([t, t]),
                            encoder_hidden_states=torch.cat([uncond, text])).sample
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        return x0_from_eps(x, sigma.to(x.dtype), eps.to(x.dtype))

    def decode(self, x0: Tensor) -> Tensor:
        """One grey channel in ``[-1, 1]`` → ``[B, 3, H, W]`` in ``[0, 1]`` (differentiable)."""
        return ((x0.clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1)

    def export(self, denoiser: nn.Module, directory: str | Path, *, steps: int, lora_only: bool = False) -> Path:
        """Write a model folder (see the module docstring) that :class:`DigitsBackbone` reloads.

        Full export: ``unet/`` (LoRA merged in, float32), ``scheduler/``, ``text_encoder/`` and
        ``rats_digits.json``. ``lora_only``: the adapter alone in peft's format
        (``adapter_config.json`` + ``adapter_model.safetensors``) and ``rats_digits.json`` naming the
        base folder; pass that folder as ``backbone.path`` to load base + adapter.
        ``steps`` is recorded as ``default_steps`` in ``rats_digits.json``.
        """
        from rats_plugins.backbones.lora import (
            lora_layers, lora_state_dict, merged_copy, save_peft_adapter, unwrap_denoiser,
        )

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = unwrap_denoiser(denoiser)
        layers = lora_layers(base)
        info = {k: v for k, v in self.info.items() if k not in ("format", "base")}
        info.update(default_steps=int(steps), resolution=self.resolution)
        if lora_only:
            if not layers:
                raise ValueError("lora_only export needs a denoiser carrying a peft LoRA (train with student.lora)")
            state, ranks = lora_state_dict(layers)
            save_peft_adapter(directory, state, ranks)
            info.update(format="rats-digits-lora", base=str(self.base_path))
        else:
            model = merged_copy(base, layers) if layers else base
            model.save_pretrained(directory / "unet", safe_serialization=True)
            self.scheduler.save_pretrained(directory / "scheduler")
            self.text_encoder.save(directory / "text_encoder")
            info.update(format="rats-digits")
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return directory


def _require(folder: Path, parts: Sequence[str]) -> None:
    missing = [p for p in parts if not (folder / p).exists()]
    if missing:
        raise WeightsNotFoundError(
            f"digits backbone: {folder} lacks {', '.join(missing)}; "
            "create the weights with `python -m rats_plugins.digits.pretrain` "
            "(or point backbone.path at a folder written by it or by a digits export)"
        )


def _read_info(folder: Path) -> dict:
    _require(folder, (INFO_FILE,))
    return json.loads((folder / INFO_FILE).read_text())


def _load_unet(folder: Path, lora: Path | None = None) -> nn.Module:
    """The UNet in float32 (the shipped weights are stored in float16 to stay small), with a LoRA
    export's adapter merged in when ``lora`` names one."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    if lora is not None:
        from peft import PeftModel

        _require(lora, ("adapter_config.json", "adapter_model.safetensors"))
        unet = PeftModel.from_pretrained(unet, str(lora)).merge_and_unload()
    return unet.eval()
