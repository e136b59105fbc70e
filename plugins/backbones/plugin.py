"""The diffusers backbones as a rats plugin: ``sd15``, ``sdxl``, ``pixart``, ``flux``, ``sd35`` and ``wan``.

The factories live here and import no torch (nor diffusers): each is :func:`.options.light_factory` of
its options dataclass (whose fields are the option schema that ``rats plugins`` and config validation
read) and imports its backbone's module (sd15.py, sdxl.py, ...) only when it builds it. Those modules never
import this one back (no import circle, even at run time): import a factory from here,
``from rats_plugins.backbones.plugin import sd15``.
"""

from __future__ import annotations

from rats_core import hookimpl

from .options import FluxOptions, PixArtOptions, SD35Options, UNetOptions, WanOptions, light_factory

sd15 = light_factory("sd15", UNetOptions, "SD15Backbone", """\
Stable Diffusion 1.x/2.x (UNet + CLIP; eps or v-prediction). Default stable-diffusion-v1-5, 512 px.

``path``: Hub id or local diffusers folder. ``dtype``: text encoder and VAE; ``denoiser_dtype``:
the UNet (keep fp32 for full fine-tuning with mixed precision; bf16 for LoRA on small GPUs).
``prediction_type`` overrides the scheduler config's.
""")

sdxl = light_factory("sdxl", UNetOptions, "SDXLBackbone", """\
Stable Diffusion XL (UNet + two CLIP encoders, pooled + size conditioning). Default SDXL base 1.0, 1024 px.

Same options as ``sd15``. In fp16 the SDXL VAE is kept in fp32 (it overflows); bf16 is fine.
""")

pixart = light_factory("pixart", PixArtOptions, "PixArtBackbone", """\
PixArt-α / PixArt-Σ (DiT + T5). Default PixArt-alpha/PixArt-XL-2-512x512, 512 px.

Point ``path`` at a PixArt-Σ folder or id (e.g. PixArt-alpha/PixArt-Sigma-XL-2-1024-MS) for Σ.
``max_sequence_length``: T5 tokens (default 120 for α, 300 for Σ, as the pipelines).
""")

flux = light_factory("flux", FluxOptions, "FluxBackbone", """\
FLUX.1 dev/schnell (rectified flow, CLIP pooled + T5, packed latents). Default FLUX.1-dev, 1024 px.

bf16 by default (the 12B transformer is 24 GB in bf16, 48 GB in fp32). For FLUX.1-dev set
student/teacher ``guidance_scale`` to the embedded guidance you want (the pipeline uses 3.5).
""")

sd35 = light_factory("sd35", SD35Options, "SD35Backbone", """\
Stable Diffusion 3 / 3.5 (MMDiT, flow matching; CLIP-L + OpenCLIP-bigG + T5-XXL). Default SD3.5 Medium, 1024 px.

bf16 by default. ``t5=false`` drops the T5-XXL encoder (``text_encoder_3=None``, as diffusers allows: its
prompt states are zeros; ~9.5 GB less in bf16, weaker prompt following). ``shift`` overrides the
scheduler's σ shift (3.0). ``max_sequence_length``: T5 tokens (the pipeline's default, 256). For SD3.5
Large set ``path: stabilityai/stable-diffusion-3.5-large``.
""")

wan = light_factory("wan", WanOptions, "WanBackbone", """\
Wan2.1 text-to-video (flow matching, UMT5, 3-D VAE). Default Wan2.1-T2V-1.3B, 81 frames at 480×480.

``resolution``: frame height in px (multiple of 16; default 480); ``width``: frame width (default:
the height; the model's native 480p is 480×832). ``num_frames``: video frames, 1 + a multiple of 4.
``dtype``: the UMT5 encoder (and the VAE unless ``vae_dtype``); ``denoiser_dtype``: the transformer.
``decode_grad_frames``: how many evenly spaced latent frames the differentiable decode keeps a
gradient for (each is 4 video frames; default: all) — the decode dominates a video step's memory.
``flow_shift`` overrides the scheduler's (3.0 for 480p, 5.0 for 720p). ``negative_prompt``: the
unconditional branch of guidance. For the 14B model set ``path: Wan-AI/Wan2.1-T2V-14B-Diffusers``.
""")


@hookimpl
def register_backbones(register):
    register("sd15", sd15)
    register("sdxl", sdxl)
    register("pixart", pixart)
    register("flux", flux)
    register("sd35", sd35)
    register("wan", wan)
