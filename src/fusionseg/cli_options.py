"""Command-line options that several commands share, defined once so that the same
thing has the same flag, help and default on every command (``fusionseg train``,
``compare``, ``predict``, ``evaluate``, ``data check``, ``demo``)."""

from __future__ import annotations

from typing import Annotated

import typer

ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars (--no-progress: for logs and batch jobs).")
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars and no result table (errors, warnings and the output location are still printed).",
    ),
]
