"""Fixtures for the reliability catalogue; the helpers live in helpers.py, importable from the test
modules as ``rats_reliability`` (pytest runs with --import-mode=importlib, so no sys.path games)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if "rats_reliability" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("rats_reliability", Path(__file__).with_name("helpers.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["rats_reliability"] = _mod
    _spec.loader.exec_module(_mod)

from rats_reliability import BASE, final_weights, run_proc, script, write_config  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """BASE trained start to finish, uninterrupted, by a real ``rats-run`` (the weights every
    interrupted-and-resumed run must end with)."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_config(folder)
    res = run_proc([*script("rats-run"), str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    return final_weights(folder / "run", BASE["train"]["steps"])
