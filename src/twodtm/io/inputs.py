"""Checks of the match inputs, run once before any heavy work.

Each check raises a typed error (``twodtm.errors``) naming the file and the fix.
Three repairs happen only when the config allows or when they are exact:

- a non-cubic template is padded to a cube (``preprocessing.pad_template_to_cube``);
- a template whose voxel size differs from the micrograph pixel size by more than
  ``PIXEL_SIZE_TOLERANCE`` is resampled in Fourier space
  (``preprocessing.allow_template_resampling``);
- an odd template box is always padded by one voxel to even, on the low side of
  each axis, so the centre voxel ``t // 2`` becomes ``(t + 1) // 2`` and every
  projection is unchanged apart from one extra row and column of background.

Templates are centred at voxel ``t // 2`` along every axis (the convention of
``preprocess.prepare_template``); every repair here keeps that centre.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft

from twodtm.config import MatchConfig
from twodtm.errors import InputDataError, OutputWriteError
from twodtm.io.mrc import MrcData

# Relative pixel-size difference the engine absorbs by scaling its Fourier slices.
PIXEL_SIZE_TOLERANCE = 0.01
MIN_TEMPLATE_SIZE = 8


@dataclass(frozen=True)
class TemplatePolicy:
    """What may be done to a template that does not fit as it is.

    Attributes
    ----------
    pixel_size : float or None
        Template voxel size in Angstrom; None reads it from the MRC header.
    allow_resampling : bool
        Resample a template of another pixel size onto the micrograph's.
    pad_to_cube : bool
        Pad a non-cubic template to a cube instead of refusing it.
    """

    pixel_size: float | None = None
    allow_resampling: bool = False
    pad_to_cube: bool = False


@dataclass(frozen=True)
class CheckedInputs:
    """Micrograph and template that passed every check.

    Attributes
    ----------
    micrograph : np.ndarray
        ``(H, W)`` float32, finite, not constant.
    template : np.ndarray
        ``(t, t, t)`` float32 with t even, finite, not constant, ``t <= min(H, W)``.
    template_pixel_size : float
        Voxel size of ``template`` in Angstrom, within ``PIXEL_SIZE_TOLERANCE`` of
        the micrograph pixel size.
    """

    micrograph: np.ndarray
    template: np.ndarray
    template_pixel_size: float


def check_signal(data: np.ndarray, name: str) -> None:
    """Refuse NaN or Inf values and constant data.

    Raises
    ------
    InputDataError
        Naming ``name``, the number of bad values, and what to do.
    """
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InputDataError(
            f"{name}: {bad} NaN or Inf values; mask or repair them before the search."
        )
    if float(data.std(dtype=np.float64)) == 0.0:
        raise InputDataError(
            f"{name}: every value is {data.flat[0]}; it holds no signal."
        )


def check_micrograph(data: np.ndarray, name: str) -> np.ndarray:
    """Return a 2D, finite, non-constant micrograph as float32, else raise."""
    if data.ndim != 2:
        raise InputDataError(
            f"{name}: expected a 2D micrograph, found shape {data.shape}; pass a "
            "single summed, motion-corrected image (not a movie or a volume)."
        )
    check_signal(data, name)
    return np.asarray(data, dtype=np.float32)


def pad_to_cube(volume: np.ndarray) -> np.ndarray:
    """Pad a ``(d, h, w)`` volume to ``(n, n, n)``, ``n = max(d, h, w)``.

    The centre voxel ``s // 2`` of each axis moves to ``n // 2``; new voxels take
    the mean of the volume's faces (its background).

    Returns
    -------
    np.ndarray
        A new float32 array; ``volume`` is not modified.
    """
    n = max(volume.shape)
    pads = [(n // 2 - s // 2, n - s - (n // 2 - s // 2)) for s in volume.shape]
    return np.pad(volume, pads, constant_values=_face_mean(volume)).astype(np.float32)


def pad_to_even(volume: np.ndarray) -> np.ndarray:
    """Pad each odd axis by one voxel on its low side (face mean as value).

    On an odd axis the centre voxel ``s // 2`` becomes ``(s + 1) // 2``, the centre
    of the new even axis, so projections keep their centre.

    Returns
    -------
    np.ndarray
        A new float32 array with every axis even; ``volume`` is not modified.
    """
    pads = [(s % 2, 0) for s in volume.shape]
    return np.pad(volume, pads, constant_values=_face_mean(volume)).astype(np.float32)


def _face_mean(volume: np.ndarray) -> float:
    faces = [
        np.moveaxis(volume, axis, 0)[[0, -1]].ravel() for axis in range(volume.ndim)
    ]
    return float(np.concatenate(faces).mean(dtype=np.float64))


def _crop_or_pad_centred(spectrum: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a centred (fftshifted) spectrum to ``size`` on every axis."""
    out = spectrum
    for axis, n in enumerate(spectrum.shape):
        if size < n:
            start = n // 2 - size // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif size > n:
            before = size // 2 - n // 2
            pads = [(0, 0)] * out.ndim
            pads[axis] = (before, size - n - before)
            out = np.pad(out, pads)
    return out


