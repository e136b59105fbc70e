"""What the diffusers backbones share: finding and loading weights, σ↔timestep maps, CFG, decoding,
LoRA handling and export.

Heavy libraries (diffusers, transformers, peft, huggingface_hub) are imported inside functions so
that ``rats plugins`` and ``rats validate`` stay fast and work without them.

Weights are found in this order, never hanging on the network:

1. ``backbone.path`` is an existing folder → it must be a diffusers pipeline folder (what
   ``save_pretrained`` writes); a missing component is a :class:`WeightsNotFoundError` naming it.
2. Otherwise it is a Hub id (the plugin's default when ``path`` is not given): the local Hugging Face
   cache is tried first (``local_files_only``); only if that fails, ``HF_HUB_OFFLINE`` is not set and
   the Hub answers a 3-second probe, the files are downloaded. Any failure is one
   :class:`WeightsNotFoundError` naming the id and the ``backbone.path=`` override.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from rats_core.errors import ConfigError, WeightsNotFoundError
from rats_core.weights import offline_reason

from .plugin import DtypeName, Spacing  # noqa: F401  (the option types live with the factories)

log = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}

#: pipeline class (model_index.json ``_class_name``) → the rats backbone that handles it
PIPELINE_BACKBONE = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
}

EXPORT_MANIFEST = "rats_export.json"


# ----------------------------------------------------------------------------- devices and dtypes


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        # the current CUDA device: under a launcher the trainer has set it to this rank's GPU already
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def module_dtype(module: nn.Module) -> torch.dtype:
    """The compute dtype of a (possibly wrapped) network: its first floating-point parameter's."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


# ----------------------------------------------------------------------------- finding weights


@dataclass(frozen=True)
class Part:
    """One sub-folder of a diffusers pipeline folder that a backbone needs."""

    folder: str
    what: str


@dataclass
class Source:
    """Where a backbone's weights were found."""

    model_id: str  # what the user asked for (hub id or folder), for messages and the export manifest
    folder: Path  # a local diffusers pipeline folder
    backbone: str

    @property
    def model_index(self) -> dict[str, Any]:
        f = self.folder / "model_index.json"
        try:
            return json.loads(f.read_text()) if f.exists() else {}
        except (OSError, json.JSONDecodeError):
            return {}


def _override_hint(backbone: str) -> str:
    return f"backbone.path=/models/{backbone}"


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source or source.count("/") > 1


def locate_weights(
    path: str | None,
    default_id: str,
    parts: Sequence[Part],
    backbone: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    skip: Sequence[str] = ("safety_checker", "feature_extractor", "image_encoder"),
) -> Source:
    """A local pipeline folder holding every part, or WeightsNotFoundError with what to do."""
    source = str(path) if path else default_id
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise WeightsNotFoundError(
                f"{backbone}: backbone.path={source} is a file; expected a diffusers pipeline folder "
                f"(with {', '.join(p.folder + '/' for p in parts)} as save_pretrained writes it)"
            )
        found = Source(source, local.resolve(), backbone)
    elif _looks_local(source):
        raise WeightsNotFoundError(
            f"{backbone}: no such folder: {source}. Set backbone.path to a diffusers pipeline folder "
            f"(e.g. {_override_hint(backbone)}) or a Hub id (default: {default_id})"
        )
    else:
        folder = _from_hub(source, backbone, parts, revision=revision, variant=variant, skip=skip)
        found = Source(source, folder, backbone)
    check_parts(found, parts)
    check_pipeline_class(found)
    return found


def check_parts(source: Source, parts: Sequence[Part]) -> None:
    for part in parts:
        sub = source.folder / part.folder
        if not sub.is_dir() or not any(sub.iterdir()):
            raise WeightsNotFoundError(
                f"{source.backbone}: {source.model_id} has no '{part.folder}/' ({part.what}); expected a complete "
                f"diffusers pipeline folder with {', '.join(p.folder + '/' for p in parts)}. "
                f"Use a complete folder: {_override_hint(source.backbone)}"
            )


