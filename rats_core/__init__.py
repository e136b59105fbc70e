"""rats — Reward-Aware Trajectory Shaping for few-step text-to-image generators."""

from rats_core._compat import install_import_guards as _install_import_guards
from rats_core.training.threads import passive_openmp_wait as _passive_openmp_wait

# Before torch is imported (OpenMP reads it then): no spinning threads on a busy CPU (rats_core/training/threads.py).
_passive_openmp_wait()
# The CPU-torchvision guard must run before anything imports transformers / diffusers / peft / open_clip;
# it runs when torchvision is first looked up, so that importing rats does not import torch.
_install_import_guards()

from rats_core import _moved  # noqa: E402
from rats_core.registry.hookspecs import hookimpl, hookspec  # noqa: E402

# Plugins written against the flat layout of 0.1.0 (rats_core.sigmas, rats_core.plugins, ...) keep importing.
_moved.install()

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
