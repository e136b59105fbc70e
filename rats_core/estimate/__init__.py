"""``rats estimate``: per-rank memory of a training run, before anything is downloaded or allocated.

Model states come exactly from the architecture: every part (denoiser, text encoders, VAE, reward towers)
is built on the meta device from its config — a local diffusers folder's ``config.json`` files when
``backbone.path`` is one, otherwise the architecture shipped in ``rats_plugins.archs`` — so parameter
counts are exact and nothing is allocated. Bytes per parameter follow the trainer's precision policy
(:data:`POLICY`), and the ZeRO stage decides what is divided by the number of ranks.

Activations come from a trace on the meta device at the config's real resolution and batch: the forward
passes that keep a graph in a RATS step (the student's gradient steps, the differentiable VAE decode,
each weighted reward on the decoded images) run on meta tensors while ``torch.autograd.graph.
saved_tensors_hooks`` adds up the bytes autograd keeps for backward (each storage once, parameters
excluded). Attention is counted as a fused (flash / memory-efficient) kernel keeps it — q, k, v, the
output and a float32 log-sum-exp — which is what PyTorch uses on CUDA in bf16 and on CPU. Gradient
checkpointing is followed as the trainer does it: a checkpointed call keeps only its inputs, and the
backward recomputes one checkpointed unit at a time (its saved set is added once, the largest one).

What is *not* in the figures: the CUDA context and allocator fragmentation (add 1–3 GB on a GPU), the
transient working memory of single kernels (e.g. cuDNN convolution workspaces), and DeepSpeed buffers
other than the ZeRO reduce bucket. Backbones and rewards without a shipped architecture (the toy and
digits models, third-party plugins) are built for real on the CPU and traced the same way.


Modules: ``architectures`` (parts built on the meta device), ``tracing`` (the activation trace),
``measure`` (a config's models and their traces), ``memory`` (the estimate), ``tables`` (output and the command).

May import: ``rats_core.training`` and everything below it. Never ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: the public names, each from its module; imported on first use, so that ``import rats_core.estimate``
#: (``rats validate`` asks for one line of it) imports no torch until a figure is needed
PUBLIC = {
    "architectures": ("REWARD_ARCHS", "LORA_TARGETS", "load_arch", "arch_from_folder", "build_part", "count_params",
                      "lora_trainable"),
    "tracing": ("Trace", "trace"),
    "measure": ("denoiser_call", "text_length", "video_decode", "quiet_libraries"),
    "memory": ("GiB", "POLICY", "ACTIVATIONS_METHOD", "CARDS_GB", "HEADROOM", "Part", "Estimate", "estimate",
               "student_grad_evals"),
    "tables": ("format_table", "markdown", "validate_line", "one_line", "gpu_config", "cmd_estimate", "default_ranks"),
}
_WHERE = {name: module for module, names in PUBLIC.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
