"""Peak picking (core): detection threshold, non-maximum suppression, records.

Noise model (Rickgauer et al. 2017, eLife 6:e25648, see ``twodtm.significance``):
with no particle, every z-score (scaled MIP) trial is a standard normal draw.
With ``N`` independent trials in a micrograph (pixels searched x correlations per
pixel; pixels outside the search mask, ``twodtm.masking``, are neither picked nor
counted) the threshold expected to be crossed ``F`` times by noise alone is
``sqrt(2) * erfcinv(2 F / N)``; a peak's p-value is the family-wise chance that
noise alone reaches its z-score anywhere, ``1 - (1 - sf(z))**N``.

``pick_peaks`` returns the particles and the ``PeakRecord`` of the settings
they were picked with (the threshold among them); ``write_peak_record`` and
``read_peak_record`` are the one place ``peaks.json`` is written and read (by
``twodtm peaks``, the demo and the report).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from twodtm.errors import InputFileError
from twodtm.io.atomic import write_text_atomic
from twodtm.io.results import MatchResult
from twodtm.significance import family_pvalue, threshold_for_false_positives

__all__ = [
    "PEAKS_RECORD",
    "PeakRecord",
    "PeakSettings",
    "find_peaks",
    "number_of_trials",
    "pick_peaks",
    "read_peak_record",
    "write_peak_record",
]

_PEAK_COLUMNS = (
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
PEAKS_RECORD = "peaks.json"
"""File name of the ``PeakRecord`` written beside the particle tables."""


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


@dataclass(frozen=True)
class PeakRecord:
    """The peak settings a pick was made with, resolved (``peaks.json``).

    Attributes
    ----------
    settings : PeakSettings
        The settings as asked for.
    threshold : float
        The z-score threshold applied: ``settings.zscore`` or the one of
        ``settings.false_positives`` noise peaks among ``n_trials``.
    n_trials : float
        Trials of the search over the micrograph, correlations per pixel x
        ``n_pixels``.
    n_pixels : int
        Pixels searched (inside the search mask; all without one).
    min_distance : float
        Smallest distance between two peaks, pixels.
    border : int
        Edge margin, pixels.
    template_size : int
        Template box edge, pixels.
    n_peaks : int
        Peaks picked.
    """

    settings: PeakSettings
    threshold: float
    n_trials: float
    n_pixels: int
    min_distance: float
    border: int
    template_size: int
    n_peaks: int

    @property
    def fixed_threshold(self) -> bool:
        """Whether the threshold was a given z-score, not a false-positive rate."""
        return self.settings.zscore is not None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of ``peaks.json``."""
        return {"program": "peaks", **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = PEAKS_RECORD) -> PeakRecord:
        """Read the record from the JSON object ``doc`` of ``peaks.json``.

        Raises
        ------
        InputFileError
            A field is missing or unreadable.
        """
        try:
            settings = doc["settings"]
            return cls(
                settings=PeakSettings(
                    false_positives=float(settings["false_positives"]),
                    zscore=_optional(settings["zscore"], float),
                    min_distance=_optional(settings["min_distance"], float),
                    border=_optional(settings["border"], int),
                ),
                threshold=float(doc["threshold"]),
                n_trials=float(doc["n_trials"]),
                n_pixels=int(doc["n_pixels"]),
                min_distance=float(doc["min_distance"]),
                border=int(doc["border"]),
                template_size=int(doc["template_size"]),
                n_peaks=int(doc["n_peaks"]),
            )
        except KeyError as err:
            raise InputFileError(
                f"{source}: lacks {err}; run `twodtm peaks` again"
            ) from None
        except (TypeError, ValueError) as err:
            raise InputFileError(
                f"{source}: unreadable ({err}); run `twodtm peaks` again"
            ) from None


def _optional(value: Any, convert: type[float] | type[int]) -> Any:
    return None if value is None else convert(value)


