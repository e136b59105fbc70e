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
    from rats_core.registry import plugins

    plugins.reset()
    yield plugins
    plugins.reset()


#: the CPU torchvision guard of ENV.md, written out so that a process can load an export with plain
#: diffusers without importing rats (CPU installs need it; a GPU install with a matching torchvision
#: leaves it unused)
TORCHVISION_GUARD = """\
import glob as _glob, os as _os, importlib.util as _ilu, torch as _torch
_spec = _ilu.find_spec("torchvision")
if _spec is not None:
    _ok = False
    for _lib in _glob.glob(_os.path.join(list(_spec.submodule_search_locations)[0], "_C*.so")):
        try:
            _torch.ops.load_library(_lib); _ok = True
        except (OSError, RuntimeError):
            pass
    if not _ok:
        _keep = _torch.library.Library("torchvision", "FRAGMENT")
        _keep.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _keep.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
"""

_NO_RATS = "\nimport sys as _sys\nassert not any(m.split('.')[0] in ('rats_core', 'rats_plugins') for m in _sys.modules), " \
           "'the script imported rats'\n"


@pytest.fixture
def run_without_rats():
    """``run_without_rats(script, *args, cwd=None, timeout=600)``: run ``script`` in a fresh Python that
    never imports rats (checked at its end), after the CPU torchvision guard; returns the
    CompletedProcess (text output captured)."""
    import subprocess
    import sys

    def run(script: str, *args: str, cwd=None, timeout: int = 600):
        return subprocess.run([sys.executable, "-c", TORCHVISION_GUARD + script + _NO_RATS, *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)

    return run
