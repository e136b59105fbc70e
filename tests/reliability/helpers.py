"""Helpers for the reliability catalogue (loaded by conftest.py as ``rats_reliability``): a tiny toy config, the CLI in-process and as real
subprocesses, and the checks every bad-input case makes (exit 2, one ``error:`` block, no traceback,
nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: a toy run that trains in well under a second once imports are done
BASE: dict[str, Any] = {
    "seed": 0,
    "backbone": {"name": "toy"},
    "student": {"steps": 2, "grad_steps": 1},
    "teacher": {"kind": "ema", "steps": 6, "ema_decay": 0.9},
    "rewards": [{"name": "toy-brightness", "weight": 10.0}],
    "gate": {"name": "sigmoid", "tau": 0.05},
    "horizons": {"name": "all"},
    "train": {"steps": 8, "batch_size": 2, "lr": 0.01, "checkpoint_every": 2, "progress": False,
              "device": "cpu"},
    "data": {"prompts": ["a cat", "a dog", "a bird", "a fish", "a cow"]},
    "eval": {"at_end": False},
}


def config_dict(**sections: Any) -> dict[str, Any]:
    """BASE with ``sections`` merged in (dict sections are updated, others replaced)."""
    data = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def write_config(folder: Path, name: str = "cfg.yaml", **sections: Any) -> Path:
    data = config_dict(**sections)
    data.setdefault("output_dir", str(folder / "run"))
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_clean_error(rc: int, err: str, *needles: str) -> None:
    """Exit 2, the message starts with ``error:``, names what is wrong, and no traceback."""
    assert rc == 2, f"exit {rc}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def cli(capsys, *argv: Any) -> tuple[int, str, str]:
    """``rats ARGV`` in-process: (exit status, stdout, stderr)."""
    from rats_core.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_run(capsys, *argv: Any) -> tuple[int, str, str]:
    """``rats-run ARGV`` in-process."""
    from rats_core.cli import run_main

    rc = run_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def script(name: str) -> list[str]:
    """The installed console script (``rats``, ``rats-run``) next to this interpreter."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return [str(path)]
    entry = "run_main" if name == "rats-run" else "main"  # pragma: no cover - not installed as scripts
    return [sys.executable, "-c", f"import sys; from rats_core.cli.main import {entry}; sys.exit({entry}())"]


def run_proc(argv: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=subprocess_env(**env),
                          cwd=REPO)


def start_proc(argv: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(**env), cwd=REPO)


def wait_for(predicate, timeout: float = 120, interval: float = 0.02, proc: subprocess.Popen | None = None):
    """Poll ``predicate`` until true; fail if the process ends first or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before the condition held:\n{err[-3000:]}")
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def metric_lines(run_dir: Path) -> int:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def final_weights(run_dir: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    from rats_core.training import checkpoint as ckpt

    folder = Path(run_dir) / "checkpoints" / ckpt.step_name(step)
    return {part: load_file(str(folder / f"{part}.safetensors")) for part in ("student", "teacher")}


def assert_same_weights(a: dict, b: dict) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
