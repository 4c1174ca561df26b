"""Exact repairs of a template map: padding to a cube or an even box, resampling.

Maps are ``[z, y, x]`` and centred at voxel ``t // 2`` along every axis (the
convention of ``preprocess.prepare_template``); every repair keeps that centre.
``programs.inputs`` decides when each is allowed.
"""

from __future__ import annotations

import numpy as np
import scipy.fft


def pad_to_cube(volume: np.ndarray) -> np.ndarray:
    """Pad a ``(d, h, w)`` volume to ``(n, n, n)``, ``n = max(d, h, w)``.

    The centre voxel ``s // 2`` of each axis moves to ``n // 2``; new voxels take
    the mean of the volume's faces (its background).

    Returns
    -------
    np.ndarray
        A new float32 array; ``volume`` is not modified.

    Examples
    --------
    >>> cube = pad_to_cube(np.ones((2, 4, 4)))
    >>> cube.shape, float(cube.sum())
    ((4, 4, 4), 64.0)
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

    Examples
    --------
    >>> volume = np.arange(27.0).reshape(3, 3, 3)
    >>> even = pad_to_even(volume)
    >>> even.shape, float(even[2, 2, 2]) == float(volume[1, 1, 1])
    ((4, 4, 4), True)
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


__all__ = ["pad_to_cube", "pad_to_even", "resample_volume"]
