"""rats_core has no import circles: a module never imports (directly or through others, at module level
or inside a function) a module that imports it back. Commands are registered in one place
(rats_core/commands.py, which imports nothing of rats); no module imports the CLI.

The graph is read from the source with ``ast``, so a lazy ``from .trainer import ...`` inside a
function counts like a top-level one: lazy imports hide circles from Python, not from readers.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "rats_core"


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(CORE.glob("*.py")):
        name = path.stem
        edges: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = set()  # imports under `if TYPE_CHECKING:` are annotations, not run-time imports
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                typing_only.update(id(sub) for sub in ast.walk(node))
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:  # from .x import y
                    edges.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import x, y
                    edges.update(a.name for a in node.names)
                elif node.level == 0 and node.module and node.module.startswith("rats_core."):
                    edges.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                edges.update(a.name.split(".")[1] for a in node.names if a.name.startswith("rats_core."))
        graph[name] = {e for e in edges if (CORE / f"{e}.py").is_file() and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle, each reported once (starting at its smallest module name)."""
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.append(path + [start])
            elif nxt > start and nxt not in path:
                walk(start, nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_import_circles_in_rats_core():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found[:20])


def test_nothing_imports_the_cli():
    """The CLI is the top: command modules register through rats_core/commands.py instead."""
    graph = import_graph()
    assert not sorted(m for m, edges in graph.items() if "cli" in edges)
    assert graph["commands"] == set()  # a leaf: importing it can close no circle


def test_the_detector_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
