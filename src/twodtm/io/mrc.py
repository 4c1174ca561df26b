"""MRC maps (I/O): reading and writing with mrcfile, the pixel size in the header.

``read_mrc`` checks a file before it reads the data: it must exist and be readable,
hold a valid MRC2014 header (FEI extended headers and a z voxel size of 0 are
fine), use a real-valued mode and be long enough for the data the header
announces. Every failure is an ``InputFileError`` naming the file and the fix.

The header's axis order (mapc, mapr, maps: the axis, 1 = x, 2 = y, 3 = z, along
the file's columns, rows and sections) is honoured: the data are returned as
[z, y, x] (or [y, x]) whatever order the file stores them in (MRC2014: Cheng
et al. 2015, J. Struct. Biol. 192:146). Programs read micrographs and templates
through ``twodtm.programs.inputs``, which checks their content on top of this.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from twodtm.errors import InputFileError
from twodtm.io.atomic import atomic_path

__all__ = ["MrcData", "read_mrc", "write_mrc"]

_HEADER_BYTES = 1024
_STANDARD_ORDER = (1, 2, 3)
# MRC modes read as real numbers: int8, int16, float32, uint16, float16.
_REAL_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_MODE_NAMES = {3: "complex int16", 4: "complex float32", 101: "packed 4-bit"}
# What mrcfile and numpy raise on a malformed header or data block.
_PARSE_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    TypeError,
    OverflowError,
    IndexError,
    KeyError,
    struct.error,
)


@dataclass(frozen=True)
class MrcData:
    """Array data of an MRC file and its pixel size.

    Attributes
    ----------
    data : np.ndarray
        float32 array, (H, W) for an image or (D, H, W) for a volume.
    pixel_size : float
        Voxel size in Angstrom along x (0.0 when the header holds none).
    """

    data: np.ndarray
    pixel_size: float


@dataclass(frozen=True)
class _Layout:
    """What the header announces.

    ``shape`` is the stored (sections, rows, columns) = (nz, ny, nx); ``order`` is
    (mapc, mapr, maps), the axis (1 = x, 2 = y, 3 = z) along columns, rows, sections.
    """

    mode: int
    shape: tuple[int, int, int]
    extended_bytes: int
    pixel_size: float
    order: tuple[int, int, int]


def _check_file(file: Path) -> int:
    """Size in bytes of a readable regular file, else InputFileError."""
    if not file.exists():
        raise InputFileError(f"{file}: file not found; check the path.")
    if not file.is_file():
        raise InputFileError(f"{file}: is a directory, not an MRC file; name the file.")
    if not os.access(file, os.R_OK):
        raise InputFileError(f"{file}: permission denied; make the file readable.")
    size = file.stat().st_size
    if size < _HEADER_BYTES:
        raise InputFileError(
            f"{file}: {size} bytes is shorter than an MRC header ({_HEADER_BYTES} "
            "bytes); the file is empty or not an MRC file."
        )
    return size


def _pixel_size(cella_x: float, mx: int) -> float:
    """Return the x voxel size in Angstrom, 0.0 when the header holds no usable value.

    The x size is used: some writers leave cella z = 0 for 2D images.
    """
    if mx <= 0 or not np.isfinite(cella_x) or cella_x <= 0:
        return 0.0
    return float(cella_x) / mx


def _read_layout(file: Path) -> _Layout:
    """Parse and check the header of ``file`` without reading its data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(
                file, mode="r", permissive=False, header_only=True
            ) as mrc:
                header = mrc.header
                mode = int(header.mode)
                shape = (int(header.nz), int(header.ny), int(header.nx))
                extended = int(header.nsymbt)
                pixel_size = _pixel_size(float(header.cella.x), int(header.mx))
                order = (int(header.mapc), int(header.mapr), int(header.maps))
    except _PARSE_ERRORS as err:
        raise InputFileError(
            f"{file}: not a valid MRC header ({err}); re-export the file as MRC2014."
        ) from None
    if mode not in _REAL_MODES:
        kind = _MODE_NAMES.get(mode, "unknown")
        raise InputFileError(
            f"{file}: MRC mode {mode} ({kind}) is not supported; convert it to "
            "mode 2 (float32)."
        )
    if min(shape) < 1 or extended < 0:
        raise InputFileError(
            f"{file}: the header announces dimensions {shape[::-1]} (nx, ny, nz) and "
            f"{extended} extended-header bytes; the header is corrupt, re-export it."
        )
    return _Layout(mode, shape, extended, pixel_size, _axis_order(file, order, shape))


def _axis_order(
    file: Path, order: tuple[int, int, int], shape: tuple[int, int, int]
) -> tuple[int, int, int]:
    """Check (mapc, mapr, maps); all zero (old writers) means the standard order."""
    if order == (0, 0, 0):
        return _STANDARD_ORDER
    if sorted(order) != list(_STANDARD_ORDER):
        raise InputFileError(
            f"{file}: header fields mapc, mapr, maps = {order} are not a permutation "
            "of 1, 2, 3 (x, y, z); the header is corrupt, re-export the file."
        )
    if shape[0] == 1 and order[2] != 3:
        raise InputFileError(
            f"{file}: a single section with maps = {order[2]} lies across the "
            f"{'xyz'[order[0] - 1]}-{'xyz'[order[1] - 1]} plane, not x-y (header "
            f"fields mapc, mapr, maps = {order}); re-export the image with mapc = 1, "
            "mapr = 2, maps = 3."
        )
    return order


