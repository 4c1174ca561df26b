"""Constrained search: find particle B near each particle A it is bound to.

Given A's refined poses and where B sits in A's map frame (a rotation ``M`` taking
B's map axes onto A's and an offset ``o`` in Angstrom, so a point ``r`` of B's map
lies at ``M r + o`` in A's map), B's pose follows from A's. With the engine's
convention (a map point ``r`` appears at image offset ``(R^T r)_xy``)::

    R_B = M^T R_A        position_B = position_A + (R_A^T o)_xy / pixel_size

B is then searched locally around that prediction (``local.fit_particles``, all
predictions batched on the device) within the given tolerances of position,
orientation and defocus. Because this space is tiny next to a global search, the
false-positive threshold, recomputed for the number of trials actually made, is
much lower: B is found at z-scores a full search could not accept. The z-score of
a candidate is its correlation in units of the whitened noise, whose null
distribution is the standard normal (see ``_local_zscore``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch

from twodtm.local._batch import Template
from twodtm.local._boxes import window_mask, window_radius
from twodtm.local._fit import LocalFit, LocalSettings, Micrograph, Pose, fit_particles
from twodtm.local._grid import small_rotations
from twodtm.local.refine import start_pose
from twodtm.orientations import angular_distance, euler_to_matrix, matrix_to_euler
from twodtm.significance import threshold_for_false_positives

__all__ = [
    "Placement",
    "constrained_search",
    "predict_partner",
    "window_pixels",
]


@dataclass(frozen=True)
class Placement:
    """Where B sits in A's map frame.

    Attributes
    ----------
    rotation : torch.Tensor
        ``(3, 3)`` float64 ``M``, taking B's map axes onto A's.
    offset : torch.Tensor
        ``(3,)`` float64 position (x, y, z) of B's map centre in A's map, Angstrom.
    """

    rotation: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def from_euler(
        cls, orientation: tuple[float, float, float], offset: tuple[float, float, float]
    ) -> Placement:
        """Build from ZYZ Euler angles of ``M`` (deg) and the offset (A)."""
        angles = torch.tensor(orientation, dtype=torch.float64)
        return cls(euler_to_matrix(angles), torch.tensor(offset, dtype=torch.float64))


def predict_partner(a: Pose, placement: Placement, pixel_size: float) -> Pose:
    """B's pose implied by A's pose (same defocus and pixel size as A).

    Parameters
    ----------
    a : Pose
        Particle A (position in pixels, angles in degrees).
    placement : Placement
        B in A's frame.
    pixel_size : float
        Micrograph pixel size, Angstrom.
    """
    r_a = euler_to_matrix(torch.tensor(a.angles, dtype=torch.float64))
    r_b = placement.rotation.T @ r_a
    shift = (r_a.T @ placement.offset) / pixel_size
    angles = matrix_to_euler(r_b).tolist()
    return replace(
        a,
        x=a.x + float(shift[0]),
        y=a.y + float(shift[1]),
        angles=(angles[0], angles[1], angles[2]),
    )


def window_pixels(max_shift: float) -> int:
    """Count the positions a local search with ``max_shift`` visits.

    Examples
    --------
    >>> window_pixels(1.0), window_pixels(2.0)  # the pixels of disks of radius 1, 2
    (5, 13)
    """
    return int(window_mask(2 * window_radius(max_shift) + 1, max_shift).sum())


def _local_zscore(fit: LocalFit, mean: float = 0.0, std: float = 1.0) -> float:
    """Z-score of the best correlation of a constrained search.

    The correlation of a unit-norm filtered template with the whitened,
    unit-variance micrograph is, on noise, normally distributed with mean 0 and
    standard deviation 1, which a global search's per-pixel ``mean`` and ``std``
    maps confirm; those are the defaults. (The statistics of the local poses
    themselves cannot stand in: neighbouring poses are strongly correlated, so
    their spread underestimates the noise.)
    """
    return (fit.correlation - mean) / std if std > 0 else 0.0


def _constrained_trials(n_particles: int, settings: LocalSettings) -> int:
    """Correlations the constrained search makes: A particles x positions x poses.

    The first pass is counted; later passes (``iterations > 1``) re-search a
    finer grid inside it, whose correlations are not independent new trials.
    """
    poses = len(small_rotations(settings.grid)) * len(settings.defocus_offsets)
    poses *= len(settings.pixel_size_offsets)
    return n_particles * window_pixels(settings.max_shift) * poses


def _candidate(index: int, a: Pose, fit: LocalFit, predicted: Pose) -> dict:
    pose = fit.pose
    before = euler_to_matrix(torch.tensor(predicted.angles, dtype=torch.float64))
    after = euler_to_matrix(torch.tensor(pose.angles, dtype=torch.float64))
    return {
        "x": pose.x,
        "y": pose.y,
        "phi": pose.angles[0],
        "theta": pose.angles[1],
        "psi": pose.angles[2],
        "defocus": pose.defocus,
        "pixel_size": pose.pixel_size,
        "mip": fit.correlation,
        "zscore": _local_zscore(fit),
        "partner_index": index,
        "predicted_x": predicted.x,
        "predicted_y": predicted.y,
        "delta_angle": float(angular_distance(before, after)),
        "partner_x": a.x,
        "partner_y": a.y,
    }


def constrained_search(
    micrograph: Micrograph,
    template: Template,
    partners: pd.DataFrame,
    placement: Placement,
    settings: LocalSettings,
    false_positives: float = 1.0,
) -> tuple[pd.DataFrame, float]:
    """Search B around every A of ``partners``.

    Parameters
    ----------
    micrograph : Micrograph
        From ``local.prepare_micrograph``.
    template : Template
        B's map.
    partners : pandas.DataFrame
        Refined A particles (x, y, phi, theta, psi, optionally defocus).
    placement : Placement
        B in A's map frame.
    settings : LocalSettings
        Tolerances: ``max_shift`` (pixels), the local orientation grid, defocus
        offsets; one pass (``iterations``) is what the threshold counts.
    false_positives : float
        Expected false detections over the whole constrained search.

    Returns
    -------
    tuple[pandas.DataFrame, float]
        One candidate per A (columns x, y, phi, theta, psi, defocus, pixel_size,
        mip, zscore, partner_index, predicted_x/y, delta_angle from the
        prediction, partner_x/y, detected) and the z-score threshold.
    """
    pixel_size = micrograph.optics.pixel_size
    a_poses = [start_pose(row, micrograph.optics) for _, row in partners.iterrows()]
    predictions = [predict_partner(a, placement, pixel_size) for a in a_poses]
    fits = fit_particles(micrograph, template, predictions, settings)
    rows = [
        _candidate(index, a, fit, predicted)
        for index, (a, fit, predicted) in enumerate(
            zip(a_poses, fits, predictions, strict=True)
        )
    ]
    n_trials = _constrained_trials(len(rows), settings)
    threshold = threshold_for_false_positives(n_trials, false_positives)
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table["detected"] = table["zscore"] >= threshold
    return table, threshold


_COLUMNS = (
    "x",
    "y",
    "phi",
    "theta",
    "psi",
    "defocus",
    "pixel_size",
    "mip",
    "zscore",
    "partner_index",
    "predicted_x",
    "predicted_y",
    "delta_angle",
    "partner_x",
    "partner_y",
)
