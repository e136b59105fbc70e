"""A tiny word-level text encoder for digit prompts: vocabulary + embedding + one transformer layer.

Trained jointly with the diffusion UNet during pretraining, then frozen. Words outside the
vocabulary (e.g. the wording of held-out prompt templates) map to ``<unk>``; the empty prompt is all
``<pad>`` and serves as the unconditional input of classifier-free guidance.

Saved as ``config.json`` + ``model.safetensors`` + ``vocab.txt`` (one token per line, the line
number is the id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .data import WORDS, tokenize

PAD, UNK = "<pad>", "<unk>"


def build_vocab(prompts: Sequence[str]) -> list[str]:
    """``<pad>``, ``<unk>``, every numeral and digit word, then the prompts' other words (sorted)."""
    words = {w for p in prompts for w in tokenize(p)}
    fixed = [str(d) for d in range(10)] + list(WORDS)
    return [PAD, UNK] + fixed + sorted(words - set(fixed))


class DigitsTextEncoder(nn.Module):
    """Prompts → ``[B, max_length, dim]`` token features for the UNet's cross-attention."""

    def __init__(self, vocab: Sequence[str], dim: int = 32, max_length: int = 8, heads: int = 4):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.dim, self.max_length, self.heads = dim, max_length, heads
        self.tokens = nn.Embedding(len(self.vocab), dim)
        self.positions = nn.Parameter(torch.zeros(max_length, dim))
        self.layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.positions, std=0.02)

    def token_ids(self, prompts: Sequence[str]) -> Tensor:
        pad, unk = self.index[PAD], self.index[UNK]
        ids = torch.full((len(prompts), self.max_length), pad, dtype=torch.long)
        for i, p in enumerate(prompts):
            toks = [self.index.get(w, unk) for w in tokenize(p)][: self.max_length]
            if toks:
                ids[i, : len(toks)] = torch.tensor(toks)
        return ids

    def forward(self, prompts: Sequence[str]) -> Tensor:
        ids = self.token_ids(prompts).to(self.positions.device)
        h = self.tokens(ids) + self.positions
        return self.norm(self.layer(h))

    # -- persistence

    def config(self) -> dict:
        return {"dim": self.dim, "max_length": self.max_length, "heads": self.heads}

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        (directory / "vocab.txt").write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))

    @classmethod
    def load(cls, directory: Path) -> "DigitsTextEncoder":
        directory = Path(directory)
        cfg = json.loads((directory / "config.json").read_text())
        vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
        enc = cls(vocab, **cfg)
        enc.load_state_dict(load_file(str(directory / "model.safetensors")))
        return enc
