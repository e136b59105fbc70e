"""rats — Reward-Aware Trajectory Shaping for few-step text-to-image generators."""

from ._compat import patch_cpu_torchvision as _patch_cpu_torchvision
from ._compat import quiet_deepspeed_env as _quiet_deepspeed_env
from .threads import passive_openmp_wait as _passive_openmp_wait

# Before torch is imported (OpenMP reads it then): no spinning threads on a busy CPU (rats_core/threads.py).
_passive_openmp_wait()
# Must run before anything imports transformers / diffusers / peft / open_clip.
_patch_cpu_torchvision()
_quiet_deepspeed_env()

from .hookspecs import hookimpl, hookspec  # noqa: E402

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
