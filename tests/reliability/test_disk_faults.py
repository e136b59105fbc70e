"""A full disk or a read-only output folder while saving: the run stops with one clear message, the
partial save is gone, the previous checkpoint stays usable, and the run resumes once there is space.

The disk is filled by monkeypatching one write to raise ``OSError(ENOSPC)`` (in-process), and for
real with ``RLIMIT_FSIZE`` in a subprocess (writes past the limit fail with EFBIG, as they would on
a full disk; no root, no mount needed).
"""

from __future__ import annotations

import errno
import os
import sys
import textwrap
from pathlib import Path

import pytest

from rats_core.training import checkpoint as ckpt
from rats_core.errors import TrainingError
from rats_reliability import (
    BASE,
    assert_clean_error,
    assert_same_weights,
    cli_run,
    final_weights,
    run_proc,
    write_config,
)


def _enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fail_once(monkeypatch, module, attr: str, at_call: int, error: OSError, partial: bool = True):
    """Make the ``at_call``-th call of ``module.attr`` fail like a full disk (after writing a few bytes)."""
    real = getattr(module, attr)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            target = next((a for a in args if isinstance(a, (str, Path))), None)
            if partial and target is not None and Path(target).parent.is_dir() and not Path(target).is_dir():
                Path(target).write_bytes(b"partial")
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, wrapper)
    return real


# what fails, at which call: the 2nd checkpoint (step 4) dies at each of its writes in turn
SAVE_FAULTS = {
    "optimizer-file": (ckpt, "save_torch_plain", 2),
    "student-safetensors": (ckpt, "save_tensor_file", 3),
    "teacher-safetensors": (ckpt, "save_tensor_file", 4),
    "fsync": (ckpt, "_fsync_tree", 2),
    "commit-rename": (ckpt, "commit_save", 2),
}


@pytest.mark.parametrize("where", list(SAVE_FAULTS))
def test_disk_full_while_saving(capsys, tmp_path, monkeypatch, reference_run, where):
    module, attr, at_call = SAVE_FAULTS[where]
    cfg = write_config(tmp_path)
    real = _fail_once(monkeypatch, module, attr, at_call, _enospc())
    rc, _, err = cli_run(capsys, cfg)
    run = tmp_path / "run"
    previous = ckpt.checkpoint_dir(run) / ckpt.step_name(2)
    assert_clean_error(rc, err, "could not save checkpoint step_00000004: No space left on device",
                       f"the previous checkpoint {previous} is intact", "run the same command again")
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert not any(p.name.startswith(".tmp_") for p in ckpt.checkpoint_dir(run).iterdir())  # partial save removed
    # space again: the same command resumes from step 2 and ends where an uninterrupted run ends
    monkeypatch.setattr(module, attr, real)
    rc, _, err = cli_run(capsys, cfg)
    assert rc == 0, err
    assert "resumed from" in err and "step 2" in err
    assert_same_weights(final_weights(run, BASE["train"]["steps"]), reference_run)


def test_read_only_output_folder_while_saving(capsys, tmp_path, monkeypatch):
    cfg = write_config(tmp_path)
    _fail_once(monkeypatch, ckpt, "begin_save", 2, OSError(errno.EROFS, os.strerror(errno.EROFS)), partial=False)
    rc, _, err = cli_run(capsys, cfg)
    assert_clean_error(rc, err, "could not save checkpoint step_00000004: Read-only file system",
                       "step_00000002 is intact")


def test_disk_full_before_any_checkpoint(tmp_path, monkeypatch):
    cfg = write_config(tmp_path)
    _fail_once(monkeypatch, ckpt, "save_tensor_file", 1, _enospc())
    from rats_core.config import load_config
    from rats_core.training.trainer import train

    with pytest.raises(TrainingError, match="could not save checkpoint step_00000002.*no checkpoint had been saved yet"):
        train(load_config(cfg))


def test_disk_full_while_writing_metrics(capsys, tmp_path, monkeypatch):
    from rats_plugins.callbacks import MetricsJsonl

    real_start = MetricsJsonl.fit_start

    class FillsUp:  # metrics.jsonl's file handle, failing on its third line
        def __init__(self, fh):
            self.fh, self.name, self.lines = fh, fh.name, 0

        def write(self, text):
            self.lines += 1
            if self.lines == 3:
                raise _enospc(self.name)
            return self.fh.write(text)

        def flush(self):
            self.fh.flush()

        def close(self):
            self.fh.close()

    def fit_start(self, state):
        real_start(self, state)
        self.fh = FillsUp(self.fh)

    monkeypatch.setattr(MetricsJsonl, "fit_start", fit_start)
    rc, _, err = cli_run(capsys, write_config(tmp_path))
    assert_clean_error(rc, err, "could not write metrics.jsonl: No space left on device",
                       "step_00000002 is intact")


def test_disk_full_while_writing_the_run_files(capsys, tmp_path, monkeypatch):
    """At setup (config.yaml): nothing half-written is left, and no traceback."""
    from rats_core.training.run_folder import RunFolder

    def full(self, cfg):
        raise _enospc(self.path / ".config.yaml.tmp")

    monkeypatch.setattr(RunFolder, "write_config", full)
    rc, _, err = cli_run(capsys, write_config(tmp_path, output_dir=str(tmp_path / "new")))
    assert_clean_error(rc, err, "could not write the run files", "No space left on device")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- for real: RLIMIT_FSIZE

_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if sys.argv[2] == "safetensors":
        import torch
        from rats_core.training.checkpoint import save_tensor_file
        try:
            save_tensor_file({"w": torch.zeros(100_000)}, sys.argv[3])
        except OSError as exc:
            print(f"OSError errno={exc.errno} {exc.strerror}")
    else:
        from rats_core.cli import run_main
        sys.exit(run_main(sys.argv[3:]))
""")


def test_safetensors_write_failure_is_an_oserror(tmp_path):
    """safetensors reports a failed write as SafetensorError('... (os error 27)'); the checkpoint
    module turns it into the OSError it is, so the trainer handles it like any other write."""
    res = run_proc([sys.executable, "-c", _LIMITED, "10000", "safetensors", str(tmp_path / "w.safetensors")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"OSError errno={errno.EFBIG}" in res.stdout


def test_real_write_limit_while_saving_subprocess(tmp_path):
    """A real failing write: files may not grow past 20 kB, and the optimizer state is bigger."""
    cfg = write_config(tmp_path)
    res = run_proc([sys.executable, "-c", _LIMITED, "20000", "run", str(cfg)])
    assert_clean_error(res.returncode, res.stderr, "could not save checkpoint step_00000002: File too large",
                       "no checkpoint had been saved yet")
    assert not any(p.name.startswith(".tmp_") for p in ckpt.checkpoint_dir(tmp_path / "run").iterdir())
