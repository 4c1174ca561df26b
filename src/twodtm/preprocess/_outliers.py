"""Outlier pixels: robust moments and their replacement before whitening.

Hot pixels, gold and ice contaminants are replaced by the clipped mean (cisTEM's
``match_template`` replaces beyond 5 sigma of the plain moments), so that they set
neither the whitening spectrum nor any correlation.
"""

from __future__ import annotations

import math

import torch

__all__ = ["clipped_mean_std", "outlier_note", "replace_outliers"]

# sigma / MAD of a normal distribution: 1 / Phi^-1(3/4)
_MAD_TO_SIGMA = 1.482602218505602


def _robust_start(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and MAD-based sigma of all pixels: a start that outliers barely move.

    Where more than half the pixels share one value (sparse counts, below about
    0.7 counts per pixel) the MAD is 0; the plain mean and standard deviation
    are used then. Outliers inflate that sigma, so the start keeps more pixels
    than it should, never fewer: they are left out of the moments only if they
    lie beyond ``n_sigma`` of it (1000-sigma hot pixels do).
    """
    values = image.flatten()
    centre = values.median()
    scale = _MAD_TO_SIGMA * (values - centre).abs().median()
    if float(scale) == 0.0:
        wide = values.to(torch.float64)
        centre, scale = wide.mean().to(values.dtype), wide.std().to(values.dtype)
    return centre, scale


def clipped_mean_std(image: torch.Tensor, n_sigma: float) -> tuple[float, float]:
    """Mean and standard deviation of the pixels near the median.

    One round of sigma clipping from a robust start: the moments of the pixels
    within ``n_sigma`` MAD-based sigmas of the median (``_robust_start``). The
    median and MAD keep a large outlier population (an ice contaminant over 10 %
    of the image) out of the moments; the moments make the result continuous
    where the MAD of integer counts is not (Poisson counts of mean 1 to 4 have a
    MAD of 1 count, a "sigma" of 1.48, for true sigmas of 1 to 2). Clipping is
    not iterated: on skewed data (Poisson counts) each round cuts the tail
    further and the set shrinks well inside the distribution's own 5 sigma.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` real image (not modified).
    n_sigma : float
        Clipping distance in standard deviations.

    Returns
    -------
    tuple of float
        Mean and population standard deviation of the inliers (the latter low
        by under 0.1 % for ``n_sigma >= 4`` on Gaussian noise).

    Examples
    --------
    Values 0, 1, 2, 3 (16 of each) and one hot pixel: the hot pixel is left out,
    the moments are those of the other 63 values.

    >>> image = torch.arange(64.0).reshape(8, 8) % 4
    >>> image[3, 5] = 1000.0
    >>> mean, sigma = clipped_mean_std(image, 5.0)
    >>> rest = torch.cat([image.flatten()[:29], image.flatten()[30:]]).double()
    >>> round(mean, 6) == round(float(rest.mean()), 6) == round(95 / 63, 6)
    True
    >>> round(sigma, 6) == round(float(rest.std(correction=0)), 6)
    True
    """
    values = image.to(torch.float32).flatten()
    centre, scale = _robust_start(values)
    deviation = values - centre
    inliers = deviation.abs() <= n_sigma * scale
    count = max(int(inliers.sum()), 1)
    inside = torch.where(inliers, deviation, 0.0).to(torch.float64)
    shift = float(inside.sum()) / count
    variance = float(inside.square().sum()) / count - shift * shift
    return float(centre) + shift, math.sqrt(max(variance, 0.0))


def replace_outliers(image: torch.Tensor, n_sigma: float) -> tuple[torch.Tensor, int]:
    """Replace pixels beyond ``n_sigma`` standard deviations by the clipped mean.

    Hot pixels, gold and ice contaminants would otherwise set the power spectrum
    (and so the whitening filter) and correlate strongly with any template.
    Pixels farther than ``n_sigma`` sigma from the mean on either side (hot
    pixels are bright, gold and ice dark) are replaced, with mean and sigma
    from ``clipped_mean_std`` (cisTEM replaces beyond 5 sigma of the plain mean
    and sigma, which a few hot pixels inflate). The replacement is that mean
    rather than a local value: a local median over a contaminant larger than its
    window is the contaminant itself, while the mean becomes about 0 after mean
    subtraction, so replaced pixels add no power to the whitening spectrum and
    no correlation with any template. Poisson counts keep their own sigma: at a
    mean of 1 count per pixel the counts of 6 and more (6e-4 of the pixels) are
    replaced, at 40 counts 2e-6 of them.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` real image, any dtype (not modified).
    n_sigma : float
        Replacement distance in standard deviations (cisTEM: 5).

    Returns
    -------
    tuple
        The float32 ``(H, W)`` image with outliers replaced, and how many
        pixels were replaced.

    Examples
    --------
    >>> image = torch.arange(64.0).reshape(8, 8) % 4
    >>> image[3, 5] = 1000.0
    >>> cleaned, replaced = replace_outliers(image, 5.0)
    >>> replaced, round(float(cleaned[3, 5]), 4), float(image[3, 5])
    (1, 1.5079, 1000.0)
    """
    values = image.to(torch.float32)
    mean, sigma = clipped_mean_std(values, n_sigma)
    outliers = (values - mean).abs() > n_sigma * sigma
    replaced = torch.where(outliers, torch.full_like(values, mean), values)
    return replaced, int(outliers.sum())


def outlier_note(
    label: str, replaced: int, n_pixels: int, n_sigma: float | None
) -> str:
    """One log line saying how many pixels ``replace_outliers`` replaced.

    Examples
    --------
    >>> outlier_note("mic.mrc", 12, 4096 * 4096, 5.0)  # doctest: +ELLIPSIS
    'mic.mrc: replaced 12 of 16,777,216 pixels (0.00%) beyond 5 sigma ...'
    """
    return (
        f"{label}: replaced {replaced:,} of {n_pixels:,} pixels "
        f"({replaced / max(n_pixels, 1):.2%}) beyond {n_sigma:g} sigma (hot pixels, "
        "gold, ice) with the mean before whitening"
    )
