"""Where a micrograph is searched: a user mask and the automatic exclusion of defects.

A search mask is a boolean ``(H, W)`` array, True where particles may be picked.
It comes from a user's MRC mask (non-zero: search) and from
``auto_exclusion``, which finds carbon, thick ice, contamination and their edges
from local statistics of the micrograph at low resolution:

1. the micrograph is block-averaged to about ``resolution`` Angstrom per pixel
   (a low-pass that also makes the statistics cheap at 4096^2);
2. over a window of about the template box, the local median, and over one
   twice as wide the local median absolute deviation from it, are computed.
   Medians, not means: a window flags a pixel only when more than half of it
   is different, so a straight edge is located where it is rather than smeared
   by half a window, and one strong particle or hot pixel moves neither (with
   a template-sized window, the deviation of a window holding one apoferritin
   reached 9.4 robust sigmas on the demo micrograph; at twice the size 4.7);
3. each map is turned into robust z-scores (its median and MAD over the
   micrograph) and windows beyond ``max_deviation`` on either side are flagged:
   carbon and thick ice are darker (more scattering), contamination very dark or
   very bright, carbon textured (a larger local deviation), thin or empty ice
   bright;
4. the flagged region is grown by ``dilation`` pixels (the template radius), so
   that a particle whose box reaches over a defect's edge is not picked.

A micrograph less than ``_MIN_WINDOWS`` windows across has too few windows for
a robust median and MAD (one strong particle would be an outlier among them):
nothing is excluded there.

The micrograph border is not excluded here: ``picking.PeakSettings.border``
(half a template box) already keeps picks off it, and counting it as excluded
would change the threshold of every clean search.

Excluded pixels are never picked and are not counted among the trials that set
the false-positive threshold (``picking.number_of_trials``). Before whitening
they are set to the mean of the searched pixels (``preprocess.prepare_image``'s
``searched``, for the search and the local searches alike): a carbon
edge or an ice blob has most of the low-frequency power of a micrograph, and left
in it would set the whitening filter (suppressing those frequencies in every
particle), ring through the whitened image and correlate with templates a box
away from it. The searched mean (rather than the local value or zero) makes the
step at the mask's edge only the noise's, as ``preprocess.replace_outliers``
does for hot pixels, and the whitened image's noise density is measured over
the pixels that hold data. The maps of excluded pixels are kept as
computed (they are a search of flat background).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "ExclusionSettings",
    "auto_exclusion",
    "dilate",
    "local_statistics",
    "robust_zscore",
]

# sigma / MAD of a normal distribution: 1 / Phi^-1(3/4)
_MAD_TO_SIGMA = 1.482602218505602
# Windows along each axis below which the statistics are not robust.
_MIN_WINDOWS = 4


@dataclass(frozen=True)
class ExclusionSettings:
    """How ``auto_exclusion`` finds defects (lengths in Angstrom).

    Attributes
    ----------
    resolution : float
        Pixel size of the low-resolution image the statistics are computed on, A.
    window : float or None
        Side of the local-statistics window, A (None: the template box).
    max_deviation : float
        Robust z-score (MAD-based sigmas of the whole micrograph) beyond which a
        window's median or deviation is a defect, either side.
    dilation : float or None
        Growth of the flagged region, A (None: the template radius).
    """

    resolution: float = 20.0
    window: float | None = None
    max_deviation: float = 6.0
    dilation: float | None = None


def robust_zscore(values: np.ndarray) -> np.ndarray:
    """``(values - median) / (1.4826 MAD)``: z-scores that outliers barely move.

    A constant array (MAD 0) gives zeros.

    Examples
    --------
    >>> z = robust_zscore(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    >>> np.round(z, 2).tolist()
    [-1.35, -0.67, 0.0, 0.67, 65.43]
    """
    x = np.asarray(values, dtype=np.float64)
    centre = np.median(x)
    scale = _MAD_TO_SIGMA * np.median(np.abs(x - centre))
    if scale == 0.0:
        return np.zeros_like(x)
    return (x - centre) / scale


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (partial blocks padded by reflection)."""
    h, w = image.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(np.asarray(image, dtype=np.float64), ((0, ph), (0, pw)), "reflect")
    rows, cols = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(rows, factor, cols, factor).mean(axis=(1, 3))


def local_statistics(
    image: np.ndarray, factor: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Local median and deviation of a block-averaged image.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` micrograph (not modified).
    factor : int
        Block size of the averaging, pixels.
    window : int
        Odd window side of the median, in blocks; the deviation's window is
        ``2 * window + 1``, so that one strong particle, a quarter of its window
        or less, is not a textured region.

    Returns
    -------
    tuple of np.ndarray
        ``(ceil(H / factor), ceil(W / factor))`` float64: the median of each
        window, and the median of ``|block - local median|`` over the wider one.

    Examples
    --------
    A step from 0 to 10 is located where it is, not smeared by the window:

    >>> step = np.zeros((8, 8))
    >>> step[:, 4:] = 10.0
    >>> median, deviation = local_statistics(step, 1, 3)
    >>> median[0].tolist(), float(deviation.max())
    ([0.0, 0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0], 0.0)
    """
    binned = _block_mean(image, factor)
    median = ndimage.median_filter(binned, size=window, mode="reflect")
    deviation = ndimage.median_filter(
        np.abs(binned - median), size=2 * window + 1, mode="reflect"
    )
    return median, deviation


def dilate(excluded: np.ndarray, radius: float) -> np.ndarray:
    """Grow a boolean region by ``radius`` pixels (Euclidean); a new array.

    Examples
    --------
    >>> region = np.zeros((1, 7), dtype=bool)
    >>> region[0, 3] = True
    >>> dilate(region, 2.0).astype(int).tolist()
    [[0, 1, 1, 1, 1, 1, 0]]
    """
    region = np.asarray(excluded, dtype=bool)
    if radius <= 0 or not region.any():
        return region.copy()
    return ndimage.distance_transform_edt(~region) <= radius


def auto_exclusion(
    image: np.ndarray,
    pixel_size: float,
    template_size: int,
    settings: ExclusionSettings,
) -> np.ndarray:
    """Pixels of carbon, contamination and their edges (see the module notes).

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` micrograph before whitening (not modified).
    pixel_size : float
        Angstrom per pixel.
    template_size : int
        Template box edge, pixels (the default window and dilation).
    settings : ExclusionSettings
        Resolution, window, threshold and dilation.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, True where excluded.

    Examples
    --------
    White noise with a 20 % darker band over its left quarter:

    >>> noise = np.random.default_rng(0).normal(100.0, 10.0, (128, 128))
    >>> noise[:, :32] *= 0.8
    >>> excluded = auto_exclusion(noise, 1.0, 16, ExclusionSettings(resolution=4.0))
    >>> float(excluded[:, :32].mean()), float(excluded[:, 48:].mean())
    (1.0, 0.0)
    """
    factor = max(1, int(round(settings.resolution / pixel_size)))
    window_px = settings.window / pixel_size if settings.window else template_size
    window = max(3, int(round(window_px / factor)) | 1)
    h, w = image.shape
    if min(h, w) < _MIN_WINDOWS * window * factor:
        return np.zeros((h, w), dtype=bool)
    median, deviation = local_statistics(image, factor, window)
    limit = settings.max_deviation
    flagged = (np.abs(robust_zscore(median)) > limit) | (
        np.abs(robust_zscore(deviation)) > limit
    )
    full = np.repeat(np.repeat(flagged, factor, axis=0), factor, axis=1)[:h, :w]
    radius = settings.dilation / pixel_size if settings.dilation else template_size / 2
    return dilate(full, radius)
