"""Every hook spec is documented (docstring with an example, docs/plugins.md) and tested.

A new hook in rats_core/registry/hookspecs.py fails here until it has all three (datasette does the same).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from rats_core.registry import hookspecs
from rats_core.registry.catalogue import KINDS

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DOCS = REPO / "docs" / "plugins.md"


def _hookspecs() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, marker))


HOOKS = _hookspecs()


def test_the_hooks_are_the_component_kinds():
    assert HOOKS == sorted(f"register_{k}" for k in KINDS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring_with_an_example(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert doc.strip(), f"{hook} has no docstring"
    assert "Example" in doc and "@hookimpl" in doc and "register(" in doc, f"{hook}'s docstring needs an example"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_plugin_docs(hook):
    text = DOCS.read_text(encoding="utf-8")
    assert f"### `{hook}`" in text or f"### {hook}" in text, f"docs/plugins.md has no section for {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_referenced_by_a_test(hook):
    this = Path(__file__).resolve()
    users = [p for p in TESTS.rglob("*.py") if p.resolve() != this and hook in p.read_text(encoding="utf-8")]
    assert users, f"no test under tests/ implements or mentions {hook}"
