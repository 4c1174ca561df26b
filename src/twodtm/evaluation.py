"""Score found particles against ground truth: recall, precision and pose errors.

Found and true particles are paired one-to-one by the assignment that minimises the
total centre distance (Hungarian algorithm), keeping pairs closer than
``max_distance``. Angular errors are geodesic distances on SO(3), minimised over
the template's symmetry group acting on the left (poses ``R`` and ``S @ R`` of a
symmetric map give the same projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from twodtm.orientations import angular_distance, euler_to_matrix

__all__ = ["DetectionScore", "match_to_truth", "score_curve"]

_FAR = 1e12


@dataclass(frozen=True)
class DetectionScore:
    """How well a set of picks matches the truth.

    Attributes
    ----------
    recall, precision : float
        Matched / true and matched / found (1.0 when the denominator is 0).
    n_found, n_truth, n_matched : int
        Counts of picks, true particles and matched pairs.
    median_position_error : float
        Median centre distance of matched pairs, pixels (NaN without pairs).
    median_angular_error : float
        Median geodesic angle between matched poses, degrees, symmetry-aware.
    median_defocus_error : float
        Median absolute defocus difference, Angstrom (NaN when not available).
    pairs : pandas.DataFrame
        One row per matched pair: ``found_index``, ``truth_index``,
        ``position_error``, ``angular_error``, ``defocus_error``, ``zscore``.
    """

    recall: float
    precision: float
    n_found: int
    n_truth: int
    n_matched: int
    median_position_error: float
    median_angular_error: float
    median_defocus_error: float
    pairs: pd.DataFrame

    def summary(self) -> dict[str, float]:
        """Return the scalar fields, for printing or JSON."""
        return {
            "recall": self.recall,
            "precision": self.precision,
            "n_found": self.n_found,
            "n_truth": self.n_truth,
            "n_matched": self.n_matched,
            "median_position_error_px": self.median_position_error,
            "median_angular_error_deg": self.median_angular_error,
            "median_defocus_error_A": self.median_defocus_error,
        }


def _pair_by_position(
    found: pd.DataFrame, truth: pd.DataFrame, max_distance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one pairs of found and true particles within ``max_distance`` pixels.

    Returns
    -------
    tuple of np.ndarray
        Found indices, truth indices (row positions, not labels) and distances.
    """
    a = found[["x", "y"]].to_numpy(dtype=np.float64).reshape(-1, 2)
    b = truth[["x", "y"]].to_numpy(dtype=np.float64).reshape(-1, 2)
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    cost = np.where(distance <= max_distance, distance, _FAR)
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] < _FAR
    return rows[keep], cols[keep], distance[rows[keep], cols[keep]]


def _angular_errors(
    found: pd.DataFrame, truth: pd.DataFrame, symmetry: str = "C1"
) -> np.ndarray:
    """Row-wise geodesic angles (degrees) between two equally long pose tables."""
    if len(found) == 0:
        return np.zeros(0)
    columns = ["phi", "theta", "psi"]
    ra = euler_to_matrix(torch.from_numpy(np.array(found[columns], dtype=np.float64)))
    rb = euler_to_matrix(torch.from_numpy(np.array(truth[columns], dtype=np.float64)))
    return angular_distance(ra, rb, symmetry).numpy()


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def match_to_truth(
    found: pd.DataFrame, truth: pd.DataFrame, max_distance: float, symmetry: str = "C1"
) -> DetectionScore:
    """Pair picks with true particles and measure recall, precision and errors.

    Parameters
    ----------
    found, truth : pandas.DataFrame
        Tables with ``x``, ``y`` (pixels) and, for pose errors, ``phi``,
        ``theta``, ``psi`` (degrees, ZYZ) and ``defocus`` (Angstrom).
    max_distance : float
        Largest centre distance of a true match, pixels.
    symmetry : str
        Point group of the particle (``C1``, ``O``, ...).

    Returns
    -------
    DetectionScore

    Examples
    --------
    Two picks, one 1.5 px from a true particle and one far from the other:

    >>> found = pd.DataFrame({"x": [10.0, 50.0], "y": [10.0, 90.0]})
    >>> truth = pd.DataFrame({"x": [11.5, 80.0], "y": [10.0, 20.0]})
    >>> score = match_to_truth(found, truth, max_distance=4.0)
    >>> score.recall, score.precision, score.median_position_error
    (0.5, 0.5, 1.5)
    """
    fi, ti, distance = _pair_by_position(found, truth, max_distance)
    f, t = found.iloc[fi].reset_index(drop=True), truth.iloc[ti].reset_index(drop=True)
    has_angles = {"phi", "theta", "psi"} <= set(found) & set(truth)
    angles = _angular_errors(f, t, symmetry) if has_angles else np.full(len(fi), np.nan)
    has_defocus = "defocus" in found and "defocus" in truth
    defocus = (
        np.abs(f["defocus"].to_numpy() - t["defocus"].to_numpy())
        if has_defocus
        else np.full(len(fi), np.nan)
    )
    zscore = f["zscore"].to_numpy() if "zscore" in f else np.full(len(fi), np.nan)
    pairs = pd.DataFrame(
        {
            "found_index": fi,
            "truth_index": ti,
            "position_error": distance,
            "angular_error": angles,
            "defocus_error": defocus,
            "zscore": zscore,
        }
    )
    n = len(fi)
    return DetectionScore(
        recall=n / len(truth) if len(truth) else 1.0,
        precision=n / len(found) if len(found) else 1.0,
        n_found=len(found),
        n_truth=len(truth),
        n_matched=n,
        median_position_error=_median(distance),
        median_angular_error=_median(angles),
        median_defocus_error=_median(defocus),
        pairs=pairs,
    )


def score_curve(
    found: pd.DataFrame,
    truth: pd.DataFrame,
    max_distance: float,
    thresholds: np.ndarray | list[float],
) -> pd.DataFrame:
    """Recall and precision of the picks at or above each z-score threshold.

    Returns
    -------
    pandas.DataFrame
        Columns ``threshold``, ``n_found``, ``n_matched``, ``recall``, ``precision``.
    """
    rows = []
    for threshold in thresholds:
        kept = found[found["zscore"] >= threshold]
        score = match_to_truth(kept, truth, max_distance)
        rows.append(
            {
                "threshold": float(threshold),
                "n_found": score.n_found,
                "n_matched": score.n_matched,
                "recall": score.recall,
                "precision": score.precision,
            }
        )
    return pd.DataFrame(rows)
