"""The scenes world as a rats plugin: metrics ``scene-judge`` and ``scene-fid``, and the diagnostic
reward ``scene-attributes`` (a second, independently trained judge; see attribute_reward.py).

The base model and the reward are *not* world-specific: the shipped pipeline folder is loaded by the
``sd15`` backbone (``backbone.path``) and the shipped CLIP by the ``pickscore`` reward
(``rewards.N.path``). See ``experiments/scenes.yaml``.

The factories live here, light: reading their options for ``rats plugins`` or a config check imports
no torch; building one imports its implementation (metrics.py, attribute_reward.py, which re-export
them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rats_core import hookimpl

if TYPE_CHECKING:
    from .attribute_reward import SceneAttributes
    from .metrics import SceneFID, SceneJudge


def scene_attributes(path: str, relation_weight: float = 5.0) -> SceneAttributes:
    """A second scenes judge's reading against the prompt (0 = all right, lower per mistake); a diagnostic.

    Options:
        path: the folder of a judge trained with another seed than the evaluation's
            (``python -m rats_plugins.scenes.pretrain --what judge --seed 1 --out DIR`` writes ``DIR/judge``);
            the evaluation judge itself, or a copy, is refused.
        relation_weight: weight of the relation prompts' placement margin (capped at 0.15 image widths).

    Example config::

        rewards:
          - {name: scene-attributes, path: ../runs/judge2/judge}
    """
    from .attribute_reward import SceneAttributes

    return SceneAttributes(path, relation_weight)


def scene_judge(reader: Literal["rules", "cnn"] = "rules", path: str | None = None) -> SceneJudge:
    """GenEval-style accuracy of the attribute judge: judge_accuracy (all right) and per category.

    reader: ``rules`` reads each object's colour, shape and place from the image itself (validated
    against people); ``cnn`` a learnt judge (``path``: its folder, default the shipped one)."""
    from .metrics import SceneJudge

    return SceneJudge(reader, path)


def scene_fid(features: Literal["statistics", "cnn"] = "statistics", path: str | None = None) -> SceneFID:
    """Frechet distance, generated vs real renders of the same prompts (fid, lower is better).

    features: ``statistics`` -- what the rule-based reader measures of how well a scene is drawn (object
    count and size, shape misfit, malformed share, edge blur, colour strength and hue error, circle/square
    clarity, background); ``cnn`` -- the learnt judge's pooled features (``path``: its folder)."""
    from .metrics import SceneFID

    return SceneFID(path, features=features)


@hookimpl
def register_rewards(register):
    register("scene-attributes", scene_attributes)   # a diagnostic: a *second* judge as the reward


@hookimpl
def register_metrics(register):
    register("scene-judge", scene_judge)
    register("scene-fid", scene_fid)
