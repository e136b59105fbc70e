"""The diffusers backbones as a rats plugin: ``sd15``, ``sdxl``, ``pixart``, ``flux`` and ``wan``.

The factories live here and import no torch (nor diffusers): their signatures are the option schemas that
``rats plugins`` and config validation read, and each imports its backbone's module (sd15.py, sdxl.py,
...) only when it builds it. Those modules re-export their factory, so ``from
rats_plugins.backbones.sd15 import sd15`` still works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from rats_core import hookimpl

if TYPE_CHECKING:
    from .sd15 import SD15Backbone
    from .sdxl import SDXLBackbone
    from .pixart import PixArtBackbone
    from .flux import FluxBackbone
    from .wan import WanBackbone

#: dtype names as ``train.precision`` spells them; the reward plugins' spellings are accepted too
DtypeName = Literal["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]
Spacing = Literal["trailing", "linspace", "leading"]
#: Wan2.1's default clip length (frames)
WAN_NUM_FRAMES = 81


def sd15(
    path: str | None = None,
    resolution: Annotated[int, Field(gt=0)] | None = None,
    device: str | None = None,
    dtype: DtypeName = "fp32",
    denoiser_dtype: DtypeName = "fp32",
    gradient_checkpointing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    timestep_spacing: Spacing = "trailing",
    prediction_type: Literal["epsilon", "v_prediction"] | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> SD15Backbone:
    """Stable Diffusion 1.x/2.x (UNet + CLIP; eps or v-prediction). Default stable-diffusion-v1-5, 512 px.

    ``path``: Hub id or local diffusers folder. ``dtype``: text encoder and VAE; ``denoiser_dtype``:
    the UNet (keep fp32 for full fine-tuning with mixed precision; bf16 for LoRA on small GPUs).
    ``prediction_type`` overrides the scheduler config's.
    """
    from .sd15 import SD15Backbone

    return SD15Backbone(
        path, resolution=resolution, device=device, dtype=dtype, denoiser_dtype=denoiser_dtype,
        gradient_checkpointing=gradient_checkpointing, vae_slicing=vae_slicing, vae_tiling=vae_tiling,
        timestep_spacing=timestep_spacing, prediction_type=prediction_type, variant=variant, revision=revision,
    )


def sdxl(
    path: str | None = None,
    resolution: Annotated[int, Field(gt=0)] | None = None,
    device: str | None = None,
    dtype: DtypeName = "fp32",
    denoiser_dtype: DtypeName = "fp32",
    gradient_checkpointing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    timestep_spacing: Spacing = "trailing",
    prediction_type: Literal["epsilon", "v_prediction"] | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> SDXLBackbone:
    """Stable Diffusion XL (UNet + two CLIP encoders, pooled + size conditioning). Default SDXL base 1.0, 1024 px.

    Same options as ``sd15``. In fp16 the SDXL VAE is kept in fp32 (it overflows); bf16 is fine.
    """
    from .sdxl import SDXLBackbone

    return SDXLBackbone(
        path, resolution=resolution, device=device, dtype=dtype, denoiser_dtype=denoiser_dtype,
        gradient_checkpointing=gradient_checkpointing, vae_slicing=vae_slicing, vae_tiling=vae_tiling,
        timestep_spacing=timestep_spacing, prediction_type=prediction_type, variant=variant, revision=revision,
    )


def pixart(
    path: str | None = None,
    resolution: Annotated[int, Field(gt=0)] | None = None,
    device: str | None = None,
    dtype: DtypeName = "fp32",
    denoiser_dtype: DtypeName = "fp32",
    gradient_checkpointing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    timestep_spacing: Spacing = "trailing",
    max_sequence_length: Annotated[int, Field(gt=0)] | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> PixArtBackbone:
    """PixArt-α / PixArt-Σ (DiT + T5). Default PixArt-alpha/PixArt-XL-2-512x512, 512 px.

    Point ``path`` at a PixArt-Σ folder or id (e.g. PixArt-alpha/PixArt-Sigma-XL-2-1024-MS) for Σ.
    ``max_sequence_length``: T5 tokens (default 120 for α, 300 for Σ, as the pipelines).
    """
    from .pixart import PixArtBackbone

    return PixArtBackbone(
        path, resolution=resolution, device=device, dtype=dtype, denoiser_dtype=denoiser_dtype,
        gradient_checkpointing=gradient_checkpointing, vae_slicing=vae_slicing, vae_tiling=vae_tiling,
        timestep_spacing=timestep_spacing, max_sequence_length=max_sequence_length, variant=variant,
        revision=revision,
    )


def flux(
    path: str | None = None,
    resolution: Annotated[int, Field(gt=0)] | None = None,
    device: str | None = None,
    dtype: DtypeName = "bf16",
    denoiser_dtype: DtypeName = "bf16",
    gradient_checkpointing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    max_sequence_length: Annotated[int, Field(gt=0, le=512)] = 512,
    variant: str | None = None,
    revision: str | None = None,
) -> FluxBackbone:
    """FLUX.1 dev/schnell (rectified flow, CLIP pooled + T5, packed latents). Default FLUX.1-dev, 1024 px.

    bf16 by default (the 12B transformer is 24 GB in bf16, 48 GB in fp32). For FLUX.1-dev set
    student/teacher ``guidance_scale`` to the embedded guidance you want (the pipeline uses 3.5).
    """
    from .flux import FluxBackbone

    return FluxBackbone(
        path, resolution=resolution, device=device, dtype=dtype, denoiser_dtype=denoiser_dtype,
        gradient_checkpointing=gradient_checkpointing, vae_slicing=vae_slicing, vae_tiling=vae_tiling,
        max_sequence_length=max_sequence_length, variant=variant, revision=revision,
    )


def wan(
    path: str | None = None,
    resolution: Annotated[int, Field(gt=0)] | None = None,
    width: Annotated[int, Field(gt=0)] | None = None,
    num_frames: Annotated[int, Field(gt=0)] = WAN_NUM_FRAMES,
    device: str | None = None,
    dtype: DtypeName = "bf16",
    denoiser_dtype: DtypeName = "bf16",
    vae_dtype: DtypeName | None = None,
    gradient_checkpointing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    decode_grad_frames: Annotated[int, Field(gt=0)] | None = None,
    flow_shift: Annotated[float, Field(gt=0)] | None = None,
    negative_prompt: str = "",
    max_sequence_length: Annotated[int, Field(gt=0, le=512)] = 512,
    variant: str | None = None,
    revision: str | None = None,
) -> WanBackbone:
    """Wan2.1 text-to-video (flow matching, UMT5, 3-D VAE). Default Wan2.1-T2V-1.3B, 81 frames at 480×480.

    ``resolution``: frame height in px (multiple of 16; default 480); ``width``: frame width (default:
    the height; the model's native 480p is 480×832). ``num_frames``: video frames, 1 + a multiple of 4.
    ``dtype``: the UMT5 encoder (and the VAE unless ``vae_dtype``); ``denoiser_dtype``: the transformer.
    ``decode_grad_frames``: how many evenly spaced latent frames the differentiable decode keeps a
    gradient for (each is 4 video frames; default: all) — the decode dominates a video step's memory.
    ``flow_shift`` overrides the scheduler's (3.0 for 480p, 5.0 for 720p). ``negative_prompt``: the
    unconditional branch of guidance. For the 14B model set ``path: Wan-AI/Wan2.1-T2V-14B-Diffusers``.
    """
    from .wan import WanBackbone

    return WanBackbone(
        path, resolution=resolution, width=width, num_frames=num_frames, device=device, dtype=dtype,
        denoiser_dtype=denoiser_dtype, vae_dtype=vae_dtype,
        gradient_checkpointing=gradient_checkpointing, vae_slicing=vae_slicing, vae_tiling=vae_tiling,
        decode_grad_frames=decode_grad_frames, flow_shift=flow_shift, negative_prompt=negative_prompt,
        max_sequence_length=max_sequence_length, variant=variant, revision=revision,
    )


@hookimpl
def register_backbones(register):
    register("sd15", sd15)
    register("sdxl", sdxl)
    register("pixart", pixart)
    register("flux", flux)
    register("wan", wan)
