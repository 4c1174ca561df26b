"""Peak picking: detection threshold, non-maximum suppression, significance.

Noise model: with no particle, every z-score (scaled MIP) trial is a standard
normal draw. With ``N`` independent trials in a micrograph (pixels x correlations
per pixel) the threshold expected to be crossed ``F`` times by noise alone is
``sqrt(2) * erfcinv(2 F / N)``. A peak's p-value is the probability that noise
alone gives a maximum at least that high anywhere in the micrograph,
``p = 1 - (1 - sf(z))**N`` (family-wise over all ``N`` trials).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy import ndimage, special

from twodtm.ctf import Optics
from twodtm.errors import ConfigError, InputFileError
from twodtm.io.results import MatchResult
from twodtm.io.tables import write_coordinates, write_particles

PEAK_COLUMNS = (
    "x",
    "y",
    "x_angstrom",
    "y_angstrom",
    "zscore",
    "mip",
    "phi",
    "theta",
    "psi",
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "defocus",
    "pixel_size",
    "mean",
    "std",
    "pvalue",
    "n_trials",
)


@dataclass(frozen=True)
class PeakSettings:
    """How peaks are picked.

    Attributes
    ----------
    false_positives : float
        Expected number of noise peaks per micrograph that sets the threshold.
    zscore : float or None
        A fixed z-score threshold instead (overrides ``false_positives``).
    min_distance : float or None
        Smallest distance between two peaks, pixels (default: template radius).
    border : int or None
        Peaks closer than this to an edge are dropped, pixels (default: half
        the template box).
    """

    false_positives: float = 1.0
    zscore: float | None = None
    min_distance: float | None = None
    border: int | None = None


def threshold_for_false_positives(
    n_trials: float, false_positives: float = 1.0
) -> float:
    """Z-score above which noise gives ``false_positives`` peaks among ``n_trials``.

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
    """``1 - (1 - sf(z))**N``: chance that noise reaches ``z`` in any of N trials."""
    sf = special.ndtr(-np.asarray(zscores, dtype=np.float64))
    return -np.expm1(n_trials * np.log1p(-sf))


def suppress_non_maxima(
    zscore: np.ndarray, threshold: float, min_distance: float, border: int
) -> np.ndarray:
    """Greedy non-maximum suppression of a z-score map.

    Candidates are 3x3 local maxima at or above ``threshold`` and at least
    ``border`` pixels from every edge; taken from the highest down, a candidate is
    kept when no kept peak lies within ``min_distance`` pixels.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` int64 ``(row, column)`` of the peaks, highest first.
    """
    z = np.where(np.isfinite(zscore), zscore, -np.inf)
    local_max = ndimage.maximum_filter(z, size=3, mode="nearest") == z
    inside = np.zeros(z.shape, dtype=bool)
    h, w = z.shape
    inside[border : h - border, border : w - border] = True
    rows, cols = np.nonzero(local_max & inside & (z >= threshold))
    order = np.lexsort((rows * w + cols, -z[rows, cols]))
    kept: list[tuple[int, int]] = []
    limit = min_distance**2
    for r, c in zip(rows[order], cols[order], strict=True):
        if kept:
            taken = np.asarray(kept)
            if np.min((taken[:, 0] - r) ** 2 + (taken[:, 1] - c) ** 2) < limit:
                continue
        kept.append((int(r), int(c)))
    return np.asarray(kept, dtype=np.int64).reshape(-1, 2)


def number_of_trials(result: MatchResult) -> float | None:
    """Pixels x correlations per pixel of a result (None if not recorded)."""
    meta = result.metadata
    per_pixel = meta.get("search_space", {}).get("correlations_per_pixel")
    if per_pixel is None:
        per_pixel = meta.get("correlations_per_pixel")
    if per_pixel is None:
        return None
    return float(per_pixel) * float(result.zscore.size)


def _astigmatism(result: MatchResult) -> tuple[float, float]:
    """Half the defocus_u - defocus_v difference and the angle, from the config."""
    optics = result.metadata.get("config", {}).get("optics", {})
    half = 0.5 * (
        float(optics.get("defocus_u", 0.0)) - float(optics.get("defocus_v", 0.0))
    )
    return half, float(optics.get("astigmatism_angle", 0.0))


def _threshold(result: MatchResult, settings: PeakSettings) -> float:
    if settings.zscore is not None:
        return float(settings.zscore)
    n_trials = number_of_trials(result)
    if n_trials is None:
        raise InputFileError(
            "the result does not record its search-space size, so the false-positive "
            "threshold is unknown; give a fixed --zscore"
        )
    return threshold_for_false_positives(n_trials, settings.false_positives)


