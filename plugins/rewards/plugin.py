"""The reward models as a rats plugin: ``imagereward``, ``hpsv2``, ``hpsv2.1`` and ``pickscore``.

The factories live here and import no torch (nor transformers, open_clip): their signatures are the option
schemas that ``rats plugins`` and config validation read, and each imports its reward's module
(imagereward.py, hps.py, pickscore.py) only when it builds it. Those modules re-export their factories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rats_core import hookimpl

if TYPE_CHECKING:
    from .hps import HPS
    from .imagereward import ImageReward
    from .pickscore import PickScore

#: the ``dtype`` option of every reward plugin
DType = Literal["float32", "float16", "bfloat16"]

IMAGEREWARD_TOKENIZER = "bert-base-uncased"
PICKSCORE_ID = "yuvalkirstain/PickScore_v1"
HPS_ARCHITECTURE = "ViT-H-14"
HPS_FILENAMES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


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


@hookimpl
def register_rewards(register):
    register("imagereward", imagereward)
    register("hpsv2", hpsv2)
    register("hpsv2.1", hpsv2_1)
    register("pickscore", pickscore)
