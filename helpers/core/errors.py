"""Every error class of the lab, in one place: each message says what was wrong, where, and what to do."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder, split file or class-name mapping does not fit what was asked."""


class BadImageError(ValueError):
    """An image file cannot be decoded; the message names the file."""


class ModelSpecError(ValueError):
    """A model spec string that does not name a model."""


class WeightsNotFoundError(FileNotFoundError):
    """Weights are not on disk and cannot be downloaded; the message says what to place where."""


class RecordError(ValueError):
    """A results file holds a line that is not a record."""


class NotWritableError(OSError):
    """A folder the suite must write to cannot be written; raised before any work is done."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the network (strict load) or its expected sha256."""


class ConfigError(ValueError):
    """A configuration that cannot run as written; the message names the key, what was expected and
    what was given. The suite turns it into exit code 2 before any work starts."""


class SkippedFilesWarning(UserWarning):
    """Files in a dataset folder that are not read as images (hidden, broken symlinks, other extensions);
    the message names them and the dataset card lists them."""


class StaleCacheWarning(UserWarning):
    """A cache file existed but could not be used; it is being rebuilt."""


class ProfileError(ConfigError):
    """A profile that does not exist, or whose data or weights are missing (the message says what to do)."""


class RunInProgressError(RuntimeError):
    """Another process owns the run folder (the same training started twice); the message names it."""


class MissingCheckpointError(RuntimeError):
    """A checkpoint an experiment needs was not recorded, and training it here is switched off; the
    message names the run that makes it."""
