"""``twodtm run``: a dataset through match, peaks and refine, combined for RELION."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import BAD_INPUT, make_progress
from twodtm.config import load_run_config, with_overrides
from twodtm.programs.run import run_dataset

__all__ = ["register", "run"]


def run(
    config: Annotated[
        Path, typer.Argument(help="dataset YAML (see `twodtm config example run`)")
    ],
    output: Annotated[Path | None, typer.Option(help="output directory")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="run every stage again, done or not")
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="discard checkpoints; search from the start")
    ] = False,
    scheduler: Annotated[
        str | None, typer.Option(help="address of a running Dask scheduler")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config value, e.g. --set refine=null"),
    ] = None,
) -> None:
    """Search, pick and refine every micrograph; write one particles STAR.

    Running the same command again skips every finished stage and resumes an
    interrupted search from its checkpoint. A micrograph that fails is reported
    (summary.csv, report.html) and the others go on; the exit status is then 2.
    """
    pairs = list(settings or [])
    if scheduler is not None:
        pairs.append(f"compute.scheduler={scheduler}")
    cfg = with_overrides(load_run_config(config), pairs)
    with make_progress() as progress:
        outcome = run_dataset(
            cfg, output, overwrite=overwrite, restart=restart, progress=progress
        )
    if outcome.failed:
        raise typer.Exit(code=BAD_INPUT)


def register(app: typer.Typer) -> None:
    """Add ``twodtm run`` to ``app``."""
    app.command("run")(run)
