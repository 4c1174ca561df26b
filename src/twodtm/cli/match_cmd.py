"""``twodtm match``: the global search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import correlation_progress


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


def register(app: typer.Typer) -> None:
    """Add ``twodtm match`` to ``app``."""
    app.command("match")(match)
