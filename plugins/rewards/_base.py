"""What the real reward models share: frozen in eval mode, a dtype option, a per-prompt-list cache, and
float32 for the scalars and reductions that turn features into a score.

A reward's ``dtype: bfloat16`` (and a training step under bf16 autocast) is about the networks' matmuls.
The few numbers that set the score's scale — a CLIP ``logit_scale``, ImageReward's head and its
mean/std, the L2 normalisation and the cosine — stay float32: bf16 keeps 8 significant bits, so
``ln 100`` stored in bf16 is 4.59375 and ``exp`` of it scales every PickScore 1.14 % low.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import DType  # noqa: F401  (the ``dtype`` option of every reward plugin)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FrozenReward(nn.Module):
    """A reward model whose parameters never train and whose dropout never fires.

    Subclasses build their networks, then call :meth:`freeze`. ``train()`` is a no-op: a trainer that
    flips every module to training mode must not switch on the reward's dropout.
    The text side of a batch is the same for the teacher's and the student's images, so what depends
    only on the prompts is kept for the last few prompt lists (:meth:`cached`).
    """

    cache_size = 8
    #: submodules kept in float32 whatever ``dtype`` says (small heads whose output is the score)
    float32_modules: tuple[str, ...] = ()

    def __init__(self, dtype: DType = "float32"):
        super().__init__()
        self._requested_dtype = DTYPES[dtype]
        self._cache: OrderedDict[Any, Any] = OrderedDict()

    def freeze(self) -> "FrozenReward":
        self.to(self._requested_dtype)
        for name in self.float32_modules:
            self.get_submodule(name).float()
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "FrozenReward":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the networks run in (follows a later ``.to(dtype)``)."""
        return next(self.parameters()).dtype

    def cached(self, prompts: Sequence[str], compute: Callable[[list[str]], Any]) -> Any:
        """``compute(prompts)`` once per prompt list (and device, dtype and autocast state), without gradient.

        The autocast state is part of the key: text features computed under a training step's bf16
        autocast are not reused by a float32 evaluation of the same prompts (nor the other way round)."""
        key = (tuple(prompts), self.device, self.dtype, autocast_state(self.device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        # Not an inference tensor even when first asked for inside torch.inference_mode (the teacher's
        # rollout scores its images there): the student's reward, with gradient, reuses this value.
        with torch.inference_mode(False), torch.no_grad():
            value = compute(list(prompts))
        self._cache[key] = value
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def _apply(self, fn, recurse=True):  # .to()/.half(): cached tensors live on the old device/dtype
        self._cache.clear()
        return super()._apply(fn, recurse)

    @staticmethod
    def as_scores(x: Tensor) -> Tensor:
        """``[B]`` float32 scores, whatever dtype the model ran in."""
        return x.reshape(-1).float()

    @staticmethod
    def unit(x: Tensor) -> Tensor:
        """``x / ‖x‖`` over the last dimension, in float32 (a bf16 norm and division cost ~0.4 %)."""
        return F.normalize(x.float(), dim=-1)

    @staticmethod
    def cosine(a: Tensor, b: Tensor) -> Tensor:
        """Row-wise cosine of two feature batches, normalised and summed in float32."""
        return (FrozenReward.unit(a) * FrozenReward.unit(b)).sum(dim=-1)


def autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    """``(enabled, dtype)`` of autocast on ``device``'s type (the cache key's precision part)."""
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        return False, None
    return True, torch.get_autocast_dtype(kind)


def float32_compute(device: torch.device) -> contextlib.AbstractContextManager:
    """A block whose matmuls run in float32 even inside a bf16 autocast step (a reward's head)."""
    return torch.autocast(device.type, enabled=False)
