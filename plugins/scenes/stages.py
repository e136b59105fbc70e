"""What the pretraining stages of the scenes world share (``pretrain.py`` runs them; ``pipeline.py`` trains
the generator, the VAE and the CLIP; ``preferences.py`` fine-tunes the CLIP on preferences): each stage's
random stream, the learning-rate schedule and the log line."""

from __future__ import annotations

import math
import time

STREAM = {"generator": 1, "clip": 2, "judge": 3, "eval": 4}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cosine_lr(opt, base: float, step: int, total: int, warmup: int = 100) -> None:
    lr = base * min(1.0, step / warmup) * (0.5 * (1 + math.cos(math.pi * min(1.0, step / total))) * 0.95 + 0.05)
    for g in opt.param_groups:
        g["lr"] = lr
