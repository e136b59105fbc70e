"""Finding and loading a backbone's weights, never hanging on the network.

Heavy libraries (diffusers, transformers, huggingface_hub) are imported inside functions so that
``rats plugins`` and ``rats validate`` stay fast and work without them.

Weights are found in this order:

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
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlparse

from rats_core.errors import ConfigError, WeightsNotFoundError
from rats_core.weights import offline_reason

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: pipeline class (model_index.json ``_class_name``) → the rats backbone that handles it
PIPELINE_BACKBONE = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
    "FluxPipeline": "flux",
    "StableDiffusion3Pipeline": "sd35",
    "WanPipeline": "wan",
}


#: pipeline components no backbone uses, never downloaded (the 1.2 GB safety checker among them)
NOT_DOWNLOADED = ("safety_checker", "feature_extractor", "image_encoder")


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
    skip: Sequence[str] = NOT_DOWNLOADED,
) -> Source:
    """A local pipeline folder holding every part, or WeightsNotFoundError with what to do. ``skip``:
    components a Hub download leaves out."""
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
        raise WeightsNotFoundError(_no_folder(backbone, source, default_id))
    else:
        folder = _from_hub(source, backbone, parts, revision=revision, variant=variant, skip=skip)
        found = Source(source, folder, backbone)
    check_parts(found, parts)
    check_pipeline_class(found)
    return found


def _no_folder(backbone: str, source: str, default_id: str) -> str:
    return (f"{backbone}: no such folder: {source}. Set backbone.path to a diffusers pipeline folder "
            f"(e.g. {_override_hint(backbone)}) or a Hub id (default: {default_id})")


def _not_cached(backbone: str, model_id: str) -> str:
    return (f"{backbone}: weights for '{model_id}' are not in the local Hugging Face cache and {offline_reason()}. "
            f"Download them where there is network (`hf download {model_id}`), or use a local diffusers "
            f"folder: {_override_hint(backbone)}")


def missing_weights(path: str | None, default_id: str, backbone: str, revision: str | None = None) -> list[str]:
    """What :func:`locate_weights` would say is missing, when that is plain without loading anything and
    without importing torch or diffusers: a local path that does not exist, or a Hub id with no pipeline in
    the local cache while nothing can be downloaded. Empty otherwise (found, or only loading can tell)."""
    source = str(path) if path else default_id
    if Path(source).expanduser().exists():
        return []
    if _looks_local(source):
        return [_no_folder(backbone, source, default_id)]
    if not _offline():
        return []
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "model_index.json", revision=revision)
    except Exception:  # noqa: BLE001 - a malformed id: locate_weights says what is wrong
        return []
    return [] if isinstance(cached, str) else [_not_cached(backbone, source)]


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
        raise WeightsNotFoundError(_not_cached(backbone, model_id)) from None
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
