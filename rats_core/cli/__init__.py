"""The command line: ``rats`` and ``rats-run`` (``main``), the command table (``commands``), the
subcommands that train, evaluate, export and estimate (``subcommands``), ``rats plugins`` (``components_view``).

The top layer: it may import everything; nothing imports it. Importing it imports no torch.
"""

from rats_core.cli.main import main, run_main

__all__ = ["main", "run_main"]
