"""Shared fixtures. Importing rats_core first installs the CPU-torchvision guard (see ENV notes)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import rats_core  # noqa: E402,F401  (must precede transformers/diffusers imports)
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager loaded anew for this test and reset afterwards."""
    from rats_core import plugins

    plugins.reset()
    yield plugins
    plugins.reset()
