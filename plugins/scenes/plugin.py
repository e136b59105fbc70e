"""The scenes world as a rats plugin: metrics ``scene-judge`` and ``scene-fid``.

The base model and the reward are *not* world-specific: the shipped pipeline folder is loaded by the
``sd15`` backbone (``backbone.path``) and the shipped CLIP by the ``pickscore`` reward
(``rewards.N.path``). See ``experiments/scenes.yaml``.
"""

from __future__ import annotations

from rats_core import hookimpl

from .metrics import scene_fid, scene_judge


@hookimpl
def register_metrics(register):
    register("scene-judge", scene_judge)
    register("scene-fid", scene_fid)
