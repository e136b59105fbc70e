"""Command line: ``rats-run CONFIG [key=value ...]`` and ``rats {plugins,validate,run,eval,sample,export}``.

User mistakes (``RatsError``) print one ``error:`` line block and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

from .errors import RatsError

# the subcommand table and its decorators live in rats_core/commands.py (a leaf module, so that the
# modules defining commands never import the CLI)
from .commands import COMMANDS, arg, command, load_command_modules  # noqa: E402,F401

# ----------------------------------------------------------------------------- commands


@command("plugins", "list installed plugins and the components they register")
@arg("--json", action="store_true", help="print JSON for machines")
def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_registry, list_plugins

    plugins = list_plugins()
    if args.json:
        print(json.dumps(plugins, indent=2))
        return 0
    registry = get_registry()
    rows = []
    for kind, table in registry.components.items():
        for name, c in sorted(table.items()):
            rows.append((kind[:-1], name, c.plugin, c.doc))
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("KIND", "NAME", "PLUGIN"))]
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'PLUGIN':<{widths[2]}}  DESCRIPTION")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    for p in plugins:
        if "error" in p:
            print(f"! plugin {p['name']}: {p['error']}", file=sys.stderr)
    return 0


@command("validate", "check a config and that every component it names exists; runs nothing")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
def cmd_validate(args: argparse.Namespace) -> int:
    from .config import check_components, load_config

    cfg = load_config(args.config, args.overrides)
    check_components(cfg, source=args.config)
    print(f"{args.config}: OK (backbone {cfg.backbone.name}, K={cfg.student.steps}, N={cfg.teacher.steps}, "
          f"gate {cfg.gate.name}, horizons {cfg.horizons.name}, rewards {[r.name for r in cfg.rewards]})")
    from .estimate import gpu_config, validate_line

    if gpu_config(cfg):  # a GPU run: say whether it fits before anyone waits for the weights
        print(validate_line(cfg, args.config))
    return 0


@command("run", "train: same as rats-run")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
@arg("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
def cmd_run(args: argparse.Namespace) -> int:
    from .config import check_components, load_config
    from .trainer import train

    cfg = load_config(args.config, args.overrides)
    check_components(cfg, source=args.config)
    train(cfg)
    return 0


# ----------------------------------------------------------------------------- entry points


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="rats", description="Reward-Aware Trajectory Shaping")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_fn=fn)
    return parser


#: subcommands that build a config's components (and so may load weights from the Hub)
WEIGHTED_COMMANDS = ("run", "validate", "eval", "sample", "export", "ablate")

#: subcommands that sample on the CPU and take --threads (training reads train.threads instead)
THREADED_COMMANDS = ("eval", "sample")


def _with_threads(fn):
    def run(args):
        from .threads import apply_threads, parse_threads

        apply_threads(parse_threads(args.threads))
        return fn(args)

    return run


def _load_command_modules() -> None:
    """Subcommands defined in other modules register themselves on import (rats_core/commands.py)."""
    load_command_modules()


def _version() -> str:
    from . import __version__

    return f"rats {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`rats eval RUN --steps 2 eval.seed=3`)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.parse_args(argv)  # let argparse report the unrecognised arguments
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    return _run_guarded(args._fn, args)


def run_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rats-run", description="Train a few-step student with RATS.")
    parser.add_argument("config", help="experiment YAML, e.g. experiments/digits.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=10 gate.name=hard")
    # the `deepspeed` launcher appends --local_rank=N; the rank is read from the environment instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    return _run_guarded(cmd_run, args)


def _run_guarded(fn, args) -> int:
    try:
        return int(fn(args) or 0)
    except RatsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rats plugins | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    # Under `python -m`, this file runs as __main__ while other modules register their subcommands
    # on the importable rats_core.cli; dispatch through that one so every subcommand is known.
    from rats_core.cli import main as _main

    sys.exit(_main())
