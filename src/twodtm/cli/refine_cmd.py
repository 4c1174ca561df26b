"""``twodtm refine``: local refinement of the particles of a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console, make_progress
from twodtm.config import RefineConfig, load_program_config
from twodtm.programs.refine import run_refine
from twodtm.progress import reporting

__all__ = ["refine", "register"]


def refine(
    config: Annotated[
        Path, typer.Argument(help="refine YAML (see `twodtm config example refine`)")
    ],
    output: Annotated[Path | None, typer.Option(help="output directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing result")] = False,
) -> None:
    """Refine each particle's orientation, defocus, pixel size and position."""
    cfg = load_program_config(RefineConfig, config)
    with make_progress() as progress, reporting(progress, "refine"):
        table = run_refine(cfg, output, overwrite)
    gain = table["delta_zscore"].mean()
    console.print(
        f"refined {len(table)} particles; mean z-score {table['zscore'].mean():.2f} "
        f"({gain:+.2f}), median move {table['delta_angle'].median():.2f} deg"
    )


def register(app: typer.Typer) -> None:
    """Add ``twodtm refine`` to ``app``."""
    app.command("refine")(refine)
