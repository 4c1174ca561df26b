"""``twodtm demo``: the whole pipeline on data shipped in the package."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import make_progress
from twodtm.programs.demo import run_demo_verbose

__all__ = ["demo", "register"]


def demo(
    output: Annotated[Path, typer.Option(help="output directory")] = Path(
        "twodtm-demo"
    ),
    report: Annotated[bool, typer.Option(help="also write the report")] = True,
) -> None:
    """Simulate a micrograph, search it, pick particles and score them."""
    with make_progress() as progress:
        lines = run_demo_verbose(output, report, progress)
    sys.stdout.write("\n".join(lines) + "\n")


def register(app: typer.Typer) -> None:
    """Add ``twodtm demo`` to ``app``."""
    app.command("demo")(demo)
