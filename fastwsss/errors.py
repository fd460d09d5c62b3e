"""Errors that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations


class FastwsssError(Exception):
    """Base class: a problem with the user's input or settings, reported as one line."""


class DataError(FastwsssError):
    """A data file is missing, corrupt or inconsistent. The message names the file."""


class ConfigError(FastwsssError):
    """A setting is unknown or out of range. The message names the setting."""


class CheckpointError(FastwsssError):
    """A checkpoint is missing or does not match the data or the model. The message names the file."""


class RunDirError(FastwsssError):
    """The run directory cannot be used (exists without --resume, locked, not writable)."""


def one_line(message: str) -> str:
    """Collapse a message to one line so the CLI never prints a multi-line wall of text."""
    return " ".join(str(message).split())
