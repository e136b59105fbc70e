"""Import-time guards for the installed stack.

Kept in one place that runs before anything imports transformers, diffusers, peft or open_clip. They run
lazily (:func:`install_import_guards`): ``import rats_core`` must not import torch (about 2 s), so that
``rats --help``, ``rats plugins`` and config errors answer at once; each guard runs just before the
import it protects.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import threading

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


class _GuardFinder:
    """A ``sys.meta_path`` entry that finds nothing: it runs a guard the first time ``torchvision`` or
    ``deepspeed`` is looked up (by ``import`` or ``importlib.util.find_spec``), then lets the ordinary
    finders import it."""

    GUARDS = {"torchvision": patch_cpu_torchvision, "deepspeed": quiet_deepspeed_env}

    def __init__(self) -> None:
        self.pending = dict(self.GUARDS)
        self.lock = threading.RLock()
        self.running = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        with self.lock:
            guard = self.pending.pop(fullname, None)
            if guard is None or self.running:  # the guard's own find_spec("torchvision")
                return None
            self.running = True
            try:
                guard()
            finally:
                self.running = False
                if not self.pending and self in sys.meta_path:
                    sys.meta_path.remove(self)
        return None


def install_import_guards() -> None:
    """Run :func:`patch_cpu_torchvision` before torchvision is first imported and
    :func:`quiet_deepspeed_env` before deepspeed is, without importing torch now. A module already
    imported gets its guard at once (as ``import rats_core`` did before the guards were lazy)."""
    if any(isinstance(f, _GuardFinder) for f in sys.meta_path):
        return
    finder = _GuardFinder()
    for name in list(finder.pending):
        if name in sys.modules:
            finder.pending.pop(name)()
    if "torch" in sys.modules:  # torch is loaded anyway: nothing to save, guard as before
        for name in list(finder.pending):
            finder.pending.pop(name)()
    if finder.pending:
        sys.meta_path.insert(0, finder)


class _AfterImport:
    """A ``sys.meta_path`` entry that, the first time module ``name`` is imported, runs ``fn(module)`` right
    after the module has executed (then leaves ``sys.meta_path``)."""

    def __init__(self, name: str, fn) -> None:
        self.name, self.fn = name, fn

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, fn = spec.loader.exec_module, self.fn

        def exec_module(module):
            run(module)
            fn(module)

        spec.loader.exec_module = exec_module  # this module's loader instance only
        return spec


def after_import(name: str, fn) -> None:
    """``fn(module)`` once module ``name`` is imported: now if it is, else right after its first import
    (so that configuring a library does not import it, and torch with it, before it is needed)."""
    if name in sys.modules:
        fn(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, fn))
