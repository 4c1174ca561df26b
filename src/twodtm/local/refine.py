"""Refinement of a particle table: poses in, refined poses and their changes out.

``refine_particles`` reads each row's start pose (``start_pose``), fits it
(``local.fit_particles``) and writes the refined values back with the
z-score re-normalised by the global search's mean and standard deviation at the
particle, its family-wise p-value and the change of every parameter.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from twodtm.ctf import Optics
from twodtm.errors import InputDataError
from twodtm.local._batch import Template
from twodtm.local._boxes import renormalised_zscore
from twodtm.local._fit import LocalFit, LocalSettings, Micrograph, Pose, fit_particles
from twodtm.orientations import angular_distance, euler_to_matrix
from twodtm.significance import family_pvalue

__all__ = ["check_particle_table", "refine_particles", "start_pose"]

# What every particle table must hold: position (px) and ZYZ angles (deg).
_POSE_COLUMNS = ("x", "y", "phi", "theta", "psi")


def start_pose(row: pd.Series, optics: Optics) -> Pose:
    """Read the pose of a table row (defocus, pixel size default to the optics)."""
    defocus = float(row["defocus"]) if "defocus" in row else optics.defocus_mean
    pixel = float(row["pixel_size"]) if "pixel_size" in row else optics.pixel_size
    return Pose(
        x=float(row["x"]),
        y=float(row["y"]),
        angles=(float(row["phi"]), float(row["theta"]), float(row["psi"])),
        defocus=defocus,
        pixel_size=pixel,
    )


def check_particle_table(table: pd.DataFrame, source: str) -> None:
    """Raise InputDataError when a table lacks the pose columns."""
    missing = [c for c in _POSE_COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(
            f"{source}: particle table lacks the column(s) {missing}; use a table "
            "written by `twodtm peaks` (or a STAR file with rlnCoordinateX/Y and "
            "rlnAngleRot/Tilt/Psi)."
        )


def _refined_row(row: pd.Series, fit: LocalFit, start: Pose, optics: Optics) -> dict:
    """Return the row with the fit's values, z-score, p-value and changes."""
    out = row.to_dict()
    pose = fit.pose
    mean = float(row["mean"]) if "mean" in row else 0.0
    std = float(row["std"]) if "std" in row else 1.0
    zscore = renormalised_zscore(fit.correlation, mean, std)
    delta_defocus = pose.defocus - start.defocus
    out.update(
        x=pose.x, y=pose.y, phi=pose.angles[0], theta=pose.angles[1], psi=pose.angles[2]
    )
    out.update(defocus=pose.defocus, pixel_size=pose.pixel_size, mip=fit.correlation)
    out["zscore"] = zscore
    if "pvalue" in out or "n_trials" in out:
        out["pvalue"] = _refined_pvalue(zscore, row)
    for name in ("defocus_u", "defocus_v"):
        if name in out:
            out[name] = float(row[name]) + delta_defocus
    for axis in ("x", "y"):
        if f"{axis}_angstrom" in out:
            out[f"{axis}_angstrom"] = getattr(pose, axis) * pose.pixel_size
    before = euler_to_matrix(torch.tensor(start.angles, dtype=torch.float64))
    after = euler_to_matrix(torch.tensor(pose.angles, dtype=torch.float64))
    out.update(
        delta_x=pose.x - start.x,
        delta_y=pose.y - start.y,
        delta_angle=float(angular_distance(before, after)),
        delta_defocus=delta_defocus,
        delta_pixel_size=pose.pixel_size - start.pixel_size,
        delta_zscore=zscore - float(row["zscore"]) if "zscore" in row else np.nan,
    )
    return out


def _refined_pvalue(zscore: float, row: pd.Series) -> float:
    """Family-wise p-value of a refined z-score over the global search's trials.

    The z-score is against the global noise model, so the global number of trials
    (``n_trials``, written by ``twodtm peaks``) applies; without it the p-value is
    unknown (NaN), not the stale one of the start.
    """
    n_trials = float(row["n_trials"]) if "n_trials" in row else float("nan")
    if not np.isfinite(n_trials) or n_trials <= 0:
        return float("nan")
    return float(family_pvalue(np.array([zscore]), n_trials)[0])


def refine_particles(
    micrograph: Micrograph,
    template: Template,
    particles: pd.DataFrame,
    settings: LocalSettings,
) -> pd.DataFrame:
    """Refine every particle of a table.

    Parameters
    ----------
    micrograph : Micrograph
        From ``prepare_micrograph``.
    template : Template
        From ``make_template`` on the same device.
    particles : pandas.DataFrame
        Columns x, y (pixels), phi, theta, psi (deg); optionally defocus
        (absolute mean, A), pixel_size, zscore, and the global search's mean and
        std at the particle (without them the z-score is the correlation itself,
        which is in units of the whitened noise).

    Returns
    -------
    pandas.DataFrame
        The same columns holding the refined values (x, y, angles, defocus,
        defocus_u/v, pixel_size, mip, zscore re-normalised with the global mean
        and std, pvalue recomputed for that z-score from the table's n_trials,
        NaN without it) plus their changes: delta_x, delta_y (px), delta_angle (deg,
        geodesic), delta_defocus (A), delta_pixel_size (A), delta_zscore.
    """
    check_particle_table(particles, "particles")
    table = [row for _, row in particles.iterrows()]
    starts = [start_pose(row, micrograph.optics) for row in table]
    fits = fit_particles(micrograph, template, starts, settings)
    rows = [
        _refined_row(row, fit, start, micrograph.optics)
        for row, fit, start in zip(table, fits, starts, strict=True)
    ]
    columns = list(particles.columns) + [
        c for c in _ADDED if c not in particles.columns
    ]
    return pd.DataFrame(rows, columns=columns)


_ADDED = (
    "defocus",
    "pixel_size",
    "mip",
    "zscore",
    "delta_x",
    "delta_y",
    "delta_angle",
    "delta_defocus",
    "delta_pixel_size",
    "delta_zscore",
)
