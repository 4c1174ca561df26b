"""``twodtm match``: the global search of one micrograph or of many."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from twodtm.batch import SUMMARY_NAME, list_micrographs, run_batch
from twodtm.cli.app import console, correlation_progress
from twodtm.config import MatchConfig, load_match_config, parse_config
from twodtm.match import run_match


def _with_compute(config: MatchConfig, overrides: dict[str, Any]) -> MatchConfig:
    """``config`` with the given ``compute`` fields replaced (validated again)."""
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if not chosen:
        return config
    data = config.model_dump(mode="json")
    data["compute"] = {**data["compute"], **chosen}
    return parse_config(MatchConfig, data, "command-line options")


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
    workers: Annotated[
        int | None,
        typer.Option(help="local worker processes (default: one per device)"),
    ] = None,
    checkpoint_interval: Annotated[
        float | None, typer.Option(help="minutes between checkpoints (0: every chunk)")
    ] = None,
) -> None:
    """Search a micrograph (or many) for every copy of a template.

    Re-running the same command resumes an interrupted search from its checkpoint
    and, with --micrographs, skips micrographs that already have a result.
    """
    cfg = _with_compute(
        load_match_config(config),
        {
            "scheduler": scheduler,
            "workers": workers,
            "checkpoint_interval_minutes": checkpoint_interval,
        },
    )
    if micrographs is None:
        run_match(cfg, output, overwrite, correlation_progress(), restart=restart)
        return
    root = output or Path(cfg.output.directory)
    rows = run_batch(
        cfg,
        list_micrographs(micrographs),
        root,
        overwrite=overwrite or cfg.output.overwrite,
        restart=restart,
        progress_bar=correlation_progress(),
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
