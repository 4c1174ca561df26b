"""``twodtm peaks``: particles from a search result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console
from twodtm.errors import ConfigError
from twodtm.io.tables import COORDINATE_LIST, COORDINATE_SUFFIX
from twodtm.picking import PEAKS_RECORD, PeakSettings
from twodtm.programs.peaks import pick_and_write

__all__ = ["peaks", "register"]


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
    micrograph_name: Annotated[
        str | None,
        typer.Option(
            help="rlnMicrographName in the STAR files: the name in RELION's "
            "micrographs STAR (default: the micrograph path searched)"
        ),
    ] = None,
) -> None:
    """Pick peaks; write the particle tables into the result directory.

    particles.star (optics + particles) and particles.csv hold the full table;
    RELION's extraction reads <micrograph>_twodtm.star (relion_preprocess
    --coord_dir RESULT --coord_suffix _twodtm.star) or coordinates.star
    (RELION 4/5: --coord_list RESULT/coordinates.star).
    """
    if false_positives <= 0:
        raise ConfigError(f"--false-positives must be > 0, got {false_positives}")
    if min_distance is not None and min_distance < 0:
        raise ConfigError(f"--min-distance must be >= 0, got {min_distance}")
    settings = PeakSettings(false_positives, zscore, min_distance, border)
    table = pick_and_write(result, settings, template_size, micrograph_name)
    console.print(
        f"{len(table)} particles -> {result / 'particles.star'}, "
        f"{result / 'particles.csv'} (settings used: {result / PEAKS_RECORD}); "
        "for RELION's extraction: "
        f"{result / COORDINATE_LIST} (--coord_list) and --coord_dir {result} "
        f"--coord_suffix _{COORDINATE_SUFFIX}.star",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``twodtm peaks`` to ``app``."""
    app.command("peaks")(peaks)
