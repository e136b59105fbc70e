"""Built-in plugin modules register light factories (issue 30): the modules in DEFAULT_PLUGINS import no
torch; each factory exists once (its signature and docstring are the option schema and the description),
so `rats plugins` describes the component that gets built. The backbone modules re-export it; the reward
modules do not (that import would close a circle, see test_import_graph.py)."""

from __future__ import annotations

import importlib

from rats_core.registry.catalogue import _params


def test_heavy_modules_re_export_their_factories():
    """`from rats_plugins.backbones.sd15 import sd15` (benchmarks, scenes) builds the registered factory."""
    from rats_plugins.backbones import plugin as backbones

    for name in ("sd15", "sdxl", "pixart", "flux", "wan"):
        assert getattr(importlib.import_module(f"rats_plugins.backbones.{name}"), name) is getattr(backbones, name)
    assert importlib.import_module("rats_plugins.toy").ToyBackbone.__module__ == "rats_plugins.toy_model"


def test_reward_factories_live_in_the_light_module_only():
    """`from rats_plugins.rewards.plugin import pickscore` is the factory that builds the reward; the reward
    modules share only rewards/options.py with it (the factories import them, not the other way)."""
    from rats_core.registry.plugins import get_registry

    registry = get_registry()
    for kind, name in [("rewards", n) for n in ("imagereward", "hpsv2", "hpsv2.1", "pickscore", "aesthetic",
                                                 "clipscore")] + [("metrics", "clipscore")]:
        assert registry.get(kind, name).factory.__module__ == "rats_plugins.rewards.plugin", (kind, name)


def test_return_annotations_are_not_evaluated():
    """A light factory names its heavy result under TYPE_CHECKING only; its options still resolve."""
    namespace: dict = {}
    exec("from __future__ import annotations\n"
         "from typing import Literal\n"
         "def f(x: Literal['a', 'b'] = 'a', n: int = 1) -> NotImportedHere: ...", namespace)
    params = _params(namespace["f"])
    assert params["n"].annotation is int and str(params["x"].annotation) == "typing.Literal['a', 'b']"
