"""``twodtm optimize-template``: sweep the template's pixel size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console, make_progress
from twodtm.config import OptimizeConfig, load_program_config
from twodtm.programs.optimize import run_optimize
from twodtm.progress import reporting

__all__ = ["optimize_template", "register"]


def optimize_template(
    config: Annotated[
        Path,
        typer.Argument(help="optimize YAML (see `twodtm config example optimize`)"),
    ],
    output: Annotated[Path | None, typer.Option(help="output directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing result")] = False,
) -> None:
    """Find the template pixel size that best matches particles at known poses."""
    cfg = load_program_config(OptimizeConfig, config)
    with make_progress() as progress, reporting(progress, "optimize-template"):
        result = run_optimize(cfg, output, overwrite)
    change = 100.0 * (result.best_pixel_size / result.nominal_pixel_size - 1.0)
    console.print(
        f"best template pixel size {result.best_pixel_size:.4f} A "
        f"({change:+.2f}% from {result.nominal_pixel_size:.4f} A)"
    )


def register(app: typer.Typer) -> None:
    """Add ``twodtm optimize-template`` to ``app``."""
    app.command("optimize-template")(optimize_template)