def resample_volume(
    volume: np.ndarray, pixel_size: float, target_pixel_size: float
) -> tuple[np.ndarray, float]:
    """Resample a cubic volume onto (nearly) another voxel size in Fourier space.

    The 3D DFT of the ``(t, t, t)`` volume is cropped (coarser target) or
    zero-padded (finer target) to ``m = round(t * pixel_size / target_pixel_size)``
    and transformed back, scaled so voxel values (and the mean) are kept. The box
    keeps its physical size, so the exact new voxel size is ``pixel_size * t / m``.

    Parameters
    ----------
    volume : np.ndarray
        ``(t, t, t)`` real map centred at voxel ``t // 2`` (not modified).
    pixel_size, target_pixel_size : float
        Current and wanted voxel sizes, Angstrom.

    Returns
    -------
    tuple[np.ndarray, float]
        ``(m, m, m)`` float32 map centred at ``m // 2``, and its voxel size in A.
    """
    t = volume.shape[0]
    m = max(2, round(t * pixel_size / target_pixel_size))
    axes = (0, 1, 2)
    spectrum = scipy.fft.fftshift(
        scipy.fft.fftn(scipy.fft.ifftshift(volume.astype(np.float64), axes=axes)),
        axes=axes,
    )
    cropped = _crop_or_pad_centred(spectrum, m)
    real = scipy.fft.fftshift(
        scipy.fft.ifftn(scipy.fft.ifftshift(cropped, axes=axes)).real, axes=axes
    )
    return (real * (m / t) ** 3).astype(np.float32), pixel_size * t / m


def template_pixel_size(
    header_pixel_size: float, micrograph_pixel_size: float, policy: TemplatePolicy
) -> float:
    """Template voxel size: the config's, else the header's, else the micrograph's.

    A header without a pixel size (0) is taken to match the micrograph.
    """
    if policy.pixel_size is not None:
        return policy.pixel_size
    return header_pixel_size if header_pixel_size > 0 else micrograph_pixel_size


def _cube(volume: np.ndarray, name: str, policy: TemplatePolicy) -> np.ndarray:
    if volume.ndim != 3:
        raise InputDataError(
            f"{name}: the template must be a 3D map, found shape {volume.shape}; "
            "pass the template volume (are micrograph and template swapped?)."
        )
    if len(set(volume.shape)) == 1:
        return volume
    if not policy.pad_to_cube:
        raise InputDataError(
            f"{name}: the template must be a cube, found shape {volume.shape}; set "
            "preprocessing.pad_template_to_cube: true to pad it, or pad it yourself."
        )
    return pad_to_cube(volume)


def _same_pixel_size(
    volume: np.ndarray, pixel_size: float, target: float, name: str, allow: bool
) -> tuple[np.ndarray, float]:
    if abs(pixel_size - target) <= PIXEL_SIZE_TOLERANCE * target:
        return volume, pixel_size
    if not allow:
        raise InputDataError(
            f"{name}: template voxel size {pixel_size:.4g} A differs from the "
            f"micrograph pixel size {target:.4g} A; set "
            "preprocessing.allow_template_resampling: true to resample it in Fourier "
            "space, or set preprocessing.template_pixel_size if the header is wrong."
        )
    return resample_volume(volume, pixel_size, target)


def check_template(
    template: MrcData, name: str, micrograph_pixel_size: float, policy: TemplatePolicy
) -> tuple[np.ndarray, float]:
    """Check and, where allowed, repair a template for a micrograph.

    Parameters
    ----------
    template : MrcData
        The template as read from disk (not modified).
    name : str
        File name used in messages.
    micrograph_pixel_size : float
        Angstrom per micrograph pixel.
    policy : TemplatePolicy
        Which repairs are allowed.

    Returns
    -------
    tuple[np.ndarray, float]
        ``(t, t, t)`` float32 template with t even, and its voxel size in A.

    Raises
    ------
    InputDataError
        Not 3D, not cubic (padding not allowed), NaN/Inf or constant values,
        another pixel size (resampling not allowed), or too small.
    """
    volume = _cube(template.data, name, policy)
    check_signal(volume, name)
    pixel_size = template_pixel_size(template.pixel_size, micrograph_pixel_size, policy)
    volume, pixel_size = _same_pixel_size(
        volume, pixel_size, micrograph_pixel_size, name, policy.allow_resampling
    )
    if volume.shape[0] < MIN_TEMPLATE_SIZE:
        raise InputDataError(
            f"{name}: the template box is {volume.shape[0]} voxels; at least "
            f"{MIN_TEMPLATE_SIZE} are needed, check the file and its pixel size."
        )
    return pad_to_even(volume), pixel_size


def policy_from_config(config: MatchConfig) -> TemplatePolicy:
    """Template repairs the config allows."""
    p = config.preprocessing
    return TemplatePolicy(
        pixel_size=p.template_pixel_size,
        allow_resampling=p.allow_template_resampling,
        pad_to_cube=p.pad_template_to_cube,
    )


def check_match_inputs(
    config: MatchConfig, micrograph: MrcData, template: MrcData
) -> CheckedInputs:
    """Check the micrograph and template of ``twodtm match`` against each other.

    Raises
    ------
    InputDataError
        For any unusable input; the message names the file and the fix.
    """
    image = check_micrograph(micrograph.data, config.micrograph)
    volume, pixel_size = check_template(
        template, config.template, config.optics.pixel_size, policy_from_config(config)
    )
    if volume.shape[0] > min(image.shape):
        raise InputDataError(
            f"{config.template}: the template box ({volume.shape[0]} px at the "
            f"micrograph pixel size) is larger than the micrograph {image.shape}; "
            "crop the template or use a larger micrograph."
        )
    return CheckedInputs(
        micrograph=image, template=volume, template_pixel_size=pixel_size
    )


def check_output_writable(directory: str | os.PathLike[str]) -> Path:
    """Check, without writing anything, that results can be written to ``directory``.

    Raises
    ------
    OutputWriteError
        The path is a file, or the directory (or its nearest existing parent, where
        it would be created) is not writable.
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise OutputWriteError(
            f"{out}: is a file, not a directory; choose another output directory."
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputWriteError(
            f"{existing}: not writable, so the results could not be saved in {out}; "
            "choose another output directory."
        )
    return out
