"""Named errors of the training pipeline: each says what went wrong and what was kept."""

from __future__ import annotations

import sys

import jax

from jaxflows.core.errors import JaxflowsError


def warn(message: str) -> None:
    """Print a warning about the run to stderr, once (from the lead process)."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


class TrainingError(JaxflowsError, RuntimeError):
    """Base class: a run stopped (or refused to start) without losing the last good checkpoint."""


class ConfigError(JaxflowsError, ValueError):
    """A config field, or an argument of a training function, has a value no run can use (checked
    before anything compiles)."""


class ConfigFileError(JaxflowsError, TypeError):
    """A config file that does not run (a syntax error, ...), sets a field TrainConfig does not have,
    or whose `get_config()` does not return a TrainConfig; the message names the file and line."""


class ProcessSettingsError(JaxflowsError, RuntimeError):
    """A process-wide setting (CPU devices) asked for after JAX's backends started with another."""


class DistributedInitError(JaxflowsError, RuntimeError):
    """A multi-process run could not start: joined too late (after JAX computed something), with
    settings the processes cannot use (the coordinator's port taken, one process id twice, another
    process count), or a process did not arrive within the initialisation timeout."""


class ConfigMismatchError(TrainingError):
    """Resuming a workdir with a config that changes the model, the data or the optimiser state, or
    processes of one run given different configs or data (found before anything compiles)."""


class DivergenceError(TrainingError):
    """Too many consecutive non-finite updates: training stopped, the last good checkpoint is kept."""


class CheckpointError(TrainingError):
    """No checkpoint of the workdir could be read and verified, or one could not be written."""


class CheckpointStructureError(CheckpointError):
    """An intact checkpoint that holds a different model (other parameter names or shapes, as after
    an upgrade that renames them): nothing is moved and the run does not start over."""


class CheckpointFormatError(CheckpointError):
    """A workdir written in an older checkpoint format (parameter paths since renamed): nothing is
    read or moved; the message gives the command that converts it."""


class WorkdirLockedError(TrainingError):
    """Another process is training in this workdir."""


class WorkdirWriteError(TrainingError):
    """A write into the workdir failed (disk full, quota, permissions): the run stops."""
