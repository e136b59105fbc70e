"""The options of the diffusers backbones, defined once.

Each backbone's options are one frozen dataclass: its fields are the light factory's signature (the option
schema that ``rats plugins`` and config validation read, see :func:`light_factory`) and the one argument of
the backbone class, so an option is declared, typed and defaulted in one place. Imports no torch.

>>> SD15Options(resolution=512).timestep_spacing
'trailing'
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from typing import Annotated, Any, Callable, Literal

from pydantic import Field

#: dtype names as ``train.precision`` spells them; the reward plugins' spellings are accepted too
DtypeName = Literal["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]
Spacing = Literal["trailing", "linspace", "leading"]
Positive = Annotated[int, Field(gt=0)]
#: T5 / UMT5 tokens: the pipelines cap them at 512
T5Tokens = Annotated[int, Field(gt=0, le=512)]
#: each backbone's weights when ``path`` is not given (Hub ids)
DEFAULT_IDS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "pixart": "PixArt-alpha/PixArt-XL-2-512x512",
    "flux": "black-forest-labs/FLUX.1-dev",
    "sd35": "stabilityai/stable-diffusion-3.5-medium",
    "wan": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
}
#: Wan2.1's default clip length (frames)
WAN_NUM_FRAMES = 81


@dataclasses.dataclass(frozen=True)
class DiffusersOptions:
    """What every diffusers backbone takes."""

    path: str | None = None
    resolution: Positive | None = None
    device: str | None = None
    dtype: DtypeName = "fp32"
    denoiser_dtype: DtypeName = "fp32"
    gradient_checkpointing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    variant: str | None = None
    revision: str | None = None


@dataclasses.dataclass(frozen=True)
class UNetOptions(DiffusersOptions):
    """sd15 and sdxl: an eps / v UNet on the scheduler's discrete timesteps."""

    timestep_spacing: Spacing = "trailing"
    prediction_type: Literal["epsilon", "v_prediction"] | None = None


@dataclasses.dataclass(frozen=True)
class PixArtOptions(DiffusersOptions):
    timestep_spacing: Spacing = "trailing"
    max_sequence_length: Positive | None = None


@dataclasses.dataclass(frozen=True)
class FluxOptions(DiffusersOptions):
    dtype: DtypeName = "bf16"
    denoiser_dtype: DtypeName = "bf16"
    max_sequence_length: T5Tokens = 512


@dataclasses.dataclass(frozen=True)
class SD35Options(DiffusersOptions):
    dtype: DtypeName = "bf16"
    denoiser_dtype: DtypeName = "bf16"
    t5: bool = True
    shift: Annotated[float, Field(gt=0)] | None = None
    max_sequence_length: T5Tokens = 256


@dataclasses.dataclass(frozen=True)
class WanOptions(DiffusersOptions):
    dtype: DtypeName = "bf16"
    denoiser_dtype: DtypeName = "bf16"
    width: Positive | None = None
    num_frames: Positive = WAN_NUM_FRAMES
    vae_dtype: DtypeName | None = None
    decode_grad_frames: Positive | None = None
    flow_shift: Annotated[float, Field(gt=0)] | None = None
    negative_prompt: str = ""
    max_sequence_length: T5Tokens = 512


def light_factory(name: str, options: type, backbone: str, doc: str) -> Callable[..., Any]:
    """The registered factory of backbone ``name``: its signature is the fields of ``options`` (annotations
    resolved here, so reading the schema imports no torch); calling it imports
    ``rats_plugins.backbones.<name>`` and builds ``backbone`` (a class name there) from those options.
    Positional calls work as for a written-out signature: ``sd15("/models/sd15", device="cpu")``."""
    hints = typing.get_type_hints(options, include_extras=True)
    signature = inspect.Signature(
        [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=hints[f.name])
         for f in dataclasses.fields(options)],
        return_annotation=backbone,
    )

    def factory(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind(*args, **kwargs).arguments
        module = importlib.import_module(f".{name}", __package__)
        return getattr(module, backbone)(options(**given))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.__signature__ = signature  # type: ignore[attr-defined]

    def missing_weights(**given: Any) -> list[str]:
        """What building it would find missing, said without importing torch (rats_core.weights.preflight)."""
        from .weights import missing_weights as check

        return check(given.get("path"), DEFAULT_IDS[name], name, given.get("revision"))

    factory.missing_weights = missing_weights  # type: ignore[attr-defined]
    factory.__module__ = f"{__package__}.plugin"
    return factory
