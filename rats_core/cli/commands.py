"""Where ``rats`` subcommands are registered: one table, filled by the modules that define them.

A command module decorates its function with :func:`command` and :func:`arg`; the CLI
(``rats_core/cli/main.py``) imports the modules listed in :data:`COMMAND_MODULES` and builds its parser from
:data:`COMMANDS`. This module imports nothing of rats, so evaluation, export, ablation and estimation
can define their commands without importing the CLI (and without import circles).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable

#: subcommand name -> (help, add_arguments(parser), run(args) -> int)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}

#: the modules besides the CLI's own that define subcommands, imported when the CLI starts
#: (their arguments only: rats_core/cli/subcommands.py imports each implementation when its command runs, so
#: that ``rats --help`` needs no torch)
COMMAND_MODULES = ("rats_core.cli.subcommands",)


def command(name: str, help: str):
    """Register the decorated ``fn(args) -> exit code`` as ``rats NAME``."""

    def deco(fn):
        def add_args(p, _fn=fn):
            for args, kwargs in getattr(_fn, "_args", []):
                p.add_argument(*args, **kwargs)

        COMMANDS[name] = (help, add_args, fn)
        return fn

    return deco


def arg(*args, **kwargs):
    """An ``argparse`` argument of the command below it (same arguments as ``add_argument``)."""

    def deco(fn):
        fn._args = [(args, kwargs)] + list(getattr(fn, "_args", []))
        return fn

    return deco


def load_command_modules() -> None:
    """Import every module of :data:`COMMAND_MODULES` (each registers its commands on import)."""
    for mod in COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
