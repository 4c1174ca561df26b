"""``twodtm run``: a dataset from micrographs to one particles STAR for RELION.

Micrographs come from a glob or a RELION micrographs STAR (``programs.batch``:
per-micrograph CTF, optics groups, one result folder per micrograph). Each
micrograph goes through match, peaks and refine in turn (``_run_stages``), the
searches on one executor for the whole dataset (in-process, local workers or
Dask, as ``compute`` says). Every stage leaves a marker, so a run started again
skips what is done and resumes an interrupted search from its checkpoint. A
micrograph that fails (unreadable, invalid CTF) is recorded with its stage and
message and the others go on. At the end ``<output>`` holds ``particles.star``
(all particles, every optics group), ``particles.csv``, ``coordinates.star``,
``summary.csv`` and ``report.html`` (``report.write_dataset_report``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from twodtm.config import MatchConfig, RunConfig, dump_yaml
from twodtm.errors import TwodtmError
from twodtm.io.tables import OpticsGroup, write_csv_table, write_particle_set
from twodtm.model_template import resolve_model_template
from twodtm.picking import PeakSettings
from twodtm.programs._run_outputs import (
    RUN_COLUMNS,
    combined_table,
    optics_groups,
    pending_row,
    previous_rows,
    write_coordinate_list,
    write_coordinate_tree,
)
from twodtm.programs._run_stages import (
    STAGES,
    final_table,
    is_done,
    match_stage,
    peaks_stage,
    refine_stage,
)
from twodtm.programs.batch import (
    SUMMARY_NAME,
    TEMPLATES,
    MicrographEntry,
    list_micrographs,
    micrograph_config,
    result_directories,
    write_summary,
)
from twodtm.programs.match import executor_for
from twodtm.progress import ProgressReporter, as_reporter, format_duration
from twodtm.report import read_zscore_histogram, write_dataset_report
from twodtm.search.executors import Executor

__all__ = ["DatasetRun", "run_dataset"]

# A micrograph's failure: bad input, invalid optics, a refused search, no disk.
_MICROGRAPH_ERRORS = (TwodtmError, OSError, ValueError)


@dataclass(frozen=True)
class DatasetRun:
    """What ``run_dataset`` did.

    Attributes
    ----------
    rows : list of dict
        One per micrograph (``_run_outputs.RUN_COLUMNS``), as in ``summary.csv``.
    particles : pandas.DataFrame
        The combined particles (plain columns, ``micrograph``, ``optics_group``).
    groups : list of OpticsGroup
        The optics groups of ``particles.star``.
    output : Path
        The output directory.
    """

    rows: list[dict[str, Any]]
    particles: pd.DataFrame
    groups: list[OpticsGroup]
    output: Path

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The rows of the micrographs that failed."""
        return [r for r in self.rows if r["status"] == "failed"]

    def summary_line(self) -> str:
        """Return the last log line: micrographs, particles, the outputs."""
        searched = sum(r["match"] == "ran" for r in self.rows)
        done = sum(r["status"] == "done" for r in self.rows)
        return (
            f"run: {done} of {len(self.rows)} micrographs finished ({searched} "
            f"searched now), {len(self.failed)} failed; {len(self.particles)} "
            f"particles in {len(self.groups)} optics groups -> "
            f"{self.output / 'particles.star'}; {self.output / SUMMARY_NAME}, "
            f"{self.output / 'report.html'}"
        )


@dataclass(frozen=True)
class _Context:
    """What every micrograph's stages share."""

    config: RunConfig
    reporter: ProgressReporter
    overwrite: bool
    restart: bool
    count: int


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


def _configs(
    config: RunConfig, entries: Sequence[MicrographEntry]
) -> list[MatchConfig | TwodtmError]:
    """Each micrograph's match config, validated now, or the error it gave."""
    data = config.match_data()
    found: list[MatchConfig | TwodtmError] = []
    for entry in entries:
        try:
            found.append(micrograph_config(data, entry))
        except TwodtmError as err:
            found.append(err)
    return found


def _stage_runner(
    ctx: _Context,
    mic: MatchConfig,
    row: dict[str, Any],
    executor: Executor,
    label: str,
) -> Callable[[str], str]:
    """Return a function that runs one named stage of the micrograph of ``row``."""
    directory = Path(row["directory"])
    peaks = PeakSettings(**ctx.config.peaks.model_dump())
    refine = ctx.config.refine
    name = row["micrograph"]

    def template_config() -> MatchConfig:
        # An atomic model is simulated once per pixel size for the whole dataset
        # (cached by content in the run's TEMPLATES folder), not per micrograph.
        return resolve_model_template(mic, directory.parent / TEMPLATES)

    def run(stage: str) -> str:
        if stage == "match":
            return match_stage(
                template_config(),
                directory,
                executor,
                ctx.reporter,
                f"match {label}",
                overwrite=ctx.overwrite,
                restart=ctx.restart,
            )
        if stage == "peaks":
            return peaks_stage(directory, peaks, name)
        if refine is None:
            return "off"
        return refine_stage(
            template_config(), directory, refine, name, ctx.reporter, f"refine {label}"
        )

    return run


