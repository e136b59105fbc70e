"""What the real reward models share: frozen in eval mode, a dtype option, a per-prompt-list cache."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

#: the ``dtype`` option of every reward plugin
DType = Literal["float32", "float16", "bfloat16"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FrozenReward(nn.Module):
    """A reward model whose parameters never train and whose dropout never fires.

    Subclasses build their networks, then call :meth:`freeze`. ``train()`` is a no-op: a trainer that
    flips every module to training mode must not switch on the reward's dropout.
    The text side of a batch is the same for the teacher's and the student's images, so what depends
    only on the prompts is kept for the last few prompt lists (:meth:`cached`).
    """

    cache_size = 8

    def __init__(self, dtype: DType = "float32"):
        super().__init__()
        self._requested_dtype = DTYPES[dtype]
        self._cache: OrderedDict[Any, Any] = OrderedDict()

    def freeze(self) -> "FrozenReward":
        self.to(self._requested_dtype)
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
        """``compute(prompts)`` once per prompt list (and device/dtype), without gradient."""
        key = (tuple(prompts), self.device, self.dtype)
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
