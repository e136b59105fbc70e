"""The scenes world as a rats plugin: metrics ``scene-judge`` and ``scene-fid``, and the diagnostic
reward ``scene-attributes`` (a second, independently trained judge; see attribute_reward.py).

The base model and the reward are *not* world-specific: the shipped pipeline folder is loaded by the
``sd15`` backbone (``backbone.path``) and the shipped CLIP by the ``pickscore`` reward
(``rewards.N.path``). See ``experiments/scenes.yaml``.
"""

from __future__ import annotations

from rats_core import hookimpl

from .attribute_reward import scene_attributes
from .metrics import scene_fid, scene_judge


@hookimpl
def register_rewards(register):
    register("scene-attributes", scene_attributes)   # a diagnostic: a *second* judge as the reward


@hookimpl
def register_metrics(register):
    register("scene-judge", scene_judge)
    register("scene-fid", scene_fid)
