"""Many micrographs as one job: a glob or a RELION micrographs STAR file.

Each micrograph is searched with the same template and settings (its own optics
where the STAR file gives them) on one shared executor, into
``<output>/<micrograph stem>/``; ``<output>/summary.csv`` lists every micrograph.
A micrograph whose folder already holds a result is skipped, so re-running a job
that stopped part-way only searches what is left (and resumes a micrograph that
was interrupted, from its checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import starfile

from twodtm.config import MatchConfig, parse_config
from twodtm.errors import ConfigError, InputDataError, InputFileError
from twodtm.io.atomic import write_text_atomic
from twodtm.io.mrc import read_mrc
from twodtm.model_template import resolve_model_template
from twodtm.programs.match import executor_for, run_match
from twodtm.progress import ProgressReporter
from twodtm.search.executors import Executor

__all__ = [
    "SUMMARY_NAME",
    "TEMPLATES",
    "MicrographEntry",
    "MissingCtfWarning",
    "list_micrographs",
    "max_zscore",
    "micrograph_config",
    "read_star_micrographs",
    "result_directories",
    "run_batch",
    "write_summary",
]

TEMPLATES = "model-templates"
"""Folder of the job's output where atomic-model templates are simulated, once."""
SUMMARY_NAME = "summary.csv"
_SUMMARY_COLUMNS = (
    "micrograph",
    "directory",
    "status",
    "defocus_u",
    "defocus_v",
    "max_zscore",
    "run_time_s",
    "message",
)
# RELION column -> optics field of the config (Angstrom, degrees, kV, mm).
_MICROGRAPH_COLUMNS = {
    "rlnDefocusU": "defocus_u",
    "rlnDefocusV": "defocus_v",
    "rlnDefocusAngle": "astigmatism_angle",
    "rlnPhaseShift": "phase_shift",
}
# Without these a micrograph would be searched at the config's one defocus.
_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_OPTICS_COLUMNS = {
    "rlnMicrographPixelSize": "pixel_size",
    "rlnVoltage": "voltage",
    "rlnSphericalAberration": "spherical_aberration",
    "rlnAmplitudeContrast": "amplitude_contrast",
}


@dataclass(frozen=True)
class MicrographEntry:
    """One micrograph of a batch.

    Attributes
    ----------
    path : Path
        The MRC image.
    optics : Mapping[str, float]
        Optics fields that replace the config's for this micrograph (from STAR).
    name : str
        ``rlnMicrographName`` as the STAR file writes it (empty for a glob): the
        name RELION matches particles to micrographs by.
    optics_group : int or None
        ``rlnOpticsGroup`` of the micrograph (None: a glob or RELION 3.0 STAR).
    optics_group_name : str or None
        ``rlnOpticsGroupName`` of that group, where the STAR gives one.
    """

    path: Path
    optics: Mapping[str, float] = field(default_factory=dict)
    name: str = ""
    optics_group: int | None = None
    optics_group_name: str | None = None

    @property
    def relion_name(self) -> str:
        """The name to write as ``rlnMicrographName``: the STAR's, else the path."""
        return self.name or str(self.path)


def _star_blocks(path: Path) -> dict[str, Any]:
    try:
        blocks = starfile.read(path, always_dict=True)
    except (OSError, ValueError, KeyError) as err:
        raise InputFileError(f"{path}: not a readable STAR file ({err})") from None
    return dict(blocks)


