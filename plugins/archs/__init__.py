"""Architecture configs of the real models rats supports, shipped without weights.

One JSON file per model (``sd15``, ``sdxl``, ``pixart``, ``flux``, ``sd35`` (SD3.5 Medium), ``sd35-large``, ``wan``, and
the reward towers ``imagereward``, ``hps``, ``pickscore``, ``aesthetic``, ``clipscore``): the diffusers / transformers
``config.json`` of each part, copied from the public model repositories, plus the published parameter counts they
are checked against (``tests/test_estimate.py``; ``"counts": "checkpoint"`` where the figure counts every stored
tensor, persistent buffers such as SD3's positional table included). A second architecture of a backbone,
``<backbone>-<variant>``, is counted when ``backbone.path`` is its ``model`` id. :mod:`rats_core.estimate.estimate` builds them on the meta device to count memory;
:func:`rats_core.estimate.estimate.build_part` builds one for real with random weights.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.json"))


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    return (FOLDER / f"{name}.json").read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """The architecture ``name`` as a fresh dict; KeyError when none is shipped."""
    if name not in names():
        raise KeyError(name)
    return json.loads(_load(name))
