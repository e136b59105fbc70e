"""Module paths from before rats_core was cut into layers (0.1.0), still importable.

Plugins written against the old layout (``from rats_core.sigmas import x0_from_eps``,
``rats_core.plugins.register_plugin``) keep working: importing an old path gives the module at its new
place (the same module object, so patching one patches the other) with a ``DeprecationWarning`` that
names the new path. New code imports the new paths (docs/plugins.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module path -> where it lives now
MOVED = {
    f"rats_core.{old}": f"rats_core.{new}"
    for old, new in {
        "hookspecs": "registry.hookspecs", "interfaces": "registry.interfaces",
        "registry": "registry.catalogue", "plugins": "registry.plugins",
        "sigmas": "method.sigmas", "rollout": "method.rollout", "shaping": "method.shaping",
        "objective": "method.objective", "teacher": "method.teacher", "rewards": "method.rewards",
        "distributed": "parallel.distributed", "zero": "parallel.zero",
        "trainer": "training.trainer", "engine": "training.engine", "precision": "training.precision",
        "checkpoint": "training.checkpoint", "run_folder": "training.run_folder",
        "signals": "training.signals", "callbacks": "training.callbacks", "progress": "training.progress",
        "threads": "training.threads", "gate_check": "training.gate_check",
        "components": "training.components",
        "evaluate": "evaluation.evaluate", "report": "evaluation.report", "verdict": "evaluation.verdict",
        "stats": "evaluation.stats", "ablate": "evaluation.ablate", "export": "evaluation.export",
        "runs": "evaluation.runs",
        "commands": "cli.commands", "subcommands": "cli.subcommands", "components_view": "cli.components_view",
    }.items()
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):  # already executed under its new name
        pass


def install() -> None:
    """Put the alias finder last on ``sys.meta_path`` (once): real modules are always found first."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
