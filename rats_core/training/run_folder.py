"""The run folder: claiming it (an exclusive lock), checking that every node of a multi-node job sees it,
finding what to resume, writing the resolved config, and leaving nothing behind when a run fails before
training starts."""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from rats_core.errors import ConfigError, TrainingError
from rats_core.training import checkpoint as ckpt


class RunLock:
    """An exclusive lock on the output folder: a second run pointed at it is refused."""

    FILENAME = ".rats.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.FILENAME
        self.fh = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise TrainingError(
                f"{self.path.parent} is in use by a running training ({holder}); "
                "wait for it to finish or choose another output_dir=..."
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def _first_missing(folder: Path) -> Path | None:
    """The outermost ancestor of ``folder`` (or itself) that does not exist yet."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir {folder}: not writable ({exc.strerror or exc})") from None


class RunFolder:
    """``output_dir`` as a training run uses it (rank 0 claims and writes it)."""

    #: written by rank 0 at the start of a multi-rank run; every rank must read it back (a shared folder)
    START_TOKEN = ".rats.start"
    #: files setup writes, removed again when setup fails
    SETUP_FILES = ("base.safetensors", ".base.safetensors.tmp", ".config.yaml.tmp", "config.yaml", START_TOKEN,
                   START_TOKEN + ".tmp")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock: RunLock | None = None
        #: the outermost folder claim() created for the run, removed again if setup fails
        self.created: Path | None = None

    def claim(self) -> None:
        """Create the folder if needed, check it is writable, and lock it against a second run."""
        self.created = _first_missing(self.path)
        _check_writable(self.path)
        self.lock = RunLock(self.path)
        self.lock.acquire()
        ckpt.remove_partial_saves(self.path)  # left by a process killed while saving; ours now, under the lock

    def write_start_token(self) -> str:
        """A fresh token in ``.rats.start`` (rank 0, after claiming the folder); returns it."""
        token = uuid.uuid4().hex
        tmp = self.path / (self.START_TOKEN + ".tmp")
        tmp.write_text(token)
        os.replace(tmp, self.path / self.START_TOKEN)
        return token

    def sees_start_token(self, token: str, wait: float | None = None) -> bool:
        """Whether this process reads ``token`` in its ``output_dir``. A network filesystem may show a file
        another machine just wrote only after its attribute cache expires (NFS: up to 30-60 s), so look again
        for ``wait`` seconds (default 60, ``RATS_SHARED_FOLDER_WAIT``) before concluding it is not shared."""
        if wait is None:
            wait = float(os.environ.get("RATS_SHARED_FOLDER_WAIT", "60"))
        end = time.monotonic() + wait
        while True:
            try:
                if (self.path / self.START_TOKEN).read_text().strip() == token:
                    return True
            except OSError:
                pass
            if time.monotonic() >= end:
                return False
            time.sleep(0.25)

    def resume_target(self, cfg: Any) -> Path | None:
        """The checkpoint ``train.resume`` asks for: the newest (``auto``), none (``never``, refusing a
        folder that has some), or a given folder."""
        mode = cfg.train.resume
        latest = ckpt.latest_checkpoint(self.path)
        if mode == "auto":
            return latest
        if mode == "never":
            if latest is not None:
                raise ConfigError(
                    f"output_dir {self.path} already holds checkpoints (latest {latest.name}); "
                    "use train.resume=auto to continue it, or choose another output_dir=..."
                )
            return None
        path = cfg.resolve_path(mode) if not os.path.isabs(mode) else Path(mode)
        if not path.is_dir() or not (path / "state.json").is_file():
            raise ConfigError(f"train.resume: {path} is not a rats checkpoint folder (expected state.json inside)")
        return path

    def write_config(self, cfg: Any) -> None:
        """``config.yaml``: the resolved config (:func:`resolved_config`)."""
        resolved = resolved_config(cfg, self.path)
        text = "# resolved configuration of this run; rerun with: rats-run config.yaml\n" + yaml.safe_dump(
            resolved, sort_keys=False
        )
        tmp = self.path / ".config.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / "config.yaml")

    def release(self, *, setup_failed: bool) -> None:
        """Unlock. After a failed setup, the run that held the lock removes what setup wrote (the lock
        file last, while still held), then the folders it created, if they are empty."""
        remove = setup_failed and self.created is not None and self.lock is not None
        if remove:
            for name in (*self.SETUP_FILES, RunLock.FILENAME):
                try:
                    (self.path / name).unlink()
                except OSError:
                    pass
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if remove:
            folder = self.path
            while True:
                try:
                    folder.rmdir()
                except OSError:  # not empty: someone else's files, keep them
                    return
                if folder == self.created or folder.parent == folder:
                    return
                folder = folder.parent


def unshared_message(reports: list[dict[str, Any]]) -> str:
    """The one message every rank stops with when some node does not see rank 0's run folder. ``reports``:
    per rank (in rank order) ``{"seen", "node", "host", "path"}``."""
    main = reports[0]
    blind: dict[int, list[int]] = {}
    for rank, r in enumerate(reports):
        if not r["seen"]:
            blind.setdefault(r["node"], []).append(rank)
    node = min(blind)
    ranks = blind[node]
    first = reports[ranks[0]]
    token = Path(first["path"]) / RunFolder.START_TOKEN
    others = f" (and {len(blind) - 1} more node{'s' if len(blind) > 2 else ''})" if len(blind) > 1 else ""
    return (f"output_dir must be one folder that every node sees: node {node} (host {first['host']}, "
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}) does not see {token}, which rank 0 "
            f"on node {main['node']} (host {main['host']}) has just written into {main['path']}{others}. Put "
            "output_dir on a filesystem every node mounts at the same path (NFS, Lustre, a cluster's shared "
            "home); nothing was trained")


def resolved_config(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """The config as a run folder's ``config.yaml`` holds it: ``output_dir`` is the folder, and paths
    that name existing files are made absolute (the YAML's were relative to its own folder; the run
    folder lives elsewhere)."""
    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            candidate = cfg.resolve_path(value)
            if candidate.exists():
                return str(candidate.resolve())
        return value

    resolved = cfg.to_dict()
    resolved["output_dir"] = str(run_dir)
    for section, key in (("data", "prompts"), ("data", "eval_prompts"), ("eval", "prompts")):
        resolved[section][key] = absolute(resolved[section][key])
    resolved["backbone"]["path"] = absolute(resolved["backbone"].get("path"))
    for r in resolved["rewards"]:
        if "path" in r:
            r["path"] = absolute(r["path"])
    return resolved
