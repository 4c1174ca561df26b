"""What the report reads from a result directory: micrograph, picks, threshold.

The threshold drawn is the one the picks were made with, from ``peaks.json``
(``programs.peaks.PeakRecord``); without that record it is the default of one
expected false positive per micrograph, and the report says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

from twodtm.errors import InputFileError
from twodtm.io.mrc import read_mrc
from twodtm.io.results import MatchResult
from twodtm.io.tables import read_particles
from twodtm.picking import (
    PeakRecord,
    PeakSettings,
    number_of_trials,
    pick_peaks,
    read_peak_record,
)
from twodtm.significance import threshold_for_false_positives

__all__ = [
    "Picks",
    "read_micrograph",
    "read_picks",
    "read_truth",
    "template_box",
    "with_map_values",
]


@dataclass(frozen=True)
class Picks:
    """The particles the report draws and the threshold they were picked at.

    Attributes
    ----------
    particles : DataFrame
        Columns ``x``, ``y`` (pixels), usually ``zscore`` and ``defocus``.
    source : str
        Where the particles came from (a file name or how they were picked).
    threshold : float
        z-score threshold of the picks.
    threshold_source : str
        How that threshold is known (``peaks.json``, or the 1-false-positive
        default, labelled as such).
    notes : tuple of str
        Warnings for the page (e.g. a ``peaks.json`` of another search).
    """

    particles: pd.DataFrame
    source: str
    threshold: float
    threshold_source: str
    notes: tuple[str, ...] = ()


def read_micrograph(
    result: MatchResult, result_dir: Path
) -> tuple[np.ndarray, str | None]:
    """Read the searched micrograph, or return the z-score map and a note if gone."""
    name = result.metadata.micrograph
    shape = result.maps["zscore"].shape
    for path in (Path(name), result_dir / Path(name).name):
        if name and path.is_file():
            try:
                image = read_mrc(path).data
            except InputFileError:
                continue
            if image.shape == shape:
                return image, None
    note = (
        f"The micrograph ({name or 'not named in result.json'}) could not be "
        "read with the shape of the maps; particles are drawn on the z-score map."
    )
    return result.maps["zscore"], note


def template_box(result: MatchResult) -> int | None:
    """Side of the template box in pixels (None when neither recorded nor readable).

    ``template_size`` in ``result.json`` wins; otherwise the template's MRC header.
    """
    if result.metadata.template_size is not None:
        return result.metadata.template_size
    name = result.metadata.template
    if not name or not Path(name).is_file():
        return None
    try:
        with mrcfile.open(name, header_only=True, permissive=True) as mrc:
            return int(mrc.header.nx)
    except (ValueError, OSError, EOFError):
        return None


def _recorded(record: PeakRecord) -> str:
    if record.fixed_threshold:
        return "the fixed z-score the particles were picked at (peaks.json)"
    rate = record.settings.false_positives
    return (
        f"{rate:g} expected false positive{'' if rate == 1 else 's'} per "
        "micrograph, as the particles were picked (peaks.json)"
    )


def _default_threshold(result: MatchResult, why: str) -> tuple[float, str]:
    threshold = threshold_for_false_positives(number_of_trials(result))
    return threshold, f"1 expected false positive per micrograph, the default: {why}"


def _recorded_threshold(
    result_dir: Path, result: MatchResult
) -> tuple[float, str, tuple[str, ...]]:
    """Return the threshold of ``peaks.json`` or, without one, the labelled default."""
    record = read_peak_record(result_dir)
    if record is None:
        return (*_default_threshold(result, "no peaks.json"), ())
    if record.n_trials != number_of_trials(result):
        note = (
            f"peaks.json was written for a search of {record.n_trials:.4g} trials, "
            f"not this one ({number_of_trials(result):.4g}); run `twodtm peaks` again."
        )
        return (*_default_threshold(result, "peaks.json is stale"), (note,))
    return record.threshold, _recorded(record), ()


def read_picks(
    result_dir: Path,
    result: MatchResult,
    box: int | None,
    particles: pd.DataFrame | None = None,
) -> Picks:
    """Find the particles to draw and their threshold.

    ``particles`` given by the caller, else ``particles.star`` or
    ``particles.csv`` in ``result_dir`` (with ``peaks.json``'s threshold), else
    picked now with the default settings.

    Raises
    ------
    InputFileError
        No particle table, and the template box size is unknown.
    """
    if particles is not None:
        return Picks(
            particles, "given by the caller", *_recorded_threshold(result_dir, result)
        )
    for name in ("particles.star", "particles.csv"):
        if (result_dir / name).is_file():
            table = read_particles(result_dir / name)
            return Picks(table, name, *_recorded_threshold(result_dir, result))
    if box is None:
        raise InputFileError(
            f"{result_dir}: no particles.star and the template box size is unknown "
            "(template file gone); run `twodtm peaks` with --template-size first."
        )
    table, record = pick_peaks(result, PeakSettings(), box)
    how = "1 expected false positive per micrograph, the default settings"
    return Picks(table, "picked with the default settings", record.threshold, how)


def read_truth(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the truth table (STAR or CSV, pixels), naming the fix when it is gone."""
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"{file}: truth table not found; check the --truth path.")
    return read_particles(file)


def with_map_values(particles: pd.DataFrame, result: MatchResult) -> pd.DataFrame:
    """Copy the table, reading missing ``zscore`` and ``defocus`` from the maps."""
    table = particles.reset_index(drop=True)
    h, w = result.maps["zscore"].shape
    rows = np.clip(np.rint(table["y"].to_numpy(dtype=float)).astype(int), 0, h - 1)
    cols = np.clip(np.rint(table["x"].to_numpy(dtype=float)).astype(int), 0, w - 1)
    for name in ("zscore", "defocus"):
        if name not in table.columns:
            table[name] = result.maps[name][rows, cols].astype(float)
    return table
