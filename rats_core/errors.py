"""The project's own exception types.

Anything a user can cause (a config typo, a wrong path, missing weights, a broken plugin) is raised
as a :class:`RatsError`; the CLI prints its message on one line and exits with status 2, no
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RatsError(Exception):
    """Base class for errors caused by user input; printed without a traceback."""

    exit_code = 2


class ConfigError(RatsError):
    """The configuration file or an override is invalid."""


class PluginError(RatsError):
    """A plugin failed to import, raised in a hook, or broke its contract."""


class DuplicateComponentError(PluginError):
    """Two plugins registered a component of the same kind under the same name."""


class UnknownComponentError(ConfigError):
    """A config names a component nobody registered."""


class WeightsNotFoundError(RatsError):
    """Model weights are not available (offline, wrong path, missing component)."""


class CheckpointError(RatsError):
    """A checkpoint is missing, unsafe or does not match the model."""


class TrainingError(RatsError):
    """Training had to stop (non-finite loss, a reward plugin raised, output folder busy)."""


class UsageError(RatsError):
    """A command-line argument is invalid (a malformed ``--steps`` list, an unwritable ``-o``)."""


class RunFolderError(RatsError):
    """A folder given as a training run is missing or is not one (no ``config.yaml``)."""