def check_pipeline_class(source: Source) -> None:
    """A folder of another architecture is a config mistake worth naming (e.g. SDXL given to sd15)."""
    cls = source.model_index.get("_class_name")
    other = PIPELINE_BACKBONE.get(cls) if isinstance(cls, str) else None
    if other is not None and other != source.backbone:
        raise ConfigError(
            f"backbone.path: {source.model_id} holds a {cls}, which the '{other}' backbone handles, "
            f"not '{source.backbone}'. Set backbone.name={other}"
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub endpoint, so a machine without network fails at once instead of
    waiting for HTTP timeouts. With a proxy configured the probe would lie: trust the client then."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _from_hub(model_id: str, backbone: str, parts: Sequence[Part], *, revision: str | None, variant: str | None,
              skip: Sequence[str]) -> Path:
    """The cached snapshot folder of a Hub pipeline: the cache first, a download only when reachable."""
    from diffusers import DiffusionPipeline

    hint = _override_hint(backbone)
    # `skip` components are passed as None so the Hub download leaves them out (1.2 GB safety checker).
    kwargs: dict[str, Any] = {"revision": revision, "variant": variant, **{k: None for k in skip}}
    cached: Path | None = None
    try:
        cached = Path(DiffusionPipeline.download(model_id, local_files_only=True, **kwargs))
        check_parts(Source(model_id, cached, backbone), parts)
        return cached
    except Exception as exc:  # not cached, or a partial cache: a download may complete it
        cache_error = exc
    if cached is not None and (_offline() or not _hub_reachable()):
        raise cache_error  # the partial cache's own message names the missing part
    if _offline():
        raise WeightsNotFoundError(
            f"{backbone}: weights for '{model_id}' are not in the local Hugging Face cache and {offline_reason()}. "
            f"Download them where there is network (`hf download {model_id}`), or use a local diffusers "
            f"folder: {hint}"
        ) from None
    if not _hub_reachable():
        raise WeightsNotFoundError(
            f"{backbone}: weights for '{model_id}' are not in the local Hugging Face cache and the Hub is not "
            f"reachable from here. Download them where there is network (`hf download {model_id}`), or use a "
            f"local diffusers folder: {hint}"
        ) from None
    log.info("downloading %s from the Hub (cache miss: %s)", model_id, cache_error)
    try:
        return Path(DiffusionPipeline.download(model_id, **kwargs))
    except Exception as exc:
        kind = type(exc).__name__
        if kind == "GatedRepoError" or "gated" in str(exc).lower():
            why = (f"'{model_id}' is gated on the Hub: accept its licence at https://huggingface.co/{model_id} "
                   f"and log in (`hf auth login`)")
        elif kind in ("RepositoryNotFoundError", "RevisionNotFoundError"):
            why = f"'{model_id}' was not found on the Hub (check the id, or log in if it is private)"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
            why = f"downloading '{model_id}' failed ({kind}: {first[:200]})"
        raise WeightsNotFoundError(f"{backbone}: {why}; or use a local diffusers folder: {hint}") from None


