"""``twodtm match``: the global search of one micrograph or of many."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console, make_progress
from twodtm.config import load_match_config, with_overrides
from twodtm.programs.batch import SUMMARY_NAME, list_micrographs, run_batch
from twodtm.programs.match import run_match
from twodtm.report import write_report


def match(
    config: Annotated[
        Path, typer.Argument(help="match YAML (see `twodtm config example`)")
    ],
    output: Annotated[Path | None, typer.Option(help="result directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing result")] = False,
    restart: Annotated[
        bool, typer.Option(help="discard a checkpoint and search from the start")
    ] = False,
    micrographs: Annotated[
        str | None,
        typer.Option(
            help="many micrographs: a quoted glob or a RELION micrographs STAR"
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="address of a running Dask scheduler")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="override a config value, e.g. --set compute.workers=2 "
            "--set compute.checkpoint_interval_minutes=5",
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="write report.html with pictures into the result")
    ] = True,
) -> None:
    """Search a micrograph (or many) for every copy of a template.

    The size of the search and an estimate of its time are printed first; one
    that would exceed compute.max_hours or the free memory stops there unless
    confirmed (--set compute.confirm_long_run=true). A micrographs STAR must give
    each micrograph's CTF (rlnDefocusU, rlnDefocusV, rlnDefocusAngle). Re-running
    the same command resumes an interrupted search from its checkpoint and, with
    --micrographs, skips micrographs that already have a result.
    """
    pairs = list(settings or [])
    if scheduler is not None:
        pairs.append(f"compute.scheduler={scheduler}")
    cfg = with_overrides(load_match_config(config), pairs)
    if micrographs is None:
        with make_progress() as progress:
            run_match(cfg, output, overwrite, progress, restart=restart)
        if report:
            page = write_report(output or cfg.output.directory)
            console.print(f"report: {page}", highlight=False)
        return
    root = output or Path(cfg.output.directory)
    entries = list_micrographs(micrographs)
    with make_progress() as progress:
        rows = run_batch(
            cfg,
            entries,
            root,
            overwrite=overwrite or cfg.output.overwrite,
            restart=restart,
            progress=progress,
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("searched", "skipped")}
    failed = [r for r in rows if r["status"] == "failed"]
    console.print(
        f"{counts['searched']} searched, {counts['skipped']} skipped (done before), "
        f"{len(failed)} failed; see {root / SUMMARY_NAME}",
        highlight=False,
    )
    if failed:
        raise typer.Exit(code=2)


def register(app: typer.Typer) -> None:
    """Add ``twodtm match`` to ``app``."""
    app.command("match")(match)


__all__ = ["match", "register"]
