"""The one exception type for the user's mistakes, and its named kinds.

Code raises :class:`UserError` when what was asked cannot be done and the user can fix it: a setting out of
range, a dataset not prepared, a checkpoint missing or written for another config, training that diverged.
The command line (:mod:`ncsn_jax.cli_errors`) prints such an error as one ``error: <message>`` line and exits
with :attr:`UserError.exit_code` (2); any other exception is a bug and keeps its traceback. Library functions
called with impossible arguments (a negative step count, a shape mismatch) raise ``ValueError`` as usual:
those are the caller's bug, not the user's.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the request (config, flags, files), reported without a traceback."""

    exit_code: int = 2


class DatasetNotPreparedError(UserError):
    """A TFDS dataset is not prepared (in a random-access format) in the data directory."""


class CheckpointNotFoundError(UserError):
    """No readable checkpoint in the workdir."""


class CheckpointMismatchError(UserError):
    """The checkpoint was written for a different model config (parameter shapes differ)."""


class WorkdirMismatchError(UserError):
    """The workdir holds a run of another model, dataset or example shape (its ``config.json`` says so)."""


class TrainingDivergedError(UserError):
    """Loss, gradients or update were non-finite more often than ``config.training.nonfinite_tolerance``."""


class NonFiniteSamplesError(UserError):
    """Sampling produced NaN or inf."""


class Interrupted(UserError):
    """The user pressed Ctrl-C (SIGINT); exits with 130, the shell's code for it."""

    exit_code = 130
