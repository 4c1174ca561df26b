"""The ``twodtm`` command line (typer)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

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
config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console(stderr=True)

EXAMPLES = {"match": "match.example.yaml"}


def example_text(program: str) -> str:
    """Commented example YAML of ``program``."""
    if program not in EXAMPLES:
        raise TwodtmError(f"no example for {program!r}: choose one of {sorted(EXAMPLES)}")
    return resources.files("twodtm.data").joinpath(EXAMPLES[program]).read_text("utf-8")


@config_app.command("example")
def config_example(
    program: Annotated[str, typer.Argument(help="program whose config to print")] = "match",
) -> None:
    """Print a commented example configuration."""
    sys.stdout.write(example_text(program))


def correlation_progress() -> Progress:
    """A progress bar showing orientations, correlations per second and time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
def match(
    config: Annotated[Path, typer.Argument(help="match YAML (see `twodtm config example`)")],
    output: Annotated[Path | None, typer.Option(help="result directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing result")] = False,
) -> None:
    """Search a micrograph for every copy of a template."""
    from twodtm.config import load_match_config
    from twodtm.match import run_match

    cfg = load_match_config(config)
    run_match(cfg, output, overwrite, correlation_progress())


def main() -> None:
    """Entry point: run the app, turning twodtm errors into one clear line."""
    try:
        app()
    except TwodtmError as err:
        console.print(f"error: {err}", style="bold red", highlight=False, markup=False)
        raise SystemExit(2) from None
