"""Built-in plugin modules register light factories (issue 30): the modules in DEFAULT_PLUGINS import no
torch; each factory exists once (its signature and docstring are the option schema and the description)
and the heavy modules re-export it, so `rats plugins` describes the component that gets built."""

from __future__ import annotations

import importlib

from rats_core.registry.catalogue import _params


def test_heavy_modules_re_export_their_factories():
    """`from rats_plugins.backbones.sd15 import sd15` (benchmarks, scenes) builds the registered factory."""
    from rats_plugins.backbones import plugin as backbones
    from rats_plugins.rewards import plugin as rewards

    for name in ("sd15", "sdxl", "pixart", "flux", "wan"):
        assert getattr(importlib.import_module(f"rats_plugins.backbones.{name}"), name) is getattr(backbones, name)
    assert importlib.import_module("rats_plugins.rewards.pickscore").pickscore is rewards.pickscore
    assert importlib.import_module("rats_plugins.rewards.imagereward").imagereward is rewards.imagereward
    hps = importlib.import_module("rats_plugins.rewards.hps")
    assert (hps.hpsv2, hps.hpsv2_1) == (rewards.hpsv2, rewards.hpsv2_1)
    assert importlib.import_module("rats_plugins.toy").ToyBackbone.__module__ == "rats_plugins.toy_model"


def test_return_annotations_are_not_evaluated():
    """A light factory names its heavy result under TYPE_CHECKING only; its options still resolve."""
    namespace: dict = {}
    exec("from __future__ import annotations\n"
         "from typing import Literal\n"
         "def f(x: Literal['a', 'b'] = 'a', n: int = 1) -> NotImportedHere: ...", namespace)
    params = _params(namespace["f"])
    assert params["n"].annotation is int and str(params["x"].annotation) == "typing.Literal['a', 'b']"
