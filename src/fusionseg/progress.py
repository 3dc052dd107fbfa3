"""The one progress-bar style of every long-running step (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(disable: bool = False, transient: bool = False, console: Console | None = None) -> Progress:
    """A rich progress bar: description, bar, done/total, an ``info`` field (give
    ``info=...`` to ``add_task`` / ``update``), elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
        transient=transient,
        console=console,
    )
