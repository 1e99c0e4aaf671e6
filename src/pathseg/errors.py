"""Exceptions that mean "the user gave us something we cannot use"."""

from __future__ import annotations


class PathsegError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class InputError(PathsegError):
    """An input file or folder is missing, unreadable or of an unsupported kind."""


class OutputError(PathsegError):
    """An output location cannot be written, or would overwrite results."""
