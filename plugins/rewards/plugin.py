"""The reward models as a rats plugin: rewards ``imagereward``, ``hpsv2``, ``hpsv2.1``, ``pickscore``,
``aesthetic`` and ``clipscore``, and the metric ``clipscore``.

The factories live here and import no torch (nor transformers, open_clip): their signatures are the option
schemas that ``rats plugins`` and config validation read, and each imports its reward's module
(imagereward.py, hps.py, pickscore.py, aesthetic.py, clipscore.py) only when it builds it. What both
sides need (the ``dtype`` option, official ids and file names) is in options.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from rats_core import hookimpl

from . import locate
from .options import (
    CLIP_ID,
    HPS_ARCHITECTURE,
    HPS_FILENAMES,
    IMAGEREWARD_TOKENIZER,
    PICKSCORE_ID,
    ClipW,
    DType,
)

if TYPE_CHECKING:
    from .aesthetic import Aesthetic
    from .clipscore import ClipScore, ClipScoreMetric
    from .hps import HPS
    from .imagereward import ImageReward
    from .pickscore import PickScore


def imagereward(path: str | None = None, tokenizer: str = IMAGEREWARD_TOKENIZER, dtype: DType = "float32") -> ImageReward:
    """ImageReward v1.0 (BLIP + MLP head), official scale ≈ −2…2.

    Options:
        path: the official ``ImageReward.pt`` (a file, a folder holding it, or a Hugging Face repo id);
            default: ``THUDM/ImageReward`` from the local Hugging Face cache.
        tokenizer: BERT uncased tokenizer (folder or hub id); default ``bert-base-uncased``.
        dtype: ``float32`` (default, as the official scorer), ``float16`` or ``bfloat16``.

    Example config::

        rewards:
          - name: imagereward
            path: /models/ImageReward.pt
    """
    from .imagereward import ImageReward

    return ImageReward(path=path, tokenizer=tokenizer, dtype=dtype)


def pickscore(path: str = PICKSCORE_ID, processor: str | None = None, dtype: DType = "float32") -> PickScore:
    """PickScore v1 (CLIP-H fine-tuned on Pick-a-Pic): logit_scale.exp() * cos, ≈ 18-24.

    Options:
        path: a ``CLIPModel`` folder (config.json + weights) or hub id; default ``yuvalkirstain/PickScore_v1``
            from the local Hugging Face cache.
        processor: folder or hub id with the CLIP tokenizer and ``preprocessor_config.json``; default:
            ``path`` itself when that local folder has both, else ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
            (only those small files are needed).
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.

    Example config::

        rewards:
          - name: pickscore
            path: /models/PickScore_v1
            processor: /models/CLIP-ViT-H-14-processor
    """
    from .pickscore import PickScore

    return PickScore(path=path, processor=processor, dtype=dtype)


def hpsv2(
    path: str | None = None, architecture: str = HPS_ARCHITECTURE, antialias: bool = True, dtype: DType = "float32"
) -> HPS:
    """HPSv2.0: open_clip ViT-H-14 with HPS_v2_compressed.pt; cosine score ≈ 0.2-0.35."""
    from .hps import HPS

    return HPS("v2.0", path=path, architecture=architecture, antialias=antialias, dtype=dtype)


def hpsv2_1(
    path: str | None = None, architecture: str = HPS_ARCHITECTURE, antialias: bool = True, dtype: DType = "float32"
) -> HPS:
    """HPSv2.1: open_clip ViT-H-14 with HPS_v2.1_compressed.pt; cosine score ≈ 0.2-0.35."""
    from .hps import HPS

    return HPS("v2.1", path=path, architecture=architecture, antialias=antialias, dtype=dtype)


_DOC_OPTIONS = """

    Options:
        path: the HPS checkpoint (a file, a folder holding it, or a Hugging Face repo id);
            default: ``xswu/HPSv2`` ({filename}) from the local Hugging Face cache.
        architecture: open_clip model name (``ViT-H-14``; another name only for tests/custom models).
        antialias: antialiased resize as with torchvision >= 0.17 (default); False as older torchvision.
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.
"""

hpsv2.__doc__ += _DOC_OPTIONS.format(filename=HPS_FILENAMES["v2.0"])
hpsv2_1.__doc__ += _DOC_OPTIONS.format(filename=HPS_FILENAMES["v2.1"])


def aesthetic(path: str | None = None, clip: str = CLIP_ID, dtype: DType = "float32") -> Aesthetic:
    """LAION aesthetic predictor v2 (CLIP ViT-L/14 embedding, normalised, through a linear MLP), ≈ 1-10.

    The prompt is not used. Its weights are on GitHub, not the Hugging Face hub: ``path`` has no default.

    Options:
        path: ``sac+logos+ava1-l14-linearMSE.pth`` (a file, or a folder holding it), from
            github.com/christophschuhmann/improved-aesthetic-predictor.
        clip: the CLIP ViT-L/14 ``CLIPModel`` (folder or hub id); default ``openai/clip-vit-large-patch14``
            from the local Hugging Face cache (only its vision tower is kept).
        dtype: ``float32`` (default), ``float16`` or ``bfloat16`` (the MLP stays float32).

    Example config::

        rewards:
          - name: aesthetic
            path: /models/sac+logos+ava1-l14-linearMSE.pth
            clip: /models/clip-vit-large-patch14
    """
    from .aesthetic import Aesthetic

    return Aesthetic(path=path, clip=clip, dtype=dtype)


def clipscore(
    path: str = CLIP_ID, processor: str | None = None, w: ClipW = 100.0, prefix: str = "", dtype: DType = "float32"
) -> ClipScore:
    """CLIPScore, w * max(cos(image, prompt), 0) on CLIP ViT-L/14: 0-100 with w = 100 (torchmetrics' scale).

    Options:
        path: a ``CLIPModel`` folder or hub id; default ``openai/clip-vit-large-patch14`` from the local
            Hugging Face cache.
        processor: folder or hub id with the CLIP tokenizer and ``preprocessor_config.json``; default ``path``.
        w: the scale: 100 as torchmetrics' CLIPScore reports it (default), 2.5 as the paper (Hessel et al.
            2021) defines it.
        prefix: text put before every prompt; the paper's captioning code used ``"A photo depicts "``;
            torchmetrics none (default).
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.

    Example config::

        rewards:
          - name: clipscore
            path: /models/clip-vit-large-patch14
    """
    from .clipscore import ClipScore

    return ClipScore(path=path, processor=processor, w=w, prefix=prefix, dtype=dtype)


def clipscore_metric(
    path: str = CLIP_ID,
    processor: str | None = None,
    w: ClipW = 100.0,
    prefix: str = "",
    dtype: DType = "float32",
    batch_size: Annotated[int, Field(gt=0)] = 32,
    device: str | None = None,
) -> ClipScoreMetric:
    """CLIPScore of the evaluated images and their prompts: the mean over images of w * max(cos, 0).

    Options:
        path: a ``CLIPModel`` folder or hub id; default ``openai/clip-vit-large-patch14``.
        processor: folder or hub id with the CLIP tokenizer and image processor config; default ``path``.
        w: the scale: 100 as torchmetrics' CLIPScore (default), 2.5 as the paper.
        prefix: text put before every prompt (the paper's captioning code: ``"A photo depicts "``).
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.
        batch_size: images scored at once.
        device: where the CLIP runs; default ``cuda`` when a GPU is visible, else ``cpu``.

    Example config::

        eval:
          metrics:
            - name: clipscore
    """
    from .clipscore import ClipScoreMetric

    return ClipScoreMetric(path=path, processor=processor, w=w, prefix=prefix, dtype=dtype,
                           batch_size=batch_size, device=device)


# ----------------------------------------------------------------------------- weights, checked lightly
# Each factory's ``missing_weights(**options)`` lists what its model would miss, without importing torch
# (rats_core.weights.preflight asks before a run loads anything: one message naming every missing model).


def _missing(*found: str | None) -> list[str]:
    return [m for m in found if m]


imagereward.missing_weights = lambda path=None, tokenizer=IMAGEREWARD_TOKENIZER, **_: _missing(
    locate.file_missing(path, locate.IMAGEREWARD), locate.folder_missing(tokenizer, locate.IMAGEREWARD_BERT))
pickscore.missing_weights = lambda path=PICKSCORE_ID, processor=None, **_: _missing(
    locate.folder_missing(path, locate.PICKSCORE),
    locate.folder_missing(processor or locate.pickscore_processor(path), locate.PICKSCORE_PROCESSOR))
hpsv2.missing_weights = lambda path=None, **_: _missing(locate.file_missing(path, locate.HPS["v2.0"]))
hpsv2_1.missing_weights = lambda path=None, **_: _missing(locate.file_missing(path, locate.HPS["v2.1"]))
aesthetic.missing_weights = lambda path=None, clip=CLIP_ID, **_: _missing(
    locate.file_missing(path, locate.AESTHETIC_HEAD), locate.folder_missing(clip, locate.AESTHETIC_CLIP))
clipscore.missing_weights = clipscore_metric.missing_weights = lambda path=CLIP_ID, processor=None, **_: _missing(
    locate.folder_missing(path, locate.CLIPSCORE), locate.folder_missing(processor or path, locate.CLIPSCORE_PROCESSOR))


@hookimpl
def register_rewards(register):
    register("imagereward", imagereward)
    register("hpsv2", hpsv2)
    register("hpsv2.1", hpsv2_1)
    register("pickscore", pickscore)
    register("aesthetic", aesthetic)
    register("clipscore", clipscore)


@hookimpl
def register_metrics(register):
    register("clipscore", clipscore_metric)
