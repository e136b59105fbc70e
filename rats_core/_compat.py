"""Import-time guards for the installed stack.

Kept in one place that runs before anything imports transformers, diffusers, peft or open_clip.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

# Held for the life of the process: dropping the Library object would unregister the schemas.
_TORCHVISION_FRAGMENT = None


def patch_cpu_torchvision() -> bool:
    """Let torchvision's pure-Python parts import when its compiled ops cannot load.

    The registry's torchvision wheels are CUDA builds; beside a CPU torch their ``_C`` extension
    fails to load and torchvision then registers fake kernels for ``nms``/``qnms`` without checking,
    which breaks ``import transformers``'s CLIP, diffusers' UNet, peft and open_clip. Defining the
    two op schemas first lets everything that does not need detection ops import and run.

    Does nothing when torchvision is absent, already imported, or its extension loads (a matching
    GPU install is left untouched). Returns True when the schemas were defined.
    """
    global _TORCHVISION_FRAGMENT
    if _TORCHVISION_FRAGMENT is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    folder = list(spec.submodule_search_locations)[0]
    for lib_path in glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd")):
        try:
            torch.ops.load_library(lib_path)
            return False
        except (OSError, RuntimeError):
            pass
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        return False
    _TORCHVISION_FRAGMENT = lib
    return True


def quiet_deepspeed_env() -> None:
    """Defaults that keep DeepSpeed quiet and fast to start on a CPU-only machine."""
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:  # pragma: no cover
        pass
