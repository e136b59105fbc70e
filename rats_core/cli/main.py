"""Command line: ``rats-run CONFIG [key=value ...]`` and ``rats {plugins,validate,run,eval,sample,export}``.

User mistakes (``RatsError``) print one ``error:`` line block and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

# the subcommand table and its decorators live in rats_core/cli/commands.py (a leaf module, so that the
# modules defining commands never import the CLI)
from rats_core.cli.commands import COMMANDS, arg, command, load_command_modules  # noqa: E402,F401
from rats_core.errors import RatsError

# ----------------------------------------------------------------------------- commands


@command("plugins", "list installed plugins and the components they register; NAME: one component's options")
@arg("name", nargs="?", metavar="NAME",
     help="a component (e.g. sigmoid, or gates/sigmoid when two kinds share a name): print its options")
@arg("--json", action="store_true", help="print JSON for machines (with every component's option schema)")
def cmd_plugins(args: argparse.Namespace) -> int:
    from rats_core.registry.plugins import get_registry, list_plugins

    if args.name:
        from rats_core.cli.components_view import show_component

        return show_component(args.name, as_json=args.json)
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
    if sys.stdout.isatty():
        print("\n`rats plugins NAME` prints a component's options (type, default, constraint).")
    return 0


@command("validate", "check a config, every component it names and their weights; trains nothing")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
@arg("--no-weights", action="store_true",
     help="skip the weights check (it loads each model once: seconds for small ones, minutes for large ones)")
def cmd_validate(args: argparse.Namespace) -> int:
    from rats_core.config import check_components, load_config

    cfg = load_config(args.config, args.overrides)
    check_components(cfg, source=args.config)
    from rats_core.weights import print_weights_report, weights_report, weights_verdict

    # the weights are checked before the first line, so that it says the whole truth (config and weights)
    statuses = None if args.no_weights else weights_report(cfg)
    print(f"{args.config}: config OK; {weights_verdict(statuses)} (backbone {cfg.backbone.name}, "
          f"K={cfg.student.steps}, N={cfg.teacher.steps}, gate {cfg.gate.name}, horizons {cfg.horizons.name}, "
          f"rewards {[r.name for r in cfg.rewards]}, callbacks {[c.name for c in cfg.callbacks]})")
    if _may_use_gpu(cfg):  # said without importing torch (seconds) where the answer is plainly no
        from rats_core.estimate.tables import gpu_config, validate_line

        if gpu_config(cfg):  # a GPU run: whether it fits
            print(validate_line(cfg, args.config))
    return print_weights_report(cfg, skip=args.no_weights, statuses=statuses)


def _may_use_gpu(cfg) -> bool:
    """False when a config certainly trains on the CPU: ``train.device`` says so, or it is unset and the
    machine has no NVIDIA or ROCm device node (``torch.cuda.is_available()`` would import torch)."""
    device = cfg.train.device
    if device is not None:
        return str(device).startswith("cuda")
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


@command("run", "train: same as rats-run")
@arg("config", help="experiment YAML")
@arg("overrides", nargs="*", help="key.sub=value overrides (values parsed as YAML)")
@arg("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
def cmd_run(args: argparse.Namespace) -> int:
    from rats_core.config import check_components, load_config
    from rats_core.weights import preflight

    cfg = load_config(args.config, args.overrides)
    check_components(cfg, source=args.config)
    preflight(cfg)  # missing weights named before torch, DeepSpeed and the models are imported
    if cfg.train.threads == "auto":
        from rats_core.training.threads import spin_if_idle

        spin_if_idle()  # an idle machine: spinning threads on every core (decided before torch loads OpenMP)
    from rats_core.training.trainer import train

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
        if name in THREADED_COMMANDS:
            p.add_argument("--threads", metavar="N", default="auto",
                           help="CPU threads of torch: auto (default: the cores free of other processes), N, or 0 "
                                "for torch's default (one per core; slow on a busy machine)")
        p.set_defaults(_fn=fn)
    return parser


#: subcommands that build a config's components (and so may load weights from the Hub)
WEIGHTED_COMMANDS = ("run", "validate", "eval", "sample", "export", "ablate")

#: subcommands that sample on the CPU and take --threads (training reads train.threads instead)
THREADED_COMMANDS = ("eval", "sample")


def _with_threads(fn):
    def run(args):
        from rats_core.training.threads import apply_threads, parse_threads

        apply_threads(parse_threads(args.threads))
        return fn(args)

    return run


def _load_command_modules() -> None:
    """Subcommands defined in other modules register themselves on import (rats_core/cli/commands.py)."""
    load_command_modules()


def _version() -> str:
    from rats_core import __version__
    return f"rats {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    from rats_core.training.progress import quiet_library_warnings

    quiet_library_warnings()
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
    if args.command in WEIGHTED_COMMANDS and args.command != "validate":
        from rats_core.training.progress import quiet_library_progress

        quiet_library_progress()
    fn = _with_threads(args._fn) if hasattr(args, "threads") and args.command in THREADED_COMMANDS else args._fn
    return _run_guarded(fn, args)


def run_main(argv: Sequence[str] | None = None) -> int:
    from rats_core.training.progress import quiet_library_warnings

    quiet_library_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rats-run", description="Train a few-step student with RATS.")
    parser.add_argument("config", help="experiment YAML, e.g. experiments/digits.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=10 gate.name=hard")
    # the `deepspeed` launcher appends --local_rank=N; the rank is read from the environment instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    from rats_core.training.progress import quiet_library_progress

    quiet_library_progress()
    return _run_guarded(cmd_run, args)


def _run_guarded(fn, args) -> int:
    from rats_core.errors import WeightsNotFoundError

    if getattr(args, "command", "run") in WEIGHTED_COMMANDS:
        from rats_core.weights import start_hub_probe

        start_hub_probe()  # in the background while the command starts up
    try:
        try:
            return int(fn(args) or 0)
        except WeightsNotFoundError as exc:
            from rats_core.weights import complete

            raise complete(exc) from None  # every missing model in one message, not one per run
    except RatsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rats plugins | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
