"""Evaluation metrics of the scenes world (never used in training).

``scene-judge`` -> ``judge_accuracy`` (the whole prompt right: every count, colour, shape and the
relation) and the per-category accuracies ``judge_count``, ``judge_colour``, ``judge_shape``,
``judge_relation`` (relation prompts only). By default the rule-based reader (:mod:`.reader`) reads
each image the way the annotators of ``shared/human-labels`` did (``benchmarks/judge_agreement.py``
measures the agreement); ``reader: cnn`` keeps the learnt judge (:mod:`.judge`), which reads
generated images at chance. Also ``judge_malformed_rate``, a diagnostic outside the verdict: the share
of images with at least one object no shape fits (merged, hooked, lobed) or that is neither circle nor
square.

``scene-fid`` -> ``fid``: the Fréchet distance between Gaussians fitted to features of the images and
of real renders of the *same prompts* (a fixed render seed). Its default features are the reader's
scene statistics (:func:`.reader.statistics`, in the fixed units of ``STATISTICS_SCALE``: how well the
objects are drawn -- misfit, blur, colour strength and hue, circle/square clarity, size, count,
background); ``features: cnn`` the learnt judge's 64 pooled features. Two independent sets of renders
of the held-out prompts are ~0.04 apart on the statistics; compare it only between variants with the
same prompts and number of images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from rats_core.errors import ConfigError, WeightsNotFoundError

from ..fid import feature_stats as _stats
from ..fid import frechet_distance
from . import world
from .judge import grade_reading, load_judge, read, summarise, to_judge_input
from .reader import STATISTICS, statistics
from .reader import grade as reader_grade

READERS = ("rules", "cnn")
FID_FEATURES = ("statistics", "cnn")
#: each scene statistic (reader.STATISTICS) divided by a fixed unit, set by hand once so that one unit
#: is a plainly visible difference (one object; a quarter of an object's size; half a pixel of blur;
#: a quarter of a colour's strength; ~6 degrees of hue; a background 0.05 lighter), not fitted to any
#: labels; the distance of two independent sets of renders of the held-out prompts is ~0.04 on these
STATISTICS_SCALE = np.array([1.0, 0.25, 0.5, 0.25, 0.5, 0.25, 0.1, 0.1, 0.05, 0.02])
assert len(STATISTICS_SCALE) == len(STATISTICS)

WEIGHTS_DIR = Path(__file__).parent / "weights"
#: the render seed of the real reference images of scene-fid
REFERENCE_SEED = 20240


def load_frozen_judge(path: str | Path | None, who: str):
    folder = Path(path).expanduser() if path is not None else WEIGHTS_DIR / "judge"
    if not (folder / "model.safetensors").exists():
        raise WeightsNotFoundError(
            f"{who}: no judge weights in {folder}; create them with "
            f"`python -m rats_plugins.scenes.pretrain --what judge`"
        )
    return load_judge(folder)


def refuse_evaluation_judge(folder: str | Path, who: str) -> None:
    """``ConfigError`` when ``folder`` is the evaluation judge (the shipped one ``scene-judge`` and
    ``scene-fid`` read by default) or a copy of it: that judge must never be used in training."""
    folder = Path(folder).expanduser()
    evaluation = WEIGHTS_DIR / "judge"

    def digest(f: Path) -> str | None:
        w = f / "model.safetensors"
        return hashlib.sha256(w.read_bytes()).hexdigest() if w.is_file() else None

    same_folder = folder.resolve() == evaluation.resolve()
    if same_folder or ((mine := digest(folder)) is not None and mine == digest(evaluation)):
        raise ConfigError(
            f"{who}: {folder} is the evaluation judge (the one scene-judge and scene-fid read), which must never "
            "be used in training. Train a second judge with another seed, `python -m rats_plugins.scenes.pretrain "
            "--what judge --seed 1 --out DIR`, and use DIR/judge")


class SceneJudge:
    """The scenes judge: per-image grades from the rule-based reader (``reader="rules"``, the default,
    validated against people by benchmarks/judge_agreement.py) or from a learnt judge's folder
    (``reader="cnn"``; the pre-2026-12 default, which reads generated images at chance)."""

    #: prompts this component understands (see rats_core.registry.interfaces.EXAMPLE_PROMPTS_ATTRIBUTE)
    example_prompts = ["two red circles", "a blue square left of a yellow triangle"]

    def __init__(self, reader: str = "rules", path: str | Path | None = None):
        if reader not in READERS:
            raise ConfigError(f"scene-judge: reader must be one of {', '.join(READERS)}, got '{reader}'")
        if reader == "rules" and path is not None:
            raise ConfigError("scene-judge: `path` names a learnt judge's folder; it needs reader: cnn "
                              "(the rule-based reader has no weights)")
        self.reader = reader
        self.model = load_frozen_judge(path, "scene-judge metric") if reader == "cnn" else None

    def grades(self, images: Tensor, prompts: Sequence[str]) -> list[dict]:
        """Per image: ``{count, colour, shape, relation (None for counting prompts), all}`` right/wrong."""
        return self._grade(images, prompts)[0]

    def _grade(self, images: Tensor, prompts: Sequence[str]) -> tuple[list[dict], np.ndarray]:
        if self.model is None:
            return reader_grade(to_judge_input(images), list(prompts))
        counts, centres = read(self.model, images)
        return grade_reading(list(prompts), counts, centres), counts

    def marks(self, images: Tensor, prompts: Sequence[str]) -> list[tuple[bool, str]]:
        """Per image: fully right, or wrong with the categories it got wrong (the report's grid)."""
        short = {"count": "count", "colour": "colour", "shape": "shape", "relation": "relation"}
        out = []
        for g in self.grades(images, prompts):
            wrong = ", ".join(v for k, v in short.items() if g.get(k) is False)
            # every category right but not the whole table: an attribute went to the wrong object
            out.append((bool(g["all"]), "" if g["all"] else wrong or "binding"))
        return out

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        grades, counts = self._grade(images, prompts)
        acc = summarise(grades)
        out = {"judge_accuracy": acc["all"]}
        out.update({f"judge_{k}": v for k, v in acc.items() if k != "all"})
        # a diagnostic, not a criterion: how often the judge sees a malformed object (its near-miss class)
        out["judge_malformed_rate"] = float((counts[..., world.JUDGE_SHAPES.index(world.BLOB)].sum(-1) > 0).mean())
        return out


class SceneFID:
    """Fréchet distance between generated images and real renders of the same prompts, on the reader's
    scene statistics (``features="statistics"``, default) or the learnt judge's 64 pooled features
    (``features="cnn"``, the pre-2026-12 default; ``path`` its folder)."""

    example_prompts = SceneJudge.example_prompts

    def __init__(self, path: str | Path | None = None, reference_seed: int = REFERENCE_SEED,
                 features: str = "statistics"):
        if features not in FID_FEATURES:
            raise ConfigError(f"scene-fid: features must be one of {', '.join(FID_FEATURES)}, got '{features}'")
        if features == "statistics" and path is not None:
            raise ConfigError("scene-fid: `path` names a learnt judge's folder; it needs features: cnn")
        self.kind = features
        self.model = load_frozen_judge(path, "scene-fid metric") if features == "cnn" else None
        self.reference_seed = reference_seed
        self._cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        x = to_judge_input(images)
        if self.model is None:
            stats = np.stack([statistics(im) for im in x.numpy()]) / STATISTICS_SCALE
            return torch.from_numpy(stats)
        return torch.cat([self.model.features(x[i : i + 256]) for i in range(0, len(x), 256)])

    def reference(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(prompts)
        if key not in self._cache:
            real = torch.from_numpy(world.render_batch(list(prompts), self.reference_seed))
            self._cache = {key: _stats(self.features(real))}
        return self._cache[key]

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
        if images.shape[0] < 2:
            raise ValueError("scene-fid needs at least 2 images")
        if images.shape[0] != len(prompts):
            raise ValueError(f"scene-fid: {images.shape[0]} images but {len(prompts)} prompts")
        mu, cov = _stats(self.features(images))
        return {"fid": frechet_distance(mu, cov, *self.reference(prompts))}

