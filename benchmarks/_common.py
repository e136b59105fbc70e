"""Helpers shared by the benchmark scripts: config loading, robust timing summaries, machine info.

Benchmarks print one JSON object on stdout and progress on stderr. Timings on a shared CPU are noisy,
so every comparison is made *within one run* with interleaved (alternating) blocks, and reported as
medians with their spread.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "experiments" / "digits.yaml"
TOY = ROOT / "benchmarks" / "configs" / "toy.yaml"
DIGITS_WEIGHTS = ROOT / "plugins" / "digits" / "weights"


SCENES_WEIGHTS = ROOT / "plugins" / "scenes" / "weights"
SCENES_VAL = ROOT / "experiments" / "prompts" / "scenes_val.txt"


def scenes_pipeline(pipeline: str | Path | None = None) -> str:
    """The scenes base pipeline folder a benchmark samples: ``pipeline``, else the shipped one."""
    return str(pipeline or SCENES_WEIGHTS / "pipeline")


def scenes_base_samples(prompts_file: str, per_prompt: int, seed: int, pipeline: str | Path | None = None):
    """The scenes world's base pipeline (:func:`scenes_pipeline`), the prompts file's prompts each
    ``per_prompt`` times, and fixed initial noise for them: ``(backbone, prompts, noise)``."""
    import rats_core  # noqa: F401  (the CPU-torchvision guard before diffusers)
    from rats_core.evaluation.evaluate import fixed_noise
    from rats_core.prompts import load_prompts
    from rats_plugins.backbones.plugin import sd15

    prompts = [p for p in load_prompts(prompts_file) for _ in range(per_prompt)]
    backbone = sd15(scenes_pipeline(pipeline), device="cpu")
    return backbone, prompts, fixed_noise(backbone, len(prompts), seed)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(out: dict[str, Any]) -> None:
    """The one JSON object a benchmark prints on stdout."""
    print(json.dumps(out, indent=2, default=str))


def default_config() -> Path:
    """The embedded default experiment (digits) when its config and weights exist, else the toy config."""
    if DIGITS.is_file() and (DIGITS_WEIGHTS / "unet" / "config.json").is_file():
        return DIGITS
    progress(f"note: {DIGITS} or its weights ({DIGITS_WEIGHTS}) are missing; using {TOY}")
    return TOY


def config_and_overrides(config: str | None, overrides: list[str]) -> tuple[Path, list[str]]:
    """``[CONFIG] [key=value ...]``: a first argument that is an override, not a file, is an override."""
    if config is not None and "=" in config and not Path(config).exists():
        return default_config(), [config, *overrides]
    return (Path(config) if config else default_config()), list(overrides)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[1], q[2]


def summary(values: Sequence[float], digits: int = 5) -> dict[str, Any]:
    """Median, quartiles and relative spread ((q3 − q1) / median) of a list of timings."""
    q1, med, q3 = quartiles(values)
    return {
        "median": round(med, digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "min": round(min(values), digits),
        "n": len(values),
        "rel_iqr": round((q3 - q1) / med, 4) if med else None,
    }


def machine() -> dict[str, Any]:
    import torch

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1_5_15": load,
    }


def bench_overrides(output_dir: str, steps: int = 10**6) -> list[str]:
    """Overrides that make a config a quiet, checkpoint-free benchmark run."""
    return [
        f"output_dir={output_dir}",
        "train.progress=false",
        "eval.every=0",
        "eval.at_end=false",
        "train.checkpoint_every=0",
        "train.log_every=1",
        "train.export=false",
        f"train.steps={steps}",
    ]