def _optics_by_group(blocks: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    groups: dict[str, dict[str, float]] = {}
    for table in blocks.values():
        if "rlnOpticsGroup" in table and "rlnMicrographName" not in table:
            for row in table.to_dict("records"):
                values = {
                    f: float(row[c]) for c, f in _OPTICS_COLUMNS.items() if c in row
                }
                groups[str(row["rlnOpticsGroup"])] = values
    return groups


def _group_names(blocks: Mapping[str, Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for table in blocks.values():
        columns = set(table.columns)
        if {"rlnOpticsGroup", "rlnOpticsGroupName"} <= columns and (
            "rlnMicrographName" not in columns
        ):
            for row in table.to_dict("records"):
                names[str(row["rlnOpticsGroup"])] = str(row["rlnOpticsGroupName"])
    return names


def _entry(
    row: Mapping[str, Any],
    star: Path,
    groups: Mapping[str, Mapping[str, float]],
    names: Mapping[str, str],
) -> MicrographEntry:
    """Read the micrograph of one row of a micrographs table, its optics and group."""
    group = str(row.get("rlnOpticsGroup", ""))
    optics = dict(groups.get(group, {}))
    columns = {**_MICROGRAPH_COLUMNS, **_OPTICS_COLUMNS}
    optics.update({f: float(row[c]) for c, f in columns.items() if c in row})
    name = str(row["rlnMicrographName"])
    return MicrographEntry(
        _resolve(name, star),
        optics,
        name,
        int(row["rlnOpticsGroup"]) if group else None,
        names.get(group),
    )


def _resolve(name: str, star: Path) -> Path:
    # RELION names are relative to the project folder: the working directory when
    # it holds the file, else the STAR file's folder.
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    return star.parent / path


class MissingCtfWarning(UserWarning):
    """A micrographs STAR lacks CTF columns; the config's defocus is used instead."""


def _check_ctf_columns(columns: Sequence[str], star: Path, use_config: bool) -> None:
    """Refuse (or, with ``use_config``, warn about) a table without CTF columns."""
    missing = [c for c in _CTF_COLUMNS if c not in columns]
    if not missing:
        return
    if not use_config:
        raise InputFileError(
            f"{star}: no per-micrograph CTF: it lacks the column(s) "
            f"{', '.join(missing)}. Pass the STAR file written by CTF estimation "
            "(RELION CtfFind/jobNNN/micrographs_ctf.star); to search every "
            "micrograph with the config's optics instead, give them as a glob "
            "(--micrographs 'Micrographs/*.mrc')."
        )
    warnings.warn(
        f"{star}: it lacks the column(s) {', '.join(missing)}; EVERY micrograph is "
        "searched with the config's optics (defocus_u, defocus_v, "
        "astigmatism_angle) in their place (use_config_ctf).",
        MissingCtfWarning,
        stacklevel=3,
    )


def read_star_micrographs(
    path: str | os.PathLike[str], use_config_ctf: bool = False
) -> list[MicrographEntry]:
    """Micrographs and their CTF from a RELION (3.0 or 3.1+) micrographs STAR file.

    Reads ``rlnMicrographName``, ``rlnDefocusU/V`` (A), ``rlnDefocusAngle`` (deg) and
    ``rlnPhaseShift`` (deg) per micrograph, and ``rlnMicrographPixelSize``,
    ``rlnVoltage``, ``rlnSphericalAberration`` and ``rlnAmplitudeContrast`` from the
    micrograph's optics group (``data_optics``) or its own row.

    Parameters
    ----------
    path : str or path
        The STAR file.
    use_config_ctf : bool
        Accept a table without the CTF columns (``rlnDefocusU``, ``rlnDefocusV``,
        ``rlnDefocusAngle``; a ``MissingCtfWarning`` names the missing ones): the
        config's optics stand in for them.

    Raises
    ------
    InputFileError
        The file is unreadable, has no ``rlnMicrographName`` column, or lacks one
        of the CTF columns (unless ``use_config_ctf``).
    """
    star = Path(path)
    blocks = _star_blocks(star)
    tables = [t for t in blocks.values() if "rlnMicrographName" in t]
    if not tables:
        raise InputFileError(
            f"{star}: no rlnMicrographName column; pass a micrographs STAR file "
            "(e.g. CtfFind/jobNNN/micrographs_ctf.star)"
        )
    _check_ctf_columns(list(tables[0].columns), star, use_config_ctf)
    groups, names = _optics_by_group(blocks), _group_names(blocks)
    return [_entry(row, star, groups, names) for row in tables[0].to_dict("records")]


def list_micrographs(spec: str, use_config_ctf: bool = False) -> list[MicrographEntry]:
    """Micrographs named by ``spec``: a ``.star`` file or a glob pattern (sorted).

    Micrographs of a glob take the config's optics; a STAR file must give each
    micrograph's CTF unless ``use_config_ctf`` (see ``read_star_micrographs``).

    Raises
    ------
    InputFileError
        Nothing matches, or the STAR file cannot be read or lacks CTF columns.
    """
    if spec.endswith(".star"):
        entries = read_star_micrographs(spec, use_config_ctf)
    else:
        entries = [MicrographEntry(Path(p)) for p in sorted(glob.glob(spec))]
    if not entries:
        raise InputFileError(
            f"{spec}: matches no micrograph; check the pattern or file"
        )
    return entries


def micrograph_config(
    config: MatchConfig | Mapping[str, Any], entry: MicrographEntry
) -> MatchConfig:
    """``config`` with the micrograph and optics of ``entry`` (validated again).

    ``config`` may be the mapping of a match config whose optics are only partly
    given (``RunConfig.match_data``): the STAR's values complete them.

    Raises
    ------
    ConfigError
        The micrograph's optics are incomplete or invalid (naming the micrograph).
    """
    data = (
        config.model_dump(mode="json")
        if isinstance(config, MatchConfig)
        else dict(config)
    )
    data["micrograph"] = str(entry.path)
    data["optics"] = {**data["optics"], **entry.optics}
    return parse_config(MatchConfig, data, str(entry.path))


def result_directories(entries: Sequence[MicrographEntry], output: Path) -> list[Path]:
    """One folder per micrograph, ``output / stem``; stems must be unique."""
    stems = [e.path.stem for e in entries]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"micrographs share the file names {repeated[:3]}; their results would "
            "collide: rename them or run them as separate jobs"
        )
    return [output / s for s in stems]


def max_zscore(directory: Path) -> float:
    """Return the largest z-score of a result's ``zscore.mrc`` (NaN: none)."""
    zscore = directory / "zscore.mrc"
    return float(np.max(read_mrc(zscore).data)) if zscore.exists() else math.nan


def _row(
    entry: MicrographEntry, config: MatchConfig, directory: Path, status: str
) -> dict[str, Any]:
    optics = {**config.optics.model_dump(), **entry.optics}
    return {
        "micrograph": str(entry.path),
        "directory": str(directory),
        "status": status,
        "defocus_u": optics["defocus_u"],
        "defocus_v": optics["defocus_v"],
        "max_zscore": max_zscore(directory) if status != "failed" else math.nan,
        "run_time_s": math.nan,
        "message": "",
    }


def write_summary(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] = _SUMMARY_COLUMNS,
) -> None:
    """Write a table of micrographs (one dict per row) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _search_one(
    config: MatchConfig,
    entry: MicrographEntry,
    directory: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        mic_config = micrograph_config(config, entry)
        # One map per model and pixel size for the whole job, not one per micrograph
        mic_config = resolve_model_template(mic_config, directory.parent / TEMPLATES)
        run_match(mic_config, directory, **options)
    except (InputFileError, InputDataError, ConfigError) as err:
        row = _row(entry, config, directory, "failed")
        row["message"] = str(err).splitlines()[0]
        return row
    row = _row(entry, mic_config, directory, "searched")
    row["run_time_s"] = round(time.perf_counter() - started, 3)
    return row


def run_batch(
    config: MatchConfig,
    entries: Sequence[MicrographEntry],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    restart: bool = False,
    progress: ProgressReporter | None = None,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Search every micrograph of ``entries`` into ``output/<stem>/``.

    Micrographs with a result already are skipped (unless ``overwrite``); one that
    cannot be read is marked failed and the others go on. Each finished micrograph
    updates ``output/summary.csv``. ``progress`` reports each micrograph's search
    as ``match <stem> (k of n)``.

    Returns
    -------
    list of dict
        The summary rows (``_SUMMARY_COLUMNS``), in the order of ``entries``.
    """
    root = Path(output)
    directories = result_directories(entries, root)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(executor_for(config))
        options = {
            "overwrite": overwrite,
            "restart": restart,
            "progress": progress,
            "executor": executor,
        }
        for k, (entry, directory) in enumerate(zip(entries, directories, strict=True)):
            if (directory / "result.json").exists() and not overwrite:
                rows.append(
                    _row(entry, micrograph_config(config, entry), directory, "skipped")
                )
            else:
                label = f"match {directory.name} ({k + 1} of {len(entries)})"
                rows.append(
                    _search_one(config, entry, directory, options | {"label": label})
                )
            write_summary(root / SUMMARY_NAME, rows)
    return rows
