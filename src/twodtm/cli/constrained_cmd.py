"""``twodtm constrained``: search particle B near each particle A."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console, make_progress
from twodtm.config import ConstrainedConfig, load_program_config
from twodtm.programs.constrained import run_constrained
from twodtm.progress import reporting

__all__ = ["constrained", "register"]


def constrained(
    config: Annotated[
        Path,
        typer.Argument(
            help="constrained YAML (see `twodtm config example constrained`)"
        ),
    ],
    output: Annotated[Path | None, typer.Option(help="output directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing result")] = False,
) -> None:
    """Search B at its expected place relative to each A, with a matching threshold."""
    cfg = load_program_config(ConstrainedConfig, config)
    with make_progress() as progress, reporting(progress, "constrained"):
        table, threshold = run_constrained(cfg, output, overwrite)
    console.print(
        f"found B next to {int(table['detected'].sum())} of {len(table)} A particles "
        f"(z-score threshold {threshold:.2f})"
    )


def register(app: typer.Typer) -> None:
    """Add ``twodtm constrained`` to ``app``."""
    app.command("constrained")(constrained)
