"""``twodtm peaks``: pick the particles of a search result and write them.

The picking itself is ``twodtm.picking``; this program reads ``result.json``,
finds the template size, and writes the particle tables, RELION's coordinate
files and ``peaks.json`` beside the maps.
"""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import pandas as pd
import starfile

from twodtm.ctf import Optics
from twodtm.errors import InputFileError
from twodtm.io.results import MatchResult
from twodtm.io.tables import COORDINATE_LIST, write_coordinates, write_particles
from twodtm.picking import (
    PEAKS_RECORD,
    PeakRecord,
    PeakSettings,
    pick_peaks,
    write_peak_record,
)
from twodtm.report import HISTOGRAM_NAME

__all__ = ["pick_and_write", "remove_picks", "write_picks"]

_PICK_FILES = ("particles.star", "particles.csv", PEAKS_RECORD, HISTOGRAM_NAME)


def _template_size(result: MatchResult, directory: Path) -> int:
    if result.metadata.template_size is not None:
        return result.metadata.template_size
    template = result.metadata.template
    if Path(template).is_file():
        with mrcfile.open(template, mode="r", header_only=True, permissive=True) as mrc:
            return int(mrc.header.nx)
    raise InputFileError(
        f"{directory}: the template box size is unknown (template file "
        f"{template!r} not found); pass --template-size"
    )


def write_picks(
    directory: Path,
    peaks: pd.DataFrame,
    record: PeakRecord,
    micrograph: str,
    optics: Optics,
) -> None:
    """Write the particle tables of ``peaks`` and their ``PeakRecord`` (atomically).

    ``particles.star``, ``particles.csv``, RELION's coordinate files (see
    ``io.tables.write_coordinates``) and ``peaks.json``, named ``micrograph``.
    """
    write_particles(peaks, directory, micrograph, optics)
    write_coordinates(peaks, directory, micrograph)
    write_peak_record(directory, record)


def remove_picks(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the picks of a result from its directory; return the names removed.

    What ``write_picks`` (and the run's z-score histogram) wrote: the particle
    tables, ``peaks.json``, ``zscore_histogram.json``, ``coordinates.star`` and
    the coordinate file it lists, if that lies in ``directory``. A result
    replaced by a new search (``twodtm match --overwrite``) must not leave them
    beside the new maps, where ``twodtm report`` would draw them.
    """
    out = Path(directory)
    doomed = [out / name for name in _PICK_FILES]
    listing = out / COORDINATE_LIST
    if listing.is_file():
        try:
            block = starfile.read(listing, always_dict=True).get("coordinate_files")
            listed = [] if block is None else list(block["rlnMicrographCoordinates"])
        except (OSError, ValueError, KeyError):
            listed = []  # unreadable: the listing goes, its file stays
        for name in listed:
            path = Path(str(name))
            path = path if path.is_absolute() else out / path.name
            if path.parent.resolve() == out.resolve():
                doomed.append(path)
        doomed.append(listing)
    removed = []
    for path in doomed:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def pick_and_write(
    result_dir: str | os.PathLike[str],
    settings: PeakSettings,
    template_size: int | None = None,
    micrograph_name: str | None = None,
) -> pd.DataFrame:
    """Find peaks in a result directory and write the particle tables into it.

    Writes ``particles.star`` and ``particles.csv`` (the full table), what
    RELION's extraction reads: ``<micrograph stem>_twodtm.star`` and
    ``coordinates.star`` (see ``io.tables.write_coordinates``), and
    ``peaks.json``, the settings used (``PeakRecord``). The template size
    (unless given) and optics come from ``result.json``; the number of trials from
    its search-space size times the number of pixels.

    Parameters
    ----------
    result_dir : path
        Result directory of ``twodtm match``.
    settings : PeakSettings
        Threshold, suppression distance and border.
    template_size : int, optional
        Template box edge, pixels (default: from ``result.json``).
    micrograph_name : str, optional
        ``rlnMicrographName`` written to the STAR files (default: the micrograph
        path that was searched); give the name RELION's micrographs STAR uses.

    Returns
    -------
    pandas.DataFrame
        The peaks, as ``find_peaks`` returns them.
    """
    directory = Path(result_dir)
    result = MatchResult.load(directory)
    size = _template_size(result, directory) if template_size is None else template_size
    peaks, record = pick_peaks(result, settings, size)
    micrograph = micrograph_name or result.metadata.micrograph
    write_picks(directory, peaks, record, micrograph, result.metadata.optics)
    return peaks
