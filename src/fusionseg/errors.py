"""Exception types. Every user-facing error names the offending file or argument and
says how to fix it.

Exit codes of the command line (one policy for every command, :func:`exit_code`):

- 0: success;
- 1: a data error: an input file or folder is missing, unreadable or inconsistent
  (:class:`DataError`, or an operating-system error while reading or writing), or
  ``fusionseg data check`` found a failing case;
- 2: a usage error: an invalid config or option (:class:`ConfigError`), outputs that
  exist and would be replaced, a run folder that holds another experiment, an output
  location that cannot be written (:class:`OutputError`).
"""

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


class OutputError(FusionsegError):
    """An output location that cannot be used (under a file, read-only, or holding
    results of another experiment)."""


#: Exit code of the data errors (see the module docstring).
EXIT_DATA = 1
#: Exit code of the usage errors.
EXIT_USAGE = 2


def exit_code(exc: BaseException) -> int:
    """The command-line exit code for ``exc`` (module docstring): 1 for data and
    operating-system errors, 2 for everything else a user can cause."""
    if isinstance(exc, FileExistsError):
        return EXIT_USAGE
    if isinstance(exc, (DataError, OSError)):
        return EXIT_DATA
    return EXIT_USAGE
