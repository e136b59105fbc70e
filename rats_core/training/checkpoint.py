"""Atomic, pickle-free checkpoints.

Layout of ``OUTPUT_DIR/checkpoints/step_00000100/``::

    student.safetensors          trainable student weights (all of them, gathered under ZeRO-3)
    teacher.safetensors          the teacher's tracked weights (EMA state)
    optimizer/rank_00000.pt      each rank's optimizer (and LR scheduler) state, plain tensors and
                                 numbers only: read back with ``torch.load(weights_only=True)``
    state.json                   step, config digest, metrics needed to continue

A checkpoint is written into a temporary sibling folder and renamed into place when complete, so a
run killed while saving never leaves a folder that resume would pick up half-written.
"""

from __future__ import annotations

import enum
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from rats_core.errors import CheckpointError

STEP_RE = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


# ----------------------------------------------------------------------------- safe state dicts


def _is_plain(v: Any) -> bool:
    if isinstance(v, (torch.Tensor, int, float, bool, str, type(None))) and not isinstance(v, enum.Enum):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _is_plain(x) for k, x in v.items())
    return False


#: top-level entries of DeepSpeed's ZeRO optimizer state that are not plain data but configuration the
#: live optimizer rebuilds from the run's settings: its LossScaler object, the stage enum, each
#: parameter's fragment addresses, partition-group and universal-checkpoint metadata
LIVE_ENTRIES = frozenset(
    {"loss_scaler", "zero_stage", "param_slice_mappings", "ds_zero_partition_groups", "universal_checkpoint_info"}
)


def plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state to save: every entry, except DeepSpeed's configuration entries
    (:data:`LIVE_ENTRIES`) that resume takes from the live optimizer. Any other entry that is not plain
    data (tensors, numbers, strings, lists, dicts) is refused with a CheckpointError: dropping it would
    silently reset it to a fresh optimizer's value on resume."""
    out = {}
    for key, value in state.items():
        if _is_plain(value):
            out[key] = value
        elif key not in LIVE_ENTRIES:
            raise CheckpointError(
                f"the optimizer state has an entry '{key}' of type {type(value).__name__} that a pickle-free "
                "checkpoint cannot hold; resume would silently reset it. Use an optimizer whose state_dict() "
                "is tensors and plain data (torch.optim.AdamW is), or report this with the optimizer's name"
            )
    return out


def restore_state(saved: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The saved optimizer state, with only :data:`LIVE_ENTRIES` taken from the live optimizer; a live
    entry the checkpoint lacks is refused, never refilled from a fresh optimizer."""
    missing = sorted(str(k) for k in live if k not in saved and k not in LIVE_ENTRIES)
    if missing:
        raise CheckpointError(
            f"the checkpoint's optimizer state lacks {', '.join(repr(k) for k in missing)}, which this run's "
            "optimizer has; resuming would restart it from scratch. Resume with the optimizer and DeepSpeed "
            "settings the checkpoint was written with, or start a new output_dir"
        )
    merged = {k: live[k] for k in LIVE_ENTRIES if k in live}
    merged.update(saved)
    return merged


# ----------------------------------------------------------------------------- random number generators


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's torch (CPU and ``device``'s CUDA), numpy and python RNG states as plain data, so
    a resumed run draws what an uninterrupted one draws (LoRA dropout, any plugin's randomness)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(internal), gauss_next],
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved (a CheckpointError if it is malformed)."""
    import random

    import numpy as np

    try:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], device)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's random number generator state is malformed ({exc})") from None


def save_tensor_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    except Exception as exc:
        # safetensors reports a full disk as SafetensorError("... I/O error: ... (os error 28)"):
        # make it the OSError it is, so callers handle every failed write alike
        m = re.search(r"\(os error (\d+)\)", str(exc))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


class TensorFile(Mapping):
    """A safetensors file read one tensor at a time: ``file[name]`` reads that tensor (a fresh CPU tensor),
    ``file.shapes[name]`` its shape without reading it. What a rank holds of a checkpoint or of the base
    weights is then at most one full tensor at a time (under ZeRO-3 it keeps only its shard of each)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self._names = list(f.keys())
                self.shapes = {n: tuple(f.get_slice(n).get_shape()) for n in self._names}
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{self.path}: tensor '{name}' is not readable ({exc})") from None

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def open_tensor_file(path: Path) -> TensorFile:
    """A safetensors file to read tensor by tensor (:class:`TensorFile`), its names and shapes checked now."""
    return TensorFile(path)


def save_torch_plain(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    Path(path).write_bytes(buf.getvalue())


def load_torch_plain(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain data: a pickle carrying code is refused unrun."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused to load (only tensors and plain data are accepted; {type(exc).__name__})"
        ) from None


# ----------------------------------------------------------------------------- atomic folders


def begin_save(output_dir: Path, step: int) -> Path:
    """A fresh temporary folder next to where the checkpoint will live."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_{step_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / "optimizer").mkdir()
    return tmp


def remove_partial_saves(output_dir: Path) -> None:
    """Remove the ``.tmp_*`` and ``.old_*`` folders a process killed while saving or pruning left behind.
    Only for the process that holds the run folder's lock: no save is under way then."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith((".tmp_step_", ".old_step_")):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_save(tmp: Path, output_dir: Path, step: int, keep: int) -> Path:
    """Make ``tmp`` the checkpoint for ``step`` atomically, then prune old ones down to ``keep``."""
    final = checkpoint_dir(output_dir) / step_name(step)
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. interrupted right after a periodic save)
        old = final.with_name(f".old_{final.name}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for _, p in list_checkpoints(output_dir)[:-keep]:
        _remove_checkpoint(p)
    return final


def _remove_checkpoint(folder: Path) -> None:
    """Rename first, then delete: a process killed while deleting leaves a ``.old_`` folder that
    nothing reads, never a half-deleted ``step_*`` folder that looks like a checkpoint."""
    trash = folder.with_name(f".old_{folder.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a report is for everyone who can read the run folder (umask applies)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(ckpt) / "state.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: not a rats checkpoint (no state.json)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt}/state.json: corrupt ({exc})") from None


def check_tensors(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], source: Path,
                  names: list[str]) -> None:
    """Every name in ``tensors`` with the expected shape, or a CheckpointError naming the first misfit."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise CheckpointError(
            f"{source}: lacks {len(missing)} trained tensors (e.g. '{missing[0]}'); "
            "was it written by a run with another backbone or LoRA setting?"
        )
    have = getattr(tensors, "shapes", None) or {n: tuple(tensors[n].shape) for n in names}
    for n in names:
        if tuple(shapes[n]) != tuple(have[n]):
            raise CheckpointError(
                f"{source}: tensor '{n}' has shape {tuple(have[n])}, the model expects {tuple(shapes[n])} "
                "(checkpoint of a different architecture)"
            )


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path, names: list[str]) -> None:
    """Copy ``tensors`` into ``module``'s parameters ``names``; shape mismatches name the tensor."""
    params = dict(module.named_parameters())
    check_tensors(tensors, {n: tuple(params[n].shape) for n in names}, source, names)
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[n].to(params[n].dtype))