def _suppress_non_maxima(
    zscore: np.ndarray,
    threshold: float,
    min_distance: float,
    border: int,
    searched: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression of a z-score map.

    Candidates are 3x3 local maxima at or above ``threshold``, inside
    ``searched`` (``(H, W)`` bool; None: everywhere) and at least ``border``
    pixels from every edge; taken from the highest down, a candidate is kept when
    no kept peak lies within ``min_distance`` pixels. Excluded pixels take part
    in nothing, not even as a neighbour that hides a maximum.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` int64 ``(row, column)`` of the peaks, highest first.
    """
    z = np.where(np.isfinite(zscore), zscore, -np.inf)
    if searched is not None:
        z = np.where(searched, z, -np.inf)
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


def number_of_trials(result: MatchResult) -> float:
    """Pixels searched x correlations per pixel: the family-wise trials.

    Only the pixels inside the search mask count (all of them without one):
    excluded pixels can never be picked, so their noise peaks are no false
    positives.
    """
    searched = np.count_nonzero(result.searched)
    return float(result.metadata.correlations_per_pixel) * float(searched)


def _threshold(result: MatchResult, settings: PeakSettings) -> float:
    if settings.zscore is not None:
        return float(settings.zscore)
    return threshold_for_false_positives(
        number_of_trials(result), settings.false_positives
    )


def pick_peaks(
    result: MatchResult, settings: PeakSettings, template_size: int
) -> tuple[pd.DataFrame, PeakRecord]:
    """Particles found in a search result, and the record of how they were picked.

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
        ``_PEAK_COLUMNS`` (positions in pixels and Angstrom, angles in degrees,
        defocus in Angstrom, ``pvalue`` family-wise, see the module doc, and
        ``n_trials``, the search's number of trials behind it, so that refine can
        recompute the p-value of a refined z-score).
    PeakRecord
        The threshold, distance and border applied.
    """
    distance = (
        template_size / 2 if settings.min_distance is None else settings.min_distance
    )
    border = template_size // 2 if settings.border is None else settings.border
    threshold = _threshold(result, settings)
    peaks = _suppress_non_maxima(
        result.zscore, threshold, distance, border, result.mask
    )
    n_trials = number_of_trials(result)
    record = PeakRecord(
        settings=settings,
        threshold=threshold,
        n_trials=n_trials,
        n_pixels=int(np.count_nonzero(result.searched)),
        min_distance=float(distance),
        border=int(border),
        template_size=int(template_size),
        n_peaks=len(peaks),
    )
    return _peak_table(result, peaks, n_trials), record


def find_peaks(
    result: MatchResult, settings: PeakSettings, template_size: int
) -> pd.DataFrame:
    """Particles found in a search result (the table of ``pick_peaks``)."""
    return pick_peaks(result, settings, template_size)[0]


def _peak_table(
    result: MatchResult, peaks: np.ndarray, n_trials: float
) -> pd.DataFrame:
    """Tabulate the ``(n, 2)`` ``(row, column)`` peaks in ``_PEAK_COLUMNS``."""
    rows, cols = peaks[:, 0], peaks[:, 1]
    values = {
        name: result.maps[name][rows, cols].astype(np.float64) for name in result.maps
    }
    optics = result.metadata.optics
    half = 0.5 * (optics.defocus_u - optics.defocus_v)
    pixel = values["pixel_size"]
    table = {
        "x": cols.astype(np.float64),
        "y": rows.astype(np.float64),
        "x_angstrom": cols * pixel,
        "y_angstrom": rows * pixel,
        **{k: values[k] for k in ("zscore", "mip", "phi", "theta", "psi")},
        "defocus_u": values["defocus"] + half,
        "defocus_v": values["defocus"] - half,
        "defocus_angle": np.full(len(rows), optics.astigmatism_angle),
        **{k: values[k] for k in ("defocus", "pixel_size", "mean", "std")},
        "pvalue": family_pvalue(values["zscore"], n_trials),
        "n_trials": np.full(len(rows), n_trials),
    }
    return pd.DataFrame(table, columns=list(_PEAK_COLUMNS))


def read_peak_record(directory: str | os.PathLike[str]) -> PeakRecord | None:
    """Read the ``PeakRecord`` saved in a result directory (None if there is none).

    Raises
    ------
    InputFileError
        ``peaks.json`` exists but cannot be read.
    """
    path = Path(directory) / PEAKS_RECORD
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(f"{path}: unreadable ({err})") from None
    return PeakRecord.from_json(doc, str(path))


def write_peak_record(directory: str | os.PathLike[str], record: PeakRecord) -> Path:
    """Write ``record`` as ``peaks.json`` in ``directory`` (atomically)."""
    path = Path(directory) / PEAKS_RECORD
    write_text_atomic(path, json.dumps(record.to_json(), indent=2))
    return path
