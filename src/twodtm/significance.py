"""Significance of detections under 2DTM's noise model (Rickgauer et al. 2017).

Physics layer. With no particle, every correlation of the whitened image with a
unit-norm filtered projection is a standard normal draw (``twodtm.search``
scales the image so), and a z-score (scaled MIP) is one such draw per trial.
With ``N`` independent trials (pixels x correlations per pixel) noise alone
crosses ``sqrt(2) erfcinv(2 F / N)`` about ``F`` times, and a peak's family-wise
p-value is the chance that noise reaches its z-score anywhere among the ``N``
trials, ``1 - (1 - sf(z))**N``. The global search's picks (``programs.peaks``),
the refinement's recomputed p-values and the constrained search's lowered
threshold all use these two functions.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from twodtm.errors import ConfigError

__all__ = ["family_pvalue", "threshold_for_false_positives"]


def threshold_for_false_positives(
    n_trials: float, false_positives: float = 1.0
) -> float:
    """Z-score above which noise gives ``false_positives`` peaks among ``n_trials``.

    The upper ``false_positives / n_trials`` quantile of the standard normal, the
    detection threshold of Rickgauer et al. 2017 (eLife 6:e25648).

    Parameters
    ----------
    n_trials : float
        Independent trials, pixels x correlations per pixel.
    false_positives : float
        Expected number of false detections per micrograph.

    Returns
    -------
    float
        ``sqrt(2) * erfcinv(2 * false_positives / n_trials)``.

    Examples
    --------
    One noise peak among 1e10 trials (a 4k micrograph, ~600 orientations):

    >>> round(threshold_for_false_positives(1e10), 4)
    6.3613
    >>> from scipy.stats import norm
    >>> z = threshold_for_false_positives(1e6, 5.0)
    >>> bool(abs(z - norm.isf(5.0 / 1e6)) < 1e-9)
    True
    """
    if n_trials <= 0:
        raise ConfigError(f"n_trials must be > 0, got {n_trials}")
    if not 0 < false_positives < n_trials / 2:
        raise ConfigError(
            f"false_positives must lie in (0, n_trials / 2) = (0, {n_trials / 2:g}), "
            f"got {false_positives}; use e.g. 1 per micrograph"
        )
    return math.sqrt(2.0) * float(special.erfcinv(2.0 * false_positives / n_trials))


def family_pvalue(zscores: np.ndarray, n_trials: float) -> np.ndarray:
    """``1 - (1 - sf(z))**N``: chance that noise reaches ``z`` in any of N trials.

    Computed as ``-expm1(N * log1p(-sf(z)))``, accurate where ``sf(z) * N`` is tiny
    and the direct formula rounds to 0 (Rickgauer et al. 2017's family-wise
    p-value of a detection).

    Examples
    --------
    >>> from scipy.stats import norm
    >>> p = family_pvalue(np.array([2.0]), 50.0)
    >>> bool(abs(p[0] - (1 - norm.cdf(2.0) ** 50)) < 1e-12)
    True
    >>> float(family_pvalue(np.array([9.0]), 1e10)[0] / (1e10 * norm.sf(9.0)))
    1.0
    """
    sf = special.ndtr(-np.asarray(zscores, dtype=np.float64))
    return -np.expm1(n_trials * np.log1p(-sf))
