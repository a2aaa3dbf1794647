"""Errors a user can fix: the command line prints their message, without a traceback."""

from __future__ import annotations


class AutocompressError(Exception):
    """Base of the errors that describe a problem with the user's input or environment (a bad
    config, a run folder in use, a missing file); the message says what to change."""


class ConfigError(AutocompressError, ValueError):
    """A config file that cannot be used; the message names the file and the offending field."""


class RunLockedError(AutocompressError, RuntimeError):
    """A run folder that another live process is searching in."""


class DamagedFileError(AutocompressError, OSError):
    """A file of a run folder that exists but cannot be read (truncated, overwritten, not what
    its name says); the message names it and what to do."""
