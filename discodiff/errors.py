"""The error types of discodiff: the bottom layer, imported by every other module and importing none.

Every error meant for the user derives from `DiscodiffError`; the command line prints it as one line (`error: ...`)
and exits with status 2. `ConfigError` stays the name most code raises (an unusable option or file), and is the same
class, so `except ConfigError` keeps catching every user-facing error.
"""
from __future__ import annotations


class DiscodiffError(ValueError):
    """An error whose message is meant for the user: one line, naming what to change."""


ConfigError = DiscodiffError


class OutputError(DiscodiffError):
    """An output path that cannot be written (a file where a folder should be, a full disk, no permission)."""


class CheckpointError(DiscodiffError):
    """Weights or a run folder that cannot be used (missing, corrupt, another network's, a pickle)."""


class RunLockedError(CheckpointError):
    """A run folder that another live process is training."""


class DataError(DiscodiffError):
    """A data set that cannot be loaded (missing package, unreadable file, wrong shape)."""


class AnalysisError(DiscodiffError):
    """An analysis that does not apply to this run (no latents, no prior, not an image model)."""


class FIDError(DiscodiffError):
    """An FID computation that cannot go ahead (mismatched statistics, missing detector weights)."""


class DetectorError(FIDError):
    """The Inception detector cannot be loaded or run."""


class TrainingDivergedError(DiscodiffError):
    """Training produced non-finite values; the message says where and what to try."""