def _to_zyx(stored: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """Reorder ``(sections, rows, columns)`` data to ``(z, y, x)``.

    Axis k of ``stored`` runs along the axis ``(maps, mapr, mapc)[k]``; output axis
    j must run along z, y, x (3, 2, 1) in turn.
    """
    along = (order[2], order[1], order[0])
    return np.ascontiguousarray(stored.transpose([along.index(a) for a in (3, 2, 1)]))


def _check_length(file: Path, layout: _Layout, file_size: int) -> None:
    """Refuse a file shorter than its header says (a truncated copy)."""
    itemsize = np.dtype(_REAL_MODES[layout.mode]).itemsize
    nz, ny, nx = layout.shape
    expected = _HEADER_BYTES + layout.extended_bytes + nx * ny * nz * itemsize
    if file_size < expected:
        raise InputFileError(
            f"{file}: truncated: the header announces {nx} x {ny} x {nz} "
            f"{_REAL_MODES[layout.mode]} values ({expected} bytes in all) but the file "
            f"holds {file_size} bytes; copy or export the file again."
        )


def _read_data(file: Path) -> np.ndarray:
    """Read the data block of a checked file as a float32 array."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(file, mode="r", permissive=False) as mrc:
                if mrc.data is None:
                    raise ValueError("no data block")
                return np.asarray(mrc.data, dtype=np.float32).copy()
    except MemoryError:
        raise InputFileError(
            f"{file}: the data do not fit in memory; bin or crop the file."
        ) from None
    except _PARSE_ERRORS as err:
        raise InputFileError(
            f"{file}: unreadable MRC data ({err}); re-export the file as MRC2014."
        ) from None


def read_mrc(path: str | os.PathLike[str]) -> MrcData:
    """Read an MRC image or volume as float32.

    Parameters
    ----------
    path : str or PathLike
        File to read. Integer and float16 modes (e.g. uint16 counts) are converted
        to float32; a single section is returned as a 2D image. Extended headers
        (FEI1, FEI2, ...) are skipped.

    Returns
    -------
    MrcData
        The data as [z, y, x] (a volume) or [y, x] (an image), transposed from the
        file's axis order (mapc, mapr, maps) where that is not 1, 2, 3, and the
        header x pixel size in Angstrom (0.0 when the header holds none, e.g.
        ``cella = 0``).

    Raises
    ------
    InputFileError
        The file is missing, unreadable, not an MRC file, has a corrupt header
        (including an axis order that is not a permutation of 1, 2, 3), an
        unsupported (complex or packed) mode, a truncated data block, or is a
        single section outside the x-y plane.

    Examples
    --------
    A round trip through a file (see ``write_mrc``); a missing file names itself:

    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "image.mrc"
    ...     write_mrc(path, np.arange(12.0).reshape(3, 4), pixel_size=1.5)
    ...     image = read_mrc(path)
    >>> image.data.shape, image.data.dtype, image.pixel_size
    ((3, 4), dtype('float32'), 1.5)
    >>> image.data[2].tolist()
    [8.0, 9.0, 10.0, 11.0]
    >>> read_mrc("missing.mrc")
    Traceback (most recent call last):
    ...
    twodtm.errors.InputFileError: missing.mrc: file not found; check the path.
    """
    file = Path(path)
    file_size = _check_file(file)
    layout = _read_layout(file)
    _check_length(file, layout, file_size)
    data = _read_data(file).reshape(layout.shape)
    data = _to_zyx(data, layout.order)
    if data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3) or data.size == 0:
        raise InputFileError(
            f"{file}: expected a 2D image or a 3D volume, found shape {data.shape}."
        )
    return MrcData(data=data, pixel_size=layout.pixel_size)


def write_mrc(
    path: str | os.PathLike[str], data: np.ndarray, pixel_size: float
) -> None:
    """Write ``data`` as float32 (or int8/int16 as given) MRC, atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination; its parent directory is created if needed. The file appears
        complete or not at all (written beside it, then renamed).
    data : np.ndarray
        2D or 3D array. float64 and other float types are stored as float32.
    pixel_size : float
        Voxel size in Angstrom written to the header.

    Examples
    --------
    A volume keeps its [z, y, x] layout and its voxel size:

    >>> import tempfile
    >>> from pathlib import Path
    >>> volume = np.zeros((2, 3, 4))
    >>> volume[1, 2, 3] = 7.0
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_mrc(Path(tmp) / "sub" / "map.mrc", volume, pixel_size=0.75)
    ...     back = read_mrc(Path(tmp) / "sub" / "map.mrc")
    >>> back.data.shape, float(back.data[1, 2, 3]), back.pixel_size
    ((2, 3, 4), 7.0, 0.75)
    """
    array = np.asarray(data)
    if array.dtype.kind == "f" or array.dtype.kind in "iub" and array.itemsize > 2:
        array = array.astype(np.float32)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(array))
        mrc.voxel_size = float(pixel_size)
