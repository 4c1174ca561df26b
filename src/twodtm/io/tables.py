"""Particle tables (I/O): RELION 3.1+ STAR and plain CSV, read and written atomically.

In memory a table is a pandas DataFrame with plain column names: ``x``, ``y``
(pixels, x = column, y = row, 0-based), ``phi``, ``theta``, ``psi`` (degrees, ZYZ,
RELION's rot/tilt/psi), ``defocus_u``, ``defocus_v``, ``defocus_angle`` and
``defocus`` (mean; Angstrom, underfocus positive), ``zscore`` and any other
columns. STAR files carry the RELION names of the columns that have one.

``particles.star`` (optics and particles blocks) is the full table; RELION's
extraction reads coordinates from other files, written by ``write_coordinates``:
a single-block coordinate file per micrograph (``relion_preprocess --coord_dir D
--coord_suffix _twodtm.star``, RELION 3.1 on) and a list of micrographs and their
coordinate files (``--coord_list coordinates.star``, RELION 4 and 5). RELION reads
``rlnCoordinateX/Y`` as a 0-based pixel index (x = column), truncates it to an
integer and puts that pixel at ``box // 2`` of the extracted box; the coordinate
files therefore hold twodtm's positions rounded to the nearest pixel, so the
particle lies within half a pixel of the box centre (the sub-pixel positions stay
in ``particles.star``). ``tests/test_relion.py`` checks this with RELION itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import starfile

from twodtm.ctf import Optics
from twodtm.errors import InputFileError
from twodtm.io.atomic import atomic_path

_PLAIN_TO_RELION = {
    "x": "rlnCoordinateX",
    "y": "rlnCoordinateY",
    "phi": "rlnAngleRot",
    "theta": "rlnAngleTilt",
    "psi": "rlnAnglePsi",
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "zscore": "rlnAutopickFigureOfMerit",
    "micrograph": "rlnMicrographName",
}
_RELION_TO_PLAIN = {v: k for k, v in _PLAIN_TO_RELION.items()}
# What a coordinate file for extraction may hold. RELION 3.1 copies these into the
# extracted particles' table; CTF columns there make it abort (they belong to the
# micrographs STAR), so the defocus stays in particles.star.
_COORDINATE_COLUMNS = ("x", "y", "zscore", "phi", "theta", "psi")
COORDINATE_SUFFIX = "twodtm"
COORDINATE_LIST = "coordinates.star"

__all__ = [
    "COORDINATE_LIST",
    "COORDINATE_SUFFIX",
    "OpticsGroup",
    "coordinate_file_name",
    "read_particles",
    "write_coordinates",
    "write_csv_table",
    "write_particle_set",
    "write_particles",
    "write_star_table",
    "relion_coordinate_path",
]


def _with_defocus_columns(table: pd.DataFrame, optics: Optics | None) -> pd.DataFrame:
    """Return a copy holding defocus_u, defocus_v, defocus_angle and defocus.

    Missing astigmatic values are derived from the mean ``defocus`` and the
    astigmatism of ``optics`` (none when ``optics`` is None), and vice versa.
    """
    df = table.copy()
    if "defocus" not in df and {"defocus_u", "defocus_v"} <= set(df):
        df["defocus"] = 0.5 * (df["defocus_u"] + df["defocus_v"])
    if "defocus" in df and "defocus_u" not in df:
        half = 0.0 if optics is None else 0.5 * (optics.defocus_u - optics.defocus_v)
        df["defocus_u"] = df["defocus"] + half
        df["defocus_v"] = df["defocus"] - half
    if "defocus_u" in df and "defocus_angle" not in df:
        df["defocus_angle"] = 0.0 if optics is None else optics.astigmatism_angle
    return df


@dataclass(frozen=True)
class OpticsGroup:
    """One row of a RELION ``data_optics`` block.

    Attributes
    ----------
    number : int
        ``rlnOpticsGroup`` (1, 2, ...), what each particle's row refers to.
    name : str
        ``rlnOpticsGroupName``.
    optics : Optics
        Pixel size, voltage, Cs and amplitude contrast of the group.
    """

    number: int
    name: str
    optics: Optics


def _optics_block(optics: Optics | Sequence[OpticsGroup]) -> pd.DataFrame:
    groups = (
        [OpticsGroup(1, "opticsGroup1", optics)]
        if isinstance(optics, Optics)
        else list(optics)
    )
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": [g.name for g in groups],
            "rlnOpticsGroup": [g.number for g in groups],
            "rlnMicrographPixelSize": [g.optics.pixel_size for g in groups],
            "rlnVoltage": [g.optics.voltage for g in groups],
            "rlnSphericalAberration": [g.optics.spherical_aberration for g in groups],
            "rlnAmplitudeContrast": [g.optics.amplitude_contrast for g in groups],
        }
    )


def _to_relion(
    table: pd.DataFrame,
    micrograph_name: str | None = None,
    optics: Optics | None = None,
) -> pd.DataFrame:
    """Return the columns of ``table`` that RELION knows, under their RELION names."""
    df = _with_defocus_columns(table, optics)
    if micrograph_name is not None:
        df["micrograph"] = micrograph_name
    names = [c for c in _PLAIN_TO_RELION if c in df]
    relion = df[names].rename(columns=_PLAIN_TO_RELION)
    if optics is not None:
        relion["rlnOpticsGroup"] = 1
    return relion.reset_index(drop=True)


def write_star_table(
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    micrograph_name: str | None = None,
    optics: Optics | None = None,
) -> Path:
    """Write a RELION 3.1+ STAR file atomically.

    It holds ``data_optics`` when optics are given, then ``data_particles``.

    Parameters
    ----------
    table : pandas.DataFrame
        Particles with plain column names; those RELION knows are written under
        their RELION names (``x`` as ``rlnCoordinateX``, ``phi`` as
        ``rlnAngleRot``, ``zscore`` as ``rlnAutopickFigureOfMerit``, ...).
    path : path
        The STAR file.
    micrograph_name : str, optional
        Written as ``rlnMicrographName`` of every particle.
    optics : Optics, optional
        Pixel size, voltage, Cs and amplitude contrast of the optics block; also
        the astigmatism of particles that have only a mean ``defocus``.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> table = pd.DataFrame({"x": [10.5], "y": [20.0], "psi": [30.0]})
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_star_table(table, Path(tmp) / "picks.star", "mic.mrc")
    ...     blocks = starfile.read(path, always_dict=True)
    >>> list(blocks)
    ['particles']
    >>> blocks["particles"].columns.tolist()  # doctest: +NORMALIZE_WHITESPACE
    ['rlnCoordinateX', 'rlnCoordinateY', 'rlnAnglePsi',
     'rlnMicrographName']
    """
    blocks: dict[str, pd.DataFrame] = {}
    if optics is not None:
        blocks["optics"] = _optics_block(optics)
    blocks["particles"] = _to_relion(table, micrograph_name, optics)
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True)
    return Path(path)


def write_csv_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as CSV with its plain column names, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)


def write_particles(
    table: pd.DataFrame,
    directory: str | os.PathLike[str],
    micrograph_name: str,
    optics: Optics,
) -> tuple[Path, Path]:
    """Write ``particles.star`` (RELION names) and ``particles.csv`` (all columns).

    Returns
    -------
    tuple[Path, Path]
        The STAR and CSV paths.
    """
    out = Path(directory)
    full = _with_defocus_columns(table, optics).assign(micrograph=micrograph_name)
    star = write_star_table(full, out / "particles.star", micrograph_name, optics)
    csv = write_csv_table(full, out / "particles.csv")
    return star, csv


def write_particle_set(
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    groups: Sequence[OpticsGroup],
) -> Path:
    """Write the particles of many micrographs as one RELION 3.1+ STAR, atomically.

    ``data_optics`` holds one row per group, ``data_particles`` every particle with
    ``rlnMicrographName``, ``rlnOpticsGroup`` and the RELION columns the table has
    (coordinates, angles, defocus U/V/angle, z-score as figure of merit): what
    RELION's particle extraction with re-extraction of a particles STAR reads.

    Parameters
    ----------
    table : pandas.DataFrame
        Plain columns, each row with ``micrograph`` (the name in RELION's
        micrographs STAR), ``optics_group`` (a ``number`` of ``groups``) and
        ``defocus_u``, ``defocus_v`` and ``defocus_angle`` (or a mean ``defocus``,
        taken as without astigmatism).
    path : path
        The STAR file.
    groups : sequence of OpticsGroup
        The optics groups, each ``number`` once.

    Raises
    ------
    ValueError
        A particle refers to a group that ``groups`` lacks.

    Examples
    --------
    >>> import tempfile
    >>> from twodtm.ctf import Optics
    >>> def optics(pixel, kv):
    ...     return Optics(pixel_size=pixel, voltage=kv, defocus_u=1e4, defocus_v=1e4)
    >>> groups = [OpticsGroup(1, "g300", optics(1.0, 300.0)),
    ...           OpticsGroup(2, "g200", optics(1.2, 200.0))]
    >>> table = pd.DataFrame(
    ...     {"x": [1.0, 2.0], "y": [3.0, 4.0], "defocus": [9000.0, 9500.0],
    ...      "micrograph": ["a.mrc", "b.mrc"], "optics_group": [1, 2]}
    ... )
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_particle_set(table, Path(tmp) / "p.star", groups)
    ...     star = starfile.read(path)
    >>> star["optics"]["rlnVoltage"].tolist()
    [300.0, 200.0]
    >>> star["particles"]["rlnOpticsGroup"].tolist()
    [1, 2]
    >>> star["particles"]["rlnDefocusU"].tolist()
    [9000.0, 9500.0]
    """
    numbers = {g.number for g in groups}
    if len(numbers) != len(groups):
        raise ValueError("optics group numbers repeat; give each group once")
    unknown = sorted(set(table["optics_group"].astype(int)) - numbers)
    if unknown:
        raise ValueError(f"particles refer to optics groups {unknown} not given")
    relion = _to_relion(table)
    relion["rlnOpticsGroup"] = table["optics_group"].astype(int).to_numpy()
    blocks = {"optics": _optics_block(groups), "particles": relion}
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True)
    return Path(path)


def coordinate_file_name(micrograph_name: str, suffix: str = COORDINATE_SUFFIX) -> str:
    """``<micrograph stem>_<suffix>.star``, the name RELION's extraction looks for.

    ``relion_preprocess --coord_dir D --coord_suffix _<suffix>.star`` reads the
    coordinates of micrograph ``M/mic.mrc`` from ``D/M/mic_<suffix>.star`` (the
    micrograph's folders after any ``Job/jobNNN/`` prefix are kept); put the file
    there, or name the micrographs ``mic.mrc`` in the micrographs STAR.

    Examples
    --------
    >>> coordinate_file_name("MotionCorr/job002/Movies/mic_001.mrc")
    'mic_001_twodtm.star'
    """
    return f"{PurePath(micrograph_name).stem}_{suffix}.star"


def relion_coordinate_path(
    micrograph_name: str, suffix: str = COORDINATE_SUFFIX
) -> PurePath:
    """Where RELION 3.1's extraction looks for a micrograph's coordinates.

    ``relion_preprocess --coord_dir D --coord_suffix _<suffix>.star`` reads
    micrograph ``M/mic.mrc`` from ``D/M/mic_<suffix>.star``, dropping a leading
    ``<Job>/jobNNN/`` of the micrograph's path; this is that path below ``D``.

    Examples
    --------
    >>> str(relion_coordinate_path("MotionCorr/job002/Movies/mic_001.mrc"))
    'Movies/mic_001_twodtm.star'
    >>> str(relion_coordinate_path("Micrographs/mic0.mrc"))
    'Micrographs/mic0_twodtm.star'
    """
    parts = PurePath(micrograph_name).parts
    if len(parts) > 2 and re.fullmatch(r"job\d+", parts[1]):
        parts = parts[2:]
    folder = PurePath(*parts[:-1]) if len(parts) > 1 else PurePath()
    return folder / coordinate_file_name(micrograph_name, suffix)


def _to_relion_coordinates(table: pd.DataFrame) -> pd.DataFrame:
    """Return the ``_COORDINATE_COLUMNS`` that ``table`` has, under RELION names.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y`` (0-based pixels rounded to the nearest pixel, the one
        RELION's extraction centres; it would truncate a fraction) and, where
        present, ``rlnAutopickFigureOfMerit`` (the z-score) and
        ``rlnAngleRot/Tilt/Psi``.
    """
    names = [c for c in _COORDINATE_COLUMNS if c in table]
    relion = table[names].rename(columns=_PLAIN_TO_RELION).reset_index(drop=True)
    for axis in ("rlnCoordinateX", "rlnCoordinateY"):
        relion[axis] = np.floor(relion[axis].astype(np.float64) + 0.5)
    return relion


def write_coordinates(
    table: pd.DataFrame,
    directory: str | os.PathLike[str],
    micrograph_name: str,
    suffix: str = COORDINATE_SUFFIX,
) -> tuple[Path, Path]:
    """Write what RELION's particle extraction reads, atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        Particles of one micrograph with plain column names (``x``, ``y`` at least).
    directory : path
        Where both files go.
    micrograph_name : str
        The micrograph as RELION's micrographs STAR names it (``rlnMicrographName``);
        ``--coord_list`` matches micrographs by this exact string.
    suffix : str
        Coordinate files are named ``<micrograph stem>_<suffix>.star``.

    Returns
    -------
    tuple[Path, Path]
        The coordinate file (one unnamed block ``data_`` with
        ``rlnCoordinateX/Y`` rounded to the nearest pixel and, where present,
        ``rlnAutopickFigureOfMerit`` and ``rlnAngleRot/Tilt/Psi``, for
        ``--coord_suffix _<suffix>.star``)
        and ``coordinates.star`` (block ``data_coordinate_files``:
        ``rlnMicrographName`` and ``rlnMicrographCoordinates``, the coordinate
        file's path as ``directory`` was given, for ``--coord_list``).
    """
    out = Path(directory)
    coordinates = out / coordinate_file_name(micrograph_name, suffix)
    with atomic_path(coordinates) as tmp:
        starfile.write({"": _to_relion_coordinates(table)}, tmp, overwrite=True)
    listing = pd.DataFrame(
        {
            "rlnMicrographName": [micrograph_name],
            "rlnMicrographCoordinates": [str(coordinates)],
        }
    )
    coordinate_list = out / COORDINATE_LIST
    with atomic_path(coordinate_list) as tmp:
        starfile.write({"coordinate_files": listing}, tmp, overwrite=True)
    return coordinates, coordinate_list


def _particle_block(blocks: dict[str, pd.DataFrame], path: Path) -> pd.DataFrame:
    if "particles" in blocks:
        return blocks["particles"]
    for block in blocks.values():
        if isinstance(block, pd.DataFrame) and "rlnCoordinateX" in block:
            return block
    raise InputFileError(
        f"{path}: no block with rlnCoordinateX; expected a RELION particle or "
        "coordinate STAR file"
    )


def read_particles(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a particle table (STAR or CSV) into plain column names.

    STAR files from other programs are accepted: ``rlnCoordinateX/Y``,
    ``rlnAngleRot/Tilt/Psi``, ``rlnDefocusU/V/Angle`` and
    ``rlnAutopickFigureOfMerit`` are mapped; other columns keep their names.

    Raises
    ------
    InputFileError
        The file is missing, unreadable, or holds no coordinates.

    Examples
    --------
    ``write_particles`` and back: a particle's mean defocus gets the
    micrograph's astigmatism (U - V = 1000 A) in the STAR file, and RELION names
    become plain ones again:

    >>> import tempfile
    >>> from twodtm.ctf import Optics
    >>> optics = Optics(pixel_size=1.5, defocus_u=12000.0, defocus_v=11000.0)
    >>> table = pd.DataFrame(
    ...     {"x": [10.5], "y": [20.0], "zscore": [9.25], "defocus": [11800.0]}
    ... )
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     star, csv = write_particles(table, tmp, "mic.mrc", optics)
    ...     back = read_particles(star)
    >>> columns = ["x", "y", "zscore", "defocus_u", "defocus_v", "defocus"]
    >>> back.loc[0, columns].tolist()
    [10.5, 20.0, 9.25, 12300.0, 11300.0, 11800.0]
    >>> star.name, csv.name, back.loc[0, "micrograph"]
    ('particles.star', 'particles.csv', 'mic.mrc')
    """
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"{file}: particle table not found; check the path.")
    try:
        if file.suffix.lower() == ".csv":
            df = pd.read_csv(file)
        else:
            blocks = starfile.read(file, always_dict=True)
            df = _particle_block(blocks, file).rename(columns=_RELION_TO_PLAIN)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
        raise InputFileError(f"{file}: unreadable particle table ({err})") from None
    if not {"x", "y"} <= set(df):
        raise InputFileError(f"{file}: no x/y (rlnCoordinateX/Y) columns")
    return _with_defocus_columns(df, None).reset_index(drop=True)
