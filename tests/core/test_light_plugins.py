"""Built-in plugin modules register light factories (issue 30): the modules in DEFAULT_PLUGINS import no
torch; each factory exists once (its signature and docstring are the option schema and the description),
so `rats plugins` describes the component that gets built. The backbone modules re-export it; the reward
modules do not (that import would close a circle, see test_import_graph.py)."""

from __future__ import annotations

import importlib

from rats_core.registry.catalogue import _params


def test_each_factory_lives_once_in_its_light_module_and_nothing_imports_it_back():
    """The registered factory of every built-in is defined in the package's light module (plugin.py); the
    heavy modules it imports when it builds never import that module back, not even at run time through
    importlib (which an import graph read from the source cannot see)."""
    import ast
    from pathlib import Path

    from rats_core.registry.plugins import get_registry

    heavy = {"backbones": ("sd15", "sdxl", "pixart", "flux", "sd35", "wan"),
             "rewards": ("pickscore", "imagereward", "hps", "aesthetic", "clipscore"),
             "scenes": ("metrics", "attribute_reward")}
    root = Path(importlib.import_module("rats_plugins").__file__).parent
    for package, modules in heavy.items():
        for module in modules:
            tree = ast.parse((root / package / f"{module}.py").read_text(encoding="utf-8"))
            back = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and (n.module == "plugin" and n.level == 1 or n.module == f"rats_plugins.{package}.plugin")]
            assert not back, f"rats_plugins.{package}.{module} imports its package's plugin.py"
    registry = get_registry()
    for kind in ("backbones", "rewards"):
        for name, component in registry.components[kind].items():
            if component.plugin.startswith("rats_plugins.") and component.plugin.endswith(".plugin"):
                assert component.factory.__module__ == component.plugin, (kind, name)
    assert importlib.import_module("rats_plugins.toy").ToyBackbone.__module__ == "rats_plugins.toy_model"


def test_return_annotations_are_not_evaluated():
    """A light factory names its heavy result under TYPE_CHECKING only; its options still resolve."""
    namespace: dict = {}
    exec("from __future__ import annotations\n"
         "from typing import Literal\n"
         "def f(x: Literal['a', 'b'] = 'a', n: int = 1) -> NotImportedHere: ...", namespace)
    params = _params(namespace["f"])
    assert params["n"].annotation is int and str(params["x"].annotation) == "typing.Literal['a', 'b']"
