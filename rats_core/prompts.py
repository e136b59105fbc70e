"""Prompt sets: inline lists, or plain-text / JSONL files (one prompt per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rats_core.errors import ConfigError

#: a small general-purpose evaluation list, used when nothing else is configured
DEFAULT_PROMPTS = [
    "a photo of a cat sitting on a windowsill",
    "a red sports car on a mountain road at sunset",
    "an astronaut riding a horse, digital art",
    "a bowl of fruit on a wooden table, oil painting",
    "a lighthouse on a cliff during a storm",
    "a cozy cabin in a snowy forest at night",
    "a portrait of an old man with a beard, studio lighting",
    "a futuristic city skyline with flying cars",
]


def load_prompts(spec: Sequence[str] | str | None, base_dir: Path | None = None, what: str = "prompts") -> list[str]:
    """A list as given; a ``.txt`` file (one per line, blank lines and ``#`` comments skipped); a
    ``.jsonl`` file (one JSON string or an object with a ``prompt``/``text``/``caption`` field per
    line); ``"default"`` for the built-in list."""
    if spec is None or spec == "default":
        return list(DEFAULT_PROMPTS)
    if isinstance(spec, (list, tuple)):
        prompts = [str(p) for p in spec]
        if not prompts:
            raise ConfigError(f"{what}: the prompt list is empty")
        return prompts
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        raise ConfigError(f"{what}: prompt file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory, expected a .txt or .jsonl prompt file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: prompt file {path} is not UTF-8 text") from None
    prompts: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or (path.suffix != ".jsonl" and line.startswith("#")):
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if isinstance(obj, dict):
                obj = next((obj[k] for k in ("prompt", "text", "caption") if k in obj), None)
            if not isinstance(obj, str):
                raise ConfigError(f"{path}:{lineno}: expected a string or an object with a 'prompt' field")
            line = obj
        prompts.append(line)
    if not prompts:
        raise ConfigError(f"{what}: prompt file {path} has no prompts")
    return prompts


class PromptSampler:
    """Deterministic global batches: epoch-wise shuffles seeded by (seed, epoch), each rank its slice.

    The batch for optimizer step ``s`` and micro-step ``m`` depends only on those numbers, so a
    resumed run sees exactly the prompts an uninterrupted one would, and N ranks together see the
    same global batch as one rank with N times the batch size.
    """

    def __init__(self, prompts: Sequence[str], seed: int, global_batch: int):
        self.prompts = list(prompts)
        self.seed = seed
        self.global_batch = global_batch
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            import torch  # here, not at the top: config validation reads prompt files without torch

            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(len(self.prompts), generator=g).tolist()}
        return self._perm_cache[epoch]

    def global_batch_at(self, index: int) -> list[str]:
        n = len(self.prompts)
        out = []
        for i in range(index * self.global_batch, (index + 1) * self.global_batch):
            out.append(self.prompts[self._perm(i // n)[i % n]])
        return out

    def batch(self, index: int, rank: int, world_size: int) -> list[str]:
        g = self.global_batch_at(index)
        per = self.global_batch // world_size
        return g[rank * per : (rank + 1) * per]
