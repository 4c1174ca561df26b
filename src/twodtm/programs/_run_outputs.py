"""What ``twodtm run`` writes for the whole dataset: summary rows and combined tables.

The combined particles STAR holds one optics group per RELION optics group of
the micrographs STAR (number and name kept) or, for a glob or a RELION 3.0 STAR
without groups, one per distinct pixel size, voltage, Cs and amplitude
contrast. Every particle is named by its micrograph's ``rlnMicrographName`` as
the input STAR writes it, so RELION's extraction matches it to the micrograph.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import starfile

from twodtm.config import MatchConfig
from twodtm.io.atomic import atomic_path
from twodtm.io.tables import (
    COORDINATE_LIST,
    OpticsGroup,
    coordinate_file_name,
    relion_coordinate_path,
)
from twodtm.programs._run_stages import REFINED_DIRECTORY
from twodtm.programs.batch import MicrographEntry

__all__ = [
    "RUN_COLUMNS",
    "combined_table",
    "optics_groups",
    "pending_row",
    "previous_rows",
    "COORDINATE_TREE",
    "write_coordinate_list",
    "write_coordinate_tree",
]

RUN_COLUMNS = (
    "micrograph",
    "directory",
    "optics_group",
    "status",
    "match",
    "peaks",
    "refine",
    "particles",
    "max_zscore",
    "defocus_u",
    "defocus_v",
    "match_s",
    "peaks_s",
    "refine_s",
    "failed_stage",
    "message",
)
_TIMES = ("match_s", "peaks_s", "refine_s")


def previous_rows(path: Path) -> dict[str, dict[str, str]]:
    """Read the rows of an earlier run's summary, by micrograph (empty: none)."""
    try:
        with path.open(encoding="utf-8") as handle:
            return {r["micrograph"]: r for r in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error):
        return {}


def _seconds(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pending_row(
    entry: MicrographEntry,
    directory: Path,
    group: int,
    config: MatchConfig | None,
    previous: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Start a micrograph's row; the stage times of an earlier run are kept."""
    optics = config.optics if config is not None else None
    row: dict[str, Any] = {
        "micrograph": entry.relion_name,
        "directory": str(directory),
        "optics_group": group,
        "status": "pending",
        "match": "",
        "peaks": "",
        "refine": "",
        "particles": 0,
        "max_zscore": math.nan,
        "defocus_u": optics.defocus_u if optics else entry.optics.get("defocus_u"),
        "defocus_v": optics.defocus_v if optics else entry.optics.get("defocus_v"),
        "failed_stage": "",
        "message": "",
    }
    for name in _TIMES:
        row[name] = _seconds((previous or {}).get(name))
    return row


def _group_key(entry: MicrographEntry, config: MatchConfig) -> tuple:
    if entry.optics_group is not None:
        return ("star", entry.optics_group)
    o = config.optics
    return ("optics", o.pixel_size, o.voltage, o.spherical_aberration)


def optics_groups(
    entries: Sequence[MicrographEntry], configs: Sequence[MatchConfig | None]
) -> tuple[list[int], list[OpticsGroup]]:
    """Each micrograph's optics group number, and the groups (first member's optics).

    A micrograph whose config is invalid (None) gets group 0 and no group.
    """
    numbers: dict[tuple, int] = {}
    groups: list[OpticsGroup] = []
    assigned = []
    taken = {e.optics_group for e in entries if e.optics_group is not None}
    for entry, config in zip(entries, configs, strict=True):
        if config is None:
            assigned.append(0)
            continue
        key = _group_key(entry, config)
        if key not in numbers:
            number = entry.optics_group or max(taken, default=0) + 1
            taken.add(number)
            numbers[key] = number
            name = entry.optics_group_name or f"opticsGroup{number}"
            groups.append(OpticsGroup(number, name, config.optics.to_optics()))
        assigned.append(numbers[key])
    return assigned, groups


def combined_table(
    rows: Sequence[Mapping[str, Any]], tables: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """Every finished micrograph's particles, with its name and optics group."""
    parts = [
        tables[r["micrograph"]].assign(
            micrograph=r["micrograph"], optics_group=int(r["optics_group"])
        )
        for r in rows
        if r["micrograph"] in tables
    ]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=["x", "y", "zscore", "micrograph", "optics_group"])
    return pd.concat(parts, ignore_index=True)


def write_coordinate_list(
    path: Path, rows: Sequence[Mapping[str, Any]], refined: bool
) -> Path:
    """``coordinates.star`` of the dataset: each micrograph's coordinate file.

    What ``relion_preprocess --coord_list`` (RELION 4/5) reads; only finished
    micrographs are listed.
    """
    done = [r for r in rows if r["status"] == "done"]
    folders = [
        Path(r["directory"]) / REFINED_DIRECTORY if refined else Path(r["directory"])
        for r in done
    ]
    listing = pd.DataFrame(
        {
            "rlnMicrographName": [r["micrograph"] for r in done],
            "rlnMicrographCoordinates": [
                str(f / coordinate_file_name(r["micrograph"]))
                for f, r in zip(folders, done, strict=True)
            ],
        }
    )
    target = path / COORDINATE_LIST
    with atomic_path(target) as tmp:
        starfile.write({"coordinate_files": listing}, tmp, overwrite=True)
    return target


COORDINATE_TREE = "coordinates"
"""Folder of ``<output>`` laid out for RELION 3.1's ``--coord_dir``."""


def write_coordinate_tree(
    root: Path, rows: Sequence[Mapping[str, Any]], refined: bool
) -> Path:
    """Every finished micrograph's coordinate file where RELION 3.1 looks for it.

    ``relion_preprocess --i micrographs_ctf.star --coord_dir <root>/coordinates/
    --coord_suffix _twodtm.star --extract`` then extracts the whole dataset (RELION
    3.1 has no ``--coord_list``; see ``io.tables.relion_coordinate_path``).
    """
    tree = root / COORDINATE_TREE
    for r in rows:
        if r["status"] != "done":
            continue
        folder = (
            Path(r["directory"]) / REFINED_DIRECTORY
            if refined
            else Path(r["directory"])
        )
        source = folder / coordinate_file_name(r["micrograph"])
        target = tree / relion_coordinate_path(r["micrograph"])
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(source.read_bytes())
    return tree
