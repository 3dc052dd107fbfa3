"""Exception types. Every user-facing error names the offending file or argument and
says how to fix it."""

from __future__ import annotations

from pathlib import Path


class FusionsegError(Exception):
    """Base class of fusionseg's errors."""


class DataError(FusionsegError):
    """A problem with an input file or folder.

    Args:
        message: what is wrong.
        file: the file or folder concerned (shown first).
        fix: how the user can fix it.
    """

    def __init__(self, message: str, file: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.file = Path(file) if file is not None else None
        self.fix = fix
        text = message
        if file is not None:
            text = f"{file}: {message}"
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class ConfigError(FusionsegError):
    """An invalid configuration value or combination."""