def _run_stages(
    ctx: _Context, row: dict[str, Any], run: Callable[[str], str], label: str
) -> dict[str, Any]:
    """Run or skip each stage in turn; stop at the first that fails."""
    row = {**row, "status": "running", "failed_stage": "", "message": ""}
    directory = Path(row["directory"])
    for stage in STAGES:
        if stage == "refine" and ctx.config.refine is None:
            row["refine"] = "off"
            continue
        if not ctx.overwrite and is_done(directory, stage):
            row[stage] = "skipped"
            ctx.reporter.note(f"run {label}: {stage} skipped (done before)")
            continue
        ctx.reporter.note(f"run {label}: {stage} started")
        started = time.perf_counter()
        try:
            text = run(stage)
        except _MICROGRAPH_ERRORS as err:
            message = (str(err).strip().splitlines() or [type(err).__name__])[0]
            ctx.reporter.note(f"run {label}: FAILED at {stage}: {message}")
            return {
                **row,
                stage: "failed",
                "status": "failed",
                "failed_stage": stage,
                "message": message,
            }
        seconds = time.perf_counter() - started
        row[stage], row[f"{stage}_s"] = "ran", round(seconds, 3)
        ctx.reporter.note(f"run {label}: {stage} done in {_duration(seconds)}: {text}")
    return {**row, "status": "done"}


def _finish_row(
    row: dict[str, Any], refined: bool, tables: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    """Count a finished micrograph's particles; keep its table for the union."""
    if row["status"] != "done":
        return row
    directory = Path(row["directory"])
    table = final_table(directory, refined)
    tables[row["micrograph"]] = table
    histogram = read_zscore_histogram(directory) or {}
    return {
        **row,
        "particles": len(table),
        "max_zscore": histogram.get("max_zscore", float("nan")),
    }


def _write_outputs(
    root: Path,
    config: RunConfig,
    rows: list[dict[str, Any]],
    tables: dict[str, pd.DataFrame],
    groups: list[OpticsGroup],
) -> tuple[pd.DataFrame, list[OpticsGroup]]:
    """Write the combined particles (STAR, CSV), coordinate list and report.

    Returns the particles and the optics groups they use (the first group when
    there are none, so the STAR keeps an optics block).
    """
    particles = combined_table(rows, tables)
    used = {int(g) for g in particles["optics_group"]} if len(particles) else set()
    kept = [g for g in groups if g.number in used] or groups[:1]
    write_particle_set(particles, root / "particles.star", kept)
    write_csv_table(particles, root / "particles.csv")
    write_coordinate_list(root, rows, config.refine is not None)
    write_coordinate_tree(root, rows, config.refine is not None)
    write_dataset_report(root, rows, particles, len(kept), dump_yaml(config))
    return particles, kept


def run_dataset(
    config: RunConfig,
    output: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    restart: bool = False,
    progress: ProgressReporter | None = None,
    executor: Executor | None = None,
) -> DatasetRun:
    """Run match, peaks and refine on every micrograph of ``config``; combine.

    Parameters
    ----------
    config : RunConfig
        The dataset and its settings.
    output : path, optional
        Output directory (default ``config.output.directory``); each micrograph's
        results go into ``output/<micrograph stem>/``.
    overwrite : bool
        Run every stage again (else done stages are skipped).
    restart : bool
        Discard the checkpoints of interrupted searches.
    progress : ProgressReporter, optional
        Gets a line per micrograph stage (started, done in, skipped, FAILED),
        the searches' progress, and the final summary line.
    executor : Executor, optional
        Where the searches run (default: from ``config.compute``, closed at the
        end).

    Returns
    -------
    DatasetRun
        The summary rows, the combined particles and their optics groups.

    Raises
    ------
    InputFileError
        The micrographs spec matches nothing or is an unreadable STAR.
    ConfigError
        Two micrographs share a file name.
    """
    root = Path(output or config.output.directory)
    reporter = as_reporter(progress)
    entries = list_micrographs(config.micrographs, config.use_config_ctf)
    directories = result_directories(entries, root)
    root.mkdir(parents=True, exist_ok=True)
    configs = _configs(config, entries)
    valid = [c if isinstance(c, MatchConfig) else None for c in configs]
    numbers, groups = optics_groups(entries, valid)
    before = previous_rows(root / SUMMARY_NAME)
    rows = [
        pending_row(e, d, n, c, before.get(e.relion_name))
        for e, d, n, c in zip(entries, directories, numbers, valid, strict=True)
    ]
    ctx = _Context(
        config, reporter, overwrite or config.output.overwrite, restart, len(entries)
    )
    stages = ", ".join(s for s in STAGES if s != "refine" or config.refine)
    reporter.note(
        f"run: {len(entries)} micrographs from {config.micrographs} "
        f"({len(groups)} optics groups); stages {stages}; output {root}"
    )
    tables: dict[str, pd.DataFrame] = {}
    with contextlib.ExitStack() as stack:
        for k, mic in enumerate(configs):
            label = f"{directories[k].name} ({k + 1} of {len(entries)})"
            if isinstance(mic, TwodtmError):
                message = "; ".join(line.strip() for line in str(mic).splitlines())
                reporter.note(f"run {label}: FAILED at config: {message}")
                rows[k] = {
                    **rows[k],
                    "status": "failed",
                    "failed_stage": "config",
                    "message": message,
                }
            else:
                if executor is None:
                    executor = stack.enter_context(executor_for(mic))
                run = _stage_runner(ctx, mic, rows[k], executor, label)
                try:
                    rows[k] = _run_stages(ctx, rows[k], run, label)
                except BaseException:
                    rows[k] = {**rows[k], "status": "interrupted"}
                    write_summary(root / SUMMARY_NAME, rows, RUN_COLUMNS)
                    raise
                rows[k] = _finish_row(rows[k], config.refine is not None, tables)
            write_summary(root / SUMMARY_NAME, rows, RUN_COLUMNS)
    particles, kept = _write_outputs(root, config, rows, tables, groups)
    outcome = DatasetRun(rows, particles, kept, root)
    reporter.note(outcome.summary_line())
    return outcome
