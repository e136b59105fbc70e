"""Finding reward weights (a local file or folder, or the Hugging Face cache) and loading them safely.

Resolution order for a ``path`` option:

1. an existing local file or folder is used as it is;
2. otherwise a Hugging Face repo id (``owner/name``; ``None`` means the official one) is looked up in
   the local cache first (no network);
3. only if it is not cached and the hub is not offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)
   is it downloaded; the hub client's own time-outs apply, so a dead network fails fast.

Whatever fails raises :class:`~rats_core.errors.WeightsNotFoundError` with one message naming what to
download and which config key to point at it. Pickled checkpoints are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

from rats_core.errors import CheckpointError, WeightsNotFoundError
from rats_core.weights import offline_reason

from .locate import WeightsHint, folder_missing, hub_offline, is_hub_id  # noqa: F401  (re-exported: the loaders' names)

T = TypeVar("T")

def resolve_file(path: str | None, hint: WeightsHint) -> Path:
    """A local checkpoint file for ``path``: a file, a folder holding ``hint.filename``, or a hub repo."""
    assert hint.filename is not None
    if path is None:
        if hint.url:  # no hub repo to look in
            raise hint.error(f"the reward's `{hint.option}` option is not set")
        return _hub_file(hint.repo_id, hint.filename, hint)
    local = Path(path).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        candidate = local / hint.filename
        if candidate.is_file():
            return candidate
        raise hint.error(f"folder {local} has no {hint.filename}")
    if not is_hub_id(path):
        raise hint.error(f"no file {local}")
    return _hub_file(path, hint.filename, hint)


def _hub_file(repo_id: str, filename: str, hint: WeightsHint) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception:  # not cached (or a bad id): only the download below can still help
        pass
    if hub_offline():
        raise hint.error(f"{repo_id}/{filename} is not in the Hugging Face cache and {offline_reason()}")
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:
        raise hint.error(f"could not download {repo_id}/{filename}: {_short(exc)}") from None


def from_pretrained(load: Callable[..., T], path: str, hint: WeightsHint, **kwargs: Any) -> T:
    """Call a transformers ``from_pretrained``-style ``load`` on a local folder or a hub id, cache first.

    Missing files become :class:`WeightsNotFoundError`; ``trust_remote_code`` is never passed.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        try:
            return load(str(local), local_files_only=True, **kwargs)
        except OSError as exc:
            raise hint.error(f"{local} is not a complete folder: {_short(exc)}") from None
    if local.exists():
        raise hint.error(f"{local} is a file; a folder or a Hugging Face repo id is needed")
    if not is_hub_id(path):
        raise hint.error(f"no folder {local}")
    missing = folder_missing(path, hint)
    if missing:  # transformers 5's tokenizers load "empty" from missing files instead of raising: ask first
        raise WeightsNotFoundError(missing)
    try:
        return load(path, local_files_only=True, **kwargs)
    except OSError:
        pass
    if hub_offline():
        raise hint.error(f"{path} is not in the Hugging Face cache and {offline_reason()}")
    try:
        return load(path, **kwargs)
    except OSError as exc:
        raise hint.error(f"could not download {path}: {_short(exc)}") from None


def load_state_dict(path: Path) -> dict[str, Any]:
    """Read a checkpoint file without executing pickled code (``weights_only=True``), or safetensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_short(exc)})") from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be loaded as plain weights with torch.load(weights_only=True) ({_short(exc)})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop a wrapper prefix (e.g. DDP's ``module.``) when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
