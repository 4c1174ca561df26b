"""The typer application, its console and progress bar, and the error-handling entry point."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from twodtm.errors import TwodtmError

app = typer.Typer(
    name="twodtm",
    help="Two-dimensional template matching of cryo-EM micrographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def correlation_progress() -> Progress:
    """A progress bar showing work done, correlations per second and time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def main() -> None:
    """Entry point: run the app, turning twodtm errors into one clear line, exit 2."""
    try:
        app()
    except TwodtmError as err:
        console.print(f"error: {err}", style="bold red", highlight=False, markup=False)
        raise SystemExit(2) from None
