"""MRC reading and writing with mrcfile, keeping the pixel size in the header."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from twodtm.errors import InputFileError
from twodtm.io.atomic import atomic_path


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


def _header_pixel_size(mrc: mrcfile.mrcfile.MrcFile) -> float:
    # The x voxel size is used: some writers leave cella z = 0 for 2D images.
    return float(mrc.voxel_size.x)


def read_mrc(path: str | os.PathLike[str]) -> MrcData:
    """Read an MRC image or volume as float32.

    Parameters
    ----------
    path : str or PathLike
        File to read. Integer modes (e.g. uint16 counts) are converted to float32;
        a stack with a single section is returned as a 2D image.

    Returns
    -------
    MrcData
        The data and the header pixel size in Angstrom.

    Raises
    ------
    InputFileError
        The file is missing, not an MRC file, has a corrupt header or a truncated
        data block.
    """
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"{file}: file not found; check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(file, mode="r", permissive=False) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                pixel_size = _header_pixel_size(mrc)
    except (ValueError, OSError, EOFError, TypeError) as err:
        raise InputFileError(
            f"{file}: not a readable MRC file ({err}); re-export it as MRC2014."
        ) from err
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3) or data.size == 0:
        raise InputFileError(
            f"{file}: expected a 2D image or a 3D volume, found shape {data.shape}."
        )
    return MrcData(data=data, pixel_size=pixel_size)


def write_mrc(
    path: str | os.PathLike[str], data: np.ndarray, pixel_size: float
) -> None:
    """Write ``data`` as float32 (or int8/int16 as given) MRC, atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination; its parent directory is created if needed.
    data : np.ndarray
        2D or 3D array. float64 and other float types are stored as float32.
    pixel_size : float
        Voxel size in Angstrom written to the header.
    """
    array = np.asarray(data)
    if array.dtype.kind == "f" or array.dtype.kind in "iub" and array.itemsize > 2:
        array = array.astype(np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(array))
            mrc.voxel_size = float(pixel_size)
