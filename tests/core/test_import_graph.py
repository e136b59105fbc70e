"""The import graph: no circles anywhere, and imports run one way through rats_core's layers.

rats_core is cut into layers (each folder's ``__init__`` docstring says what it holds and may import):

    cli  →  evaluation, estimate  →  training  →  method  →  config, weights  →  registry, prompts
         →  parallel, errors, timing, _compat

A module may import its own layer and the layers below it, never one above: the paper's maths
(``method``) runs without the engine, the engine without evaluation, and nothing imports the CLI.
The graph is read from the source with ``ast``, so a lazy ``from x import y`` inside a function and an
import under ``if TYPE_CHECKING:`` count like top-level ones: they hide circles from Python, not from
readers. The built-in plugins (``plugins/``, installed as ``rats_plugins``) have no circles either, and
never import the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "rats_core"
PLUGINS = REPO / "plugins"

#: layer of each top-level module or subpackage of rats_core; imports may only go to the same or a lower one
LAYERS = {
    "errors": 0, "_compat": 0, "_moved": 0, "timing": 0, "parallel": 0,
    "prompts": 1, "registry": 1,
    "weights": 2, "config": 2,
    "method": 3,
    "training": 4,
    "evaluation": 5, "estimate": 5,
    "cli": 6,
}


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (``from pkg import mod`` counts as importing mod)."""
    files = {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(node, name, is_package)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in files else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle, each reported once (starting at its smallest module name)."""
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path + [start])
            elif nxt > start and nxt not in path:
                walk(start, nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None  # the package face `rats_core` has none


def test_no_import_circles_in_rats_core():
    found = cycles(import_graph(CORE, "rats_core"))
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found[:20])


def test_no_import_circles_in_the_builtin_plugins():
    found = cycles(import_graph(PLUGINS, "rats_plugins"))
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found[:20])


def test_every_module_of_rats_core_has_a_layer():
    graph = import_graph(CORE, "rats_core")
    assert not sorted(m for m in graph if m != "rats_core" and layer(m) is None)


def test_imports_run_down_the_layers():
    graph = import_graph(CORE, "rats_core")
    upward = sorted(f"{m} -> {e}" for m, edges in graph.items() for e in edges
                    if layer(m) is not None and layer(e) is not None and layer(e) > layer(m))
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_nothing_imports_the_cli():
    """The CLI is the top: command modules register through rats_core/cli/commands.py instead."""
    core = import_graph(CORE, "rats_core")
    assert not sorted(m for m, edges in core.items()
                      if not m.startswith("rats_core.cli") and any(e.startswith("rats_core.cli") for e in edges))
    assert core["rats_core.cli.commands"] == set()  # a leaf: importing it can close no circle
    for path in PLUGINS.rglob("*.py"):
        assert "rats_core.cli" not in path.read_text(encoding="utf-8"), path


def test_the_method_needs_no_engine():
    """The paper's maths in one folder that imports neither the engine nor evaluation."""
    graph = import_graph(CORE, "rats_core")
    method = {m: e for m, e in graph.items() if m.startswith("rats_core.method")}
    assert {"rats_core.method.objective", "rats_core.method.sigmas", "rats_core.method.teacher"} <= set(method)
    assert not [e for edges in method.values() for e in edges
                if e.split(".")[1] in ("training", "evaluation", "estimate", "cli")]


def test_the_detector_finds_a_circle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer("rats_core.method.objective") < layer("rats_core.training.trainer")


def test_type_checking_imports_count(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("from . import a\nclass B: ...\n")
    assert cycles(import_graph(pkg, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_the_flat_paths_of_0_1_0_still_import():
    """A plugin written against the flat layout keeps working: the old path is the same module, with a
    DeprecationWarning that names the new one; every old path points at a module that exists."""
    import importlib
    import sys
    import warnings

    from rats_core._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
    sys.modules.pop("rats_core.sigmas", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import rats_core.sigmas as old_sigmas  # noqa: F401
    import rats_core.method.sigmas as new_sigmas

    assert old_sigmas is new_sigmas
    assert any("rats_core.method.sigmas" in str(w.message) and w.category is DeprecationWarning for w in caught)
    from rats_core.plugins import register_plugin  # noqa: F401  (documented in 0.1.0's docs/plugins.md)