def load_part(
    source: Source,
    part: Part,
    loader: Callable[..., Any],
    *,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    transformers: bool = False,
) -> Any:
    """``loader(folder, subfolder=part.folder, ...)`` from the local folder; a missing or unreadable
    weights file is a WeightsNotFoundError naming the part (anything else is a bug and propagates)."""
    kwargs: dict[str, Any] = {"subfolder": part.folder, "local_files_only": True}
    if variant is not None:
        kwargs["variant"] = variant
    if dtype is not None:
        kwargs["dtype" if transformers else "torch_dtype"] = dtype
    try:
        return loader(str(source.folder), **kwargs)
    except (OSError, EnvironmentError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        missing = isinstance(exc, OSError) or "no file named" in str(exc).lower() or "not found" in str(exc).lower()
        if not missing:
            raise
        raise WeightsNotFoundError(
            f"{source.backbone}: cannot load '{part.folder}/' ({part.what}) of {source.model_id}: {first[:240]}. "
            f"Use a complete diffusers folder: {_override_hint(source.backbone)}"
        ) from None


def load_tokenizer(source: Source, part: Part):
    from transformers import AutoTokenizer

    return load_part(source, part, AutoTokenizer.from_pretrained)


# ----------------------------------------------------------------------------- σ ↔ timestep


class VESchedule:
    """The σ schedule of a discrete-time eps/v model, owned by diffusers' EulerDiscreteScheduler.

    The model's own scheduler config (betas, prediction type, ...) is kept; only the timestep spacing
    is set (``trailing`` by default, so few-step sampling starts at σ_max). Any σ in range maps to a
    (fractional) timestep by the scheduler's own rule, interpolating the training σ's in log-σ;
    σ's of a schedule this object produced map to exactly the scheduler's timesteps.
    """

    def __init__(self, scheduler_config: dict[str, Any], spacing: str = "trailing",
                 prediction_type: str | None = None):
        from diffusers import EulerDiscreteScheduler

        overrides: dict[str, Any] = {"timestep_spacing": spacing, "final_sigmas_type": "zero"}
        if prediction_type is not None:
            overrides["prediction_type"] = prediction_type
        self.scheduler = EulerDiscreteScheduler.from_config(dict(scheduler_config), **overrides)
        self.prediction_type: str = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported (epsilon, v_prediction, sample)")
        ac = self.scheduler.alphas_cumprod
        sig = ((1 - ac) / ac) ** 0.5  # float32, like the scheduler
        self._log_sigmas = sig.double().log()
        self.sigma_min = float(sig[0])
        self.sigma_max = float(sig[-1])
        self._continuous = self.scheduler.config.timestep_type == "continuous" and self.prediction_type == "v_prediction"
        self._known: dict[float, float] = {}

    def sigmas(self, num_steps: int) -> Tensor:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.scheduler.set_timesteps(num_steps)
        sigmas = self.scheduler.sigmas.detach().float().cpu().clone()
        for s, t in zip(sigmas[:-1].tolist(), self.scheduler.timesteps.cpu().tolist()):
            self._known[s] = float(t)
        return sigmas

    def timestep(self, sigma: Tensor) -> Tensor:
        """Timestep(s) for σ (same shape), float32."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        if self._continuous:
            return 0.25 * sigma.clamp_min(1e-10).log()
        if sigma.numel() == 1 and float(sigma) in self._known:
            return torch.full_like(sigma, self._known[float(sigma)])
        log_sigmas = self._log_sigmas.to(sigma.device)
        log_sigma = sigma.double().clamp_min(1e-10).log().reshape(-1)
        dists = log_sigma[None, :] - log_sigmas[:, None]
        low = torch.cumsum((dists >= 0).int(), dim=0).argmax(dim=0).clamp(max=len(log_sigmas) - 2)
        high = low + 1
        lo, hi = log_sigmas[low], log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        t = (1 - w) * low + w * high
        return t.reshape(sigma.shape).float()

    def export_scheduler(self):
        """A fresh scheduler with the trained settings, for the exported pipeline."""
        from diffusers import EulerDiscreteScheduler

        return EulerDiscreteScheduler.from_config(self.scheduler.config)


def per_sample(value: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """A scalar or [B] tensor as a float32 [B] tensor on ``device``."""
    v = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    return v.expand(batch) if v.numel() == 1 else v


def ve_x0(prediction_type: str, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
    from rats_core.sigmas import x0_from_eps, x0_from_v

    if prediction_type == "epsilon":
        return x0_from_eps(x, sigma, output)
    if prediction_type == "v_prediction":
        return x0_from_v(x, sigma, output)
    return output  # "sample": the network predicts x0 itself


def cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    return uncond + scale * (cond - uncond)


def batch_cond(cond: dict[str, Any], negative: dict[str, Any], batch: int) -> dict[str, Any]:
    """``[negative ; cond]`` along the batch (negative is one row, expanded), as the pipelines do."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch:
            n = negative[k].to(v.device, v.dtype)
            out[k] = torch.cat([n.expand(batch, *n.shape[1:]), v], dim=0)
        else:
            out[k] = v
    return out


def to_device(cond: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in cond.items()}


# ----------------------------------------------------------------------------- VAE


def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """Differentiable VAE decode of model-space latents to images in [0, 1] (float32, latents' device)."""
    cfg_ = vae.config
    z = latents.to(next(vae.parameters()).device)
    mean = getattr(cfg_, "latents_mean", None)
    std = getattr(cfg_, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (z.dim() - 2)
        mean = torch.tensor(mean, device=z.device, dtype=z.dtype).reshape(shape)
        std = torch.tensor(std, device=z.device, dtype=z.dtype).reshape(shape)
        z = z * std / cfg_.scaling_factor + mean
    else:
        z = z / cfg_.scaling_factor + (getattr(cfg_, "shift_factor", None) or 0.0)
    image = vae.decode(z.to(module_dtype(vae)), return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1).to(latents.device)


def vae_scale_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def configure_vae(vae: nn.Module, slicing: bool, tiling: bool) -> None:
    if slicing:
        vae.enable_slicing()
    if tiling:
        vae.enable_tiling()


def load_vae(source: Source, part: Part, dtype: torch.dtype, variant: str | None, device: torch.device):
    """The frozen VAE. Those flagged ``force_upcast`` (SD/SDXL) overflow in fp16: kept in fp32 then
    (bf16 is fine)."""
    from diffusers import AutoencoderKL

    config = load_part(source, part, AutoencoderKL.load_config)
    if dtype == torch.float16 and config.get("force_upcast", False):
        dtype = torch.float32
    return freeze(load_part(source, part, AutoencoderKL.from_pretrained, dtype=dtype, variant=variant)).to(device)


# ----------------------------------------------------------------------------- LoRA and export


def unwrap_denoiser(denoiser: nn.Module) -> nn.Module:
    """The diffusers model inside DDP / DeepSpeed / torch.compile / PeftModel wrappers (peft LoRA
    layers injected into it stay in place)."""
    m = denoiser
    for _ in range(8):
        name = type(m).__name__
        if name == "PeftModel" or hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()
        elif name in ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine", "FullyShardedDataParallel") \
                and isinstance(getattr(m, "module", None), nn.Module):
            m = m.module
        elif isinstance(getattr(m, "_orig_mod", None), nn.Module):
            m = m._orig_mod
        else:
            break
    return m


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers in ``model`` by module name; empty when it carries none (or peft is absent)."""
    try:
        from peft.tuners.lora import LoraLayer
    except Exception:  # pragma: no cover
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _active_adapters(layer: nn.Module) -> list[str]:
    active = layer.active_adapters if hasattr(layer, "active_adapters") else [layer.active_adapter]
    active = [a for a in ([active] if isinstance(active, str) else active) if a in layer.lora_A]
    if len(active) > 1:
        raise ValueError(f"export supports one active LoRA adapter, found {active}")
    if active and getattr(layer, "use_dora", {}).get(active[0], False):
        raise ValueError("export of DoRA adapters is not supported; train with plain LoRA")
    return active


@torch.no_grad()
def merged_state_dict(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The model's state dict with each LoRA merged into its base weight (the live model is untouched)."""
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        out[".".join(p for p in parts if p != "base_layer")] = value.detach()
    for name, layer in layers.items():
        if getattr(layer, "merged", False):
            continue  # peft already folded the adapter into the base weight
        for adapter in _active_adapters(layer):
            key = f"{name}.weight" if name else "weight"
            base = out[key]
            out[key] = (base.float() + layer.get_delta_weight(adapter).float().to(base.device)).to(base.dtype)
    return out


@torch.no_grad()
def merged_copy(model: nn.Module, layers: dict[str, nn.Module]) -> nn.Module:
    """A fresh diffusers model of the same class and config holding the merged weights (built on the
    meta device and filled by assignment, so no second random initialisation is paid for)."""
    state = merged_state_dict(model, layers)
    with torch.device("meta"):
        fresh = type(model).from_config(model.config)
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    if unexpected or [k for k in missing if k in dict(fresh.named_parameters())]:
        raise RuntimeError(f"merged LoRA state does not fit {type(model).__name__}: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, buf in list(fresh.named_buffers()):  # non-persistent buffers: take the live model's values
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            src = dict(model.named_buffers()).get(name)
            if src is not None:
                setattr(fresh.get_submodule(owner) if owner else fresh, leaf, src.detach().clone())
    return fresh.eval()


@torch.no_grad()
def lora_state_dict(layers: dict[str, nn.Module]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """LoRA weights in peft/diffusers naming (``{module}.lora_A.weight``), with each layer's scaling
    folded into ``lora_B`` so the file loads correctly with ``lora_alpha == r`` (no alpha metadata
    needed, rsLoRA and per-module alphas included). Also returns each module's rank."""
    state: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    for name, layer in layers.items():
        for adapter in _active_adapters(layer):
            a = layer.lora_A[adapter].weight
            b = layer.lora_B[adapter].weight
            scale = float(layer.scaling[adapter])
            state[f"{name}.lora_A.weight"] = a.detach().cpu().contiguous()
            state[f"{name}.lora_B.weight"] = (b.detach().float() * scale).to(b.dtype).cpu().contiguous()
            ranks[name] = int(a.shape[0])
    if not state:
        raise ValueError("the denoiser carries no active LoRA adapter")
    return state, ranks


def save_peft_adapter(directory: Path, state: dict[str, Tensor], ranks: dict[str, int]) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
    ``PeftModel.from_pretrained(pipe.transformer_or_unet, directory)``."""
    from collections import Counter

    from peft import LoraConfig
    from safetensors.torch import save_file

    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {name: rank for name, rank in ranks.items() if rank != r}
    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), init_lora_weights=False)
    config.save_pretrained(str(directory))
    save_file({f"base_model.model.{k}": v for k, v in state.items()}, str(directory / "adapter_model.safetensors"))


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    (directory / EXPORT_MANIFEST).write_text(json.dumps(info, indent=2) + "\n")


def check_resolution(resolution: int, multiple: int, backbone: str) -> int:
    if resolution <= 0 or resolution % multiple:
        raise ValueError(f"{backbone}: resolution must be a positive multiple of {multiple}, got {resolution}")
    return resolution



# ----------------------------------------------------------------------------- the shared backbone shell


class DiffusersBackbone:
    """What every diffusers backbone does the same way: prompt-encoding entry point, the cached empty
    prompt for classifier-free guidance, latent shapes, decoding and export.

    Subclasses set the attributes in ``__init__`` and implement ``_encode``, ``sigmas``,
    ``predict_x0``, ``_export_pipeline`` and ``_export_scheduler`` (plus ``_save_lora`` where the
    diffusers pipeline has a LoRA loader).
    """

    name: str
    pipeline_class: str
    interpolation: Literal["ve", "flow"]
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

    def _export_scheduler(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _save_lora(self, directory: Path, state: dict[str, Tensor]) -> bool:
        """Write LoRA weights in the pipeline's ``load_lora_weights`` format; False where it has none."""
        return False

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
        ``dtype`` (``fp32``/``bf16``/``fp16``, default ``fp32``): every component is saved in it. A
        float32 folder loads with a plain ``from_pretrained(folder)`` (diffusers loads its models in
        float32 by default, transformers in the saved dtype: a mixed or 16-bit folder would mix dtypes);
        a 16-bit one needs ``torch_dtype=`` that dtype, as the manifest's ``usage`` line says.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = unwrap_denoiser(denoiser)
        layers = lora_layers(base)
        guidance = guidance_scale if guidance_scale is not None else self._trained_guidance
        scheduler = self._export_scheduler()
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"export dtype must be one of fp32, bf16, fp16 (got {dtype!r})")
        target = DTYPES[dtype] if dtype is not None else torch.float32
        dtype_name = str(target).replace("torch.", "")
        info: dict[str, Any] = {
            "backbone": self.name,
            "source": self.source.model_id,
            "pipeline": self.pipeline_class,
            "num_inference_steps": int(steps),
            "guidance_scale": guidance,
            "height": self.resolution,
            "width": self.resolution,
            "dtype": dtype_name,
            "scheduler": {"class": type(scheduler).__name__, **{k: v for k, v in scheduler.config.items()
                                                               if not k.startswith("_") and _jsonable(v)}},
        }
        call = self.sampling_kwargs(steps, guidance)
        info["call"] = call
        args = ", ".join(f"{k}={v!r}" for k, v in call.items())
        if lora_only:
            if not layers:
                raise ValueError("lora_only export needs a denoiser carrying a peft LoRA (train with student.lora)")
            state, ranks = lora_state_dict(layers)
            state = {k: v.to(target) for k, v in state.items()}
            diffusers_format = self._save_lora(directory, state)
            save_peft_adapter(directory, state, ranks)
            scheduler.save_pretrained(str(directory / "scheduler"))
            info.update(format="lora", base_model=self.source.model_id, diffusers_lora=diffusers_format,
                        rank=max(ranks.values()), modules=len(ranks))
            attach = ("pipe.load_lora_weights(DIR)" if diffusers_format else
                      "pipe.transformer = PeftModel.from_pretrained(pipe.transformer, DIR).merge_and_unload()")
            info["usage"] = (
                f"pipe = {self.pipeline_class}.from_pretrained(BASE_MODEL); "
                f"pipe.scheduler = {type(scheduler).__name__}.from_pretrained(DIR, subfolder='scheduler'); "
                f"{attach}; image = pipe(prompt, {args}).images[0]"
            )
        else:
            model = merged_copy(base, layers) if layers else base
            pipe = self._export_pipeline(model, scheduler)
            cast_pipeline(pipe, target, owned=(model,) if layers else ())
            pipe.save_pretrained(str(directory), safe_serialization=True)
            info.update(format="pipeline", lora_merged=bool(layers))
            load = "" if target == torch.float32 else f", torch_dtype=torch.{dtype_name}"
            info["usage"] = f"pipe = DiffusionPipeline.from_pretrained(DIR{load}); image = pipe(prompt, {args}).images[0]"
        write_manifest(directory, info)
        return directory


def cast_pipeline(pipe: Any, dtype: torch.dtype, owned: Sequence[nn.Module] = ()) -> None:
    """Give every network of ``pipe`` the floating dtype ``dtype``. Networks not in ``owned`` (the
    live training modules) are cast on a copy, so exporting never changes the running backbone."""
    import copy

    owned_ids = {id(m) for m in owned}
    for name, component in list(pipe.components.items()):
        if not isinstance(component, nn.Module):
            continue
        # every floating tensor, not the first one's dtype: diffusers keeps some modules of a 16-bit
        # model in float32 (Wan's time embedding), which a first-parameter check would take for the whole
        floating = [t for t in [*component.parameters(), *component.buffers()] if t.is_floating_point()]
        if all(t.dtype == dtype for t in floating):
            continue
        module = component if id(component) in owned_ids else copy.deepcopy(component)
        pipe.register_modules(**{name: module.to(dtype)})


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
