"""The stages of ``twodtm run`` on one micrograph, and the files that mark them done.

``match`` is ``programs.match.run_match`` (resumed from its checkpoint),
``peaks`` ``picking.pick_peaks`` with the tables of ``programs.peaks.write_picks``,
``refine`` the local fit of ``local.refine_particles`` through the particle
programs' inputs (``programs._particles``), into ``refined/``. Each stage's last
file written is its marker; a stage counts as done when its marker exists and is
not older than the marker of the stage before (a search run again makes its
picks and their refinement stale).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from twodtm.config import MatchConfig, RefineStage
from twodtm.devices import resolve_devices
from twodtm.errors import InputFileError
from twodtm.io.results import MatchResult
from twodtm.io.tables import read_particles, write_coordinates, write_particles
from twodtm.local import refine_particles
from twodtm.picking import PEAKS_RECORD, PeakSettings, pick_peaks
from twodtm.programs._particles import (
    all_or_nothing,
    local_settings_from,
    read_map_and_micrograph,
    read_particle_table,
)
from twodtm.programs.match import run_match
from twodtm.programs.peaks import write_picks
from twodtm.progress import ProgressReporter, reporting
from twodtm.report import write_zscore_histogram
from twodtm.search.executors import Executor

__all__ = [
    "REFINED_DIRECTORY",
    "STAGES",
    "final_table",
    "is_done",
    "match_stage",
    "peaks_stage",
    "refine_stage",
]

STAGES = ("match", "peaks", "refine")
REFINED_DIRECTORY = "refined"
_MARKERS = {
    "match": Path("result.json"),
    "peaks": Path(PEAKS_RECORD),
    "refine": Path(REFINED_DIRECTORY) / "particles.csv",  # write_particles' last
}


def is_done(directory: Path, stage: str) -> bool:
    """Whether ``stage``'s marker exists and is not older than the one before it."""
    marker = directory / _MARKERS[stage]
    if not marker.is_file():
        return False
    index = STAGES.index(stage)
    if index == 0:
        return True
    before = directory / _MARKERS[STAGES[index - 1]]
    return before.is_file() and marker.stat().st_mtime_ns >= before.stat().st_mtime_ns


def final_table(directory: Path, refined: bool) -> pd.DataFrame:
    """Read the micrograph's particles: the refined table, else the picked one."""
    folder = directory / REFINED_DIRECTORY if refined else directory
    return read_particles(folder / "particles.csv")


def match_stage(
    config: MatchConfig,
    directory: Path,
    executor: Executor,
    progress: ProgressReporter,
    label: str,
    *,
    overwrite: bool,
    restart: bool,
) -> str:
    """Search the micrograph into ``directory``; return what the log line says."""
    result = run_match(
        config,
        directory,
        overwrite,
        progress,
        restart=restart,
        executor=executor,
        label=label,
    )
    return f"max z-score {float(result.maps['zscore'].max()):.2f}"


def peaks_stage(directory: Path, settings: PeakSettings, name: str) -> str:
    """Pick the particles, write their tables (named ``name``) and z-score counts."""
    result = MatchResult.load(directory)
    size = result.metadata.template_size
    if size is None:
        raise InputFileError(
            f"{directory}: result.json does not record the template size; search "
            "again (delete result.json)"
        )
    peaks, record = pick_peaks(result, settings, size)
    write_zscore_histogram(
        directory,
        result.maps["zscore"],
        result.metadata.correlations_per_pixel,
        record.threshold,
    )
    write_picks(directory, peaks, record, name, result.metadata.optics)
    return f"{len(peaks)} particles above z = {record.threshold:.2f}"


def refine_stage(
    config: MatchConfig,
    directory: Path,
    stage: RefineStage,
    name: str,
    progress: ProgressReporter,
    label: str,
) -> str:
    """Refine the picks of ``directory`` into ``directory/refined``.

    ``config`` names the template map the search used (an atomic model resolved
    already, once for the dataset, by ``programs.run``).
    """
    particles = read_particle_table(str(directory / "particles.csv"))
    optics = config.optics.to_optics()
    refined = particles
    if len(particles):
        device = resolve_devices(stage.compute.device)[0]
        # the search said what it replaced already
        template, micrograph = read_map_and_micrograph(config, device, False)
        settings = local_settings_from(
            stage.search, stage.compute.orientations_per_chunk
        )
        with reporting(progress, label):
            try:
                refined = refine_particles(micrograph, template, particles, settings)
            except BaseException:
                progress.stop()
                raise
            progress.finish()
    out = directory / REFINED_DIRECTORY
    with all_or_nothing(out):
        write_coordinates(refined, out, name)
        write_particles(refined, out, name, optics)
    if not len(refined):
        return "no particles to refine"
    gain = float(refined["delta_zscore"].mean())
    return (
        f"{len(refined)} particles, mean z-score {refined['zscore'].mean():.2f} "
        f"({gain:+.2f})"
    )
