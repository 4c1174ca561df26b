"""``twodtm report``: pictures of a match result in one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console
from twodtm.report import write_report

__all__ = ["register", "report"]


def report(
    result_dir: Annotated[
        Path, typer.Argument(help="directory written by `twodtm match`")
    ],
    truth: Annotated[
        Path | None,
        typer.Option(
            help="STAR or CSV table of true positions (pixels): adds "
            "found/missed/false marks and recall-precision curves"
        ),
    ] = None,
) -> None:
    """Write report.html, its PNGs and report.json into RESULT_DIR."""
    page = write_report(result_dir, truth)
    console.print(f"report: {page}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``twodtm report`` to ``app``."""
    app.command("report")(report)
