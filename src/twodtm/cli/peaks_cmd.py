"""``twodtm peaks``: particles from a search result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console
from twodtm.errors import ConfigError
from twodtm.peaks import PeakSettings, pick_and_write


def peaks(
    result: Annotated[Path, typer.Argument(help="result directory of `twodtm match`")],
    false_positives: Annotated[
        float, typer.Option(help="expected noise peaks per micrograph")
    ] = 1.0,
    zscore: Annotated[
        float | None, typer.Option(help="fixed z-score threshold")
    ] = None,
    min_distance: Annotated[
        float | None, typer.Option(help="px between peaks (default: template radius)")
    ] = None,
    border: Annotated[
        int | None, typer.Option(help="px (default: half template)")
    ] = None,
    template_size: Annotated[
        int | None, typer.Option(help="template box, px (default: from result.json)")
    ] = None,
) -> None:
    """Pick peaks; write particles.star and particles.csv into the result directory."""
    if false_positives <= 0:
        raise ConfigError(f"--false-positives must be > 0, got {false_positives}")
    if min_distance is not None and min_distance < 0:
        raise ConfigError(f"--min-distance must be >= 0, got {min_distance}")
    settings = PeakSettings(false_positives, zscore, min_distance, border)
    table = pick_and_write(result, settings, template_size)
    console.print(
        f"{len(table)} particles -> {result / 'particles.star'}, "
        f"{result / 'particles.csv'}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``twodtm peaks`` to ``app``."""
    app.command("peaks")(peaks)