def find_peaks(
    result: MatchResult, settings: PeakSettings, template_size: int
) -> pd.DataFrame:
    """Particles found in a search result.

    Parameters
    ----------
    result : MatchResult
        Maps of ``twodtm match``.
    settings : PeakSettings
        Threshold, suppression distance and border.
    template_size : int
        Template box edge in pixels (sets the default distance and border).

    Returns
    -------
    pandas.DataFrame
        One row per peak, highest z-score first, with the columns of
        ``PEAK_COLUMNS`` (positions in pixels and Angstrom, angles in degrees,
        defocus in Angstrom, ``pvalue`` family-wise, see the module doc, and
        ``n_trials``, the search's number of trials behind it, so that refine can
        recompute the p-value of a refined z-score; NaN when not recorded).
    """
    distance = (
        template_size / 2 if settings.min_distance is None else settings.min_distance
    )
    border = template_size // 2 if settings.border is None else settings.border
    peaks = suppress_non_maxima(
        result.zscore, _threshold(result, settings), distance, border
    )
    rows, cols = peaks[:, 0], peaks[:, 1]
    values = {
        name: result.maps[name][rows, cols].astype(np.float64) for name in result.maps
    }
    half, angle = _astigmatism(result)
    n_trials = number_of_trials(result)
    pixel = values["pixel_size"]
    table = {
        "x": cols.astype(np.float64),
        "y": rows.astype(np.float64),
        "x_angstrom": cols * pixel,
        "y_angstrom": rows * pixel,
        **{k: values[k] for k in ("zscore", "mip", "phi", "theta", "psi")},
        "defocus_u": values["defocus"] + half,
        "defocus_v": values["defocus"] - half,
        "defocus_angle": np.full(len(rows), angle),
        **{k: values[k] for k in ("defocus", "pixel_size", "mean", "std")},
        "pvalue": (
            family_pvalue(values["zscore"], n_trials)
            if n_trials is not None
            else np.full(len(rows), np.nan)
        ),
        "n_trials": np.full(len(rows), np.nan if n_trials is None else n_trials),
    }
    return pd.DataFrame(table, columns=list(PEAK_COLUMNS))


def _template_size(result: MatchResult, directory: Path) -> int:
    size = result.metadata.get("template_size")
    if size is not None:
        return int(size)
    template = result.metadata.get("config", {}).get("template")
    if template is not None and Path(template).is_file():
        with mrcfile.open(template, mode="r", header_only=True, permissive=True) as mrc:
            return int(mrc.header.nx)
    raise InputFileError(
        f"{directory}: the template box size is unknown (template file "
        f"{template!r} not found); pass --template-size"
    )


def _optics(result: MatchResult) -> Optics:
    """Micrograph optics recorded in result.json (defaults where absent)."""
    o = result.metadata.get("config", {}).get("optics", {})
    defaults = Optics(pixel_size=result.pixel_size)
    return Optics(
        pixel_size=float(o.get("pixel_size", result.pixel_size)),
        voltage=float(o.get("voltage", defaults.voltage)),
        spherical_aberration=float(
            o.get("spherical_aberration", defaults.spherical_aberration)
        ),
        amplitude_contrast=float(
            o.get("amplitude_contrast", defaults.amplitude_contrast)
        ),
        defocus_u=float(o.get("defocus_u", defaults.defocus_u)),
        defocus_v=float(o.get("defocus_v", defaults.defocus_v)),
        astigmatism_angle=float(o.get("astigmatism_angle", 0.0)),
        phase_shift=float(o.get("phase_shift", 0.0)),
        b_factor=float(o.get("ctf_b_factor", 0.0)),
    )


def pick_and_write(
    result_dir: str | os.PathLike[str],
    settings: PeakSettings,
    template_size: int | None = None,
    micrograph_name: str | None = None,
) -> pd.DataFrame:
    """Find peaks in a result directory and write the particle tables into it.

    Writes ``particles.star`` and ``particles.csv`` (the full table) and what
    RELION's extraction reads: ``<micrograph stem>_twodtm.star`` and
    ``coordinates.star`` (see ``io.tables.write_coordinates``). The template size
    (unless given) and optics come from ``result.json``; the number of trials from
    its search-space size times the number of pixels.

    Parameters
    ----------
    result_dir : path
        Result directory of ``twodtm match``.
    settings : PeakSettings
        Threshold, suppression distance and border.
    template_size : int, optional
        Template box edge, pixels (default: from ``result.json``).
    micrograph_name : str, optional
        ``rlnMicrographName`` written to the STAR files (default: the micrograph
        path that was searched); give the name RELION's micrographs STAR uses.

    Returns
    -------
    pandas.DataFrame
        The peaks, as ``find_peaks`` returns them.
    """
    directory = Path(result_dir)
    result = MatchResult.load(directory)
    size = _template_size(result, directory) if template_size is None else template_size
    peaks = find_peaks(result, settings, size)
    micrograph = micrograph_name or str(
        result.metadata.get("config", {}).get("micrograph", "micrograph.mrc")
    )
    write_particles(peaks, directory, micrograph, _optics(result))
    write_coordinates(peaks, directory, micrograph)
    return peaks
