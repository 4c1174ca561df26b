"""Optimise the template's pixel size against particles at known poses.

A template whose voxel size is slightly wrong is magnified relative to the
particles, which lowers every correlation. Sweeping the voxel size the template
is taken to have and scoring each value by the mean z-score of a set of
particles, each locally refined (``local.refine_particles``), finds the size
that matches the micrograph. A map is rescaled in Fourier space, exactly as the
engine's pixel-size search does (the central slices are sampled at frequencies
scaled by ``template_pixel_size / micrograph_pixel_size``); an atomic model is
re-simulated with ttsim3d at each size. A coarse sweep is followed by a fine one
around its best value, and a parabola through the fine sweep's maximum and its
neighbours gives the reported pixel size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from twodtm.local._batch import Template
from twodtm.local._fit import LocalSettings, Micrograph, make_template
from twodtm.local.refine import refine_particles
from twodtm.simulate import map_from_model

__all__ = [
    "SweepResult",
    "SweepSettings",
    "TemplateSource",
    "parabola_vertex",
    "rescaled_map_source",
    "simulated_model_source",
    "sweep_pixel_size",
]

TemplateSource = Callable[[float], Template]
"""Gives the template at a voxel size (Angstrom)."""


def rescaled_map_source(template: Template) -> TemplateSource:
    """Templates of one map at any voxel size, by Fourier rescaling (no resampling)."""

    def at(pixel_size: float) -> Template:
        return Template(template.dft, template.size, pixel_size)

    return at


def simulated_model_source(
    model: str, box_size: int, device: torch.device, padding: float = 2.0
) -> TemplateSource:
    """Templates simulated from an atomic model with ttsim3d at each voxel size."""

    def at(pixel_size: float) -> Template:
        volume = map_from_model(model, pixel_size, box_size).to(device)
        return make_template(volume, pixel_size, padding)

    return at


@dataclass(frozen=True)
class SweepSettings:
    """Relative ranges and steps of the coarse and fine sweeps (fractions)."""

    coarse_range: float = 0.05
    coarse_step: float = 0.01
    fine_range: float = 0.01
    fine_step: float = 0.002


@dataclass(frozen=True)
class SweepResult:
    """Scores of every voxel size tried and the best one.

    Attributes
    ----------
    pixel_sizes : np.ndarray
        ``(n,)`` voxel sizes tried, Angstrom, sorted.
    scores : np.ndarray
        ``(n,)`` mean refined z-score of the particles at each.
    best_pixel_size : float
        Vertex of the parabola through the best score and its neighbours, Angstrom.
    nominal_pixel_size : float
        The size the sweep was centred on.
    """

    pixel_sizes: np.ndarray
    scores: np.ndarray
    best_pixel_size: float
    nominal_pixel_size: float

    def table(self) -> pd.DataFrame:
        """Return the sweep as columns ``pixel_size``, ``score``."""
        return pd.DataFrame({"pixel_size": self.pixel_sizes, "score": self.scores})


def _grid(centre: float, half_range: float, step: float) -> np.ndarray:
    count = int(round(half_range / step))
    return centre * (1.0 + step * np.arange(-count, count + 1))


def parabola_vertex(values: np.ndarray, scores: np.ndarray) -> float:
    """Position of the maximum from a parabola through the best point and neighbours.

    Parameters
    ----------
    values, scores : np.ndarray
        ``(n,)`` sorted abscissae and their scores.

    Returns
    -------
    float
        The vertex, clipped to the neighbours' span; the best value itself at an
        end of the range or when the three points are not concave.

    Examples
    --------
    >>> values = np.array([1.0, 1.1, 1.2, 1.3])
    >>> round(parabola_vertex(values, -((values - 1.17) ** 2)), 9)
    1.17
    """
    k = int(np.argmax(scores))
    if k == 0 or k == len(values) - 1:
        return float(values[k])
    x, y = values[k - 1 : k + 2], scores[k - 1 : k + 2]
    a, b, _ = np.polyfit(x - x[1], y, 2)
    if a >= 0:
        return float(values[k])
    return float(np.clip(x[1] - b / (2 * a), x[0], x[2]))


def _score_pixel_size(
    micrograph: Micrograph,
    template: Template,
    particles: pd.DataFrame,
    settings: LocalSettings,
) -> float:
    """Mean z-score of ``particles`` after a local refinement with ``template``."""
    return float(
        refine_particles(micrograph, template, particles, settings)["zscore"].mean()
    )


def sweep_pixel_size(
    micrograph: Micrograph,
    source: TemplateSource,
    particles: pd.DataFrame,
    settings: LocalSettings,
    nominal: float,
    sweep: SweepSettings = SweepSettings(),
) -> SweepResult:
    """Coarse then fine sweep of the template voxel size around ``nominal``.

    Parameters
    ----------
    micrograph : Micrograph
        From ``local.prepare_micrograph``.
    source : TemplateSource
        The template at any voxel size.
    particles : pandas.DataFrame
        Particles at known poses (x, y, phi, theta, psi, optionally defocus).
    settings : LocalSettings
        The local refinement of each particle at each voxel size.
    nominal : float
        The voxel size the template is labelled with, Angstrom.
    sweep : SweepSettings
        Relative ranges and steps.

    Returns
    -------
    SweepResult
    """
    scores: dict[float, float] = {}

    def run(values: np.ndarray) -> None:
        for value in values:
            key = round(float(value), 9)
            if key not in scores:
                scores[key] = _score_pixel_size(
                    micrograph, source(key), particles, settings
                )

    run(_grid(nominal, sweep.coarse_range, sweep.coarse_step))
    coarse_best = max(scores, key=scores.__getitem__)
    run(_grid(coarse_best, sweep.fine_range, sweep.fine_step))
    fine = np.array(
        sorted(v for v in scores if abs(v / coarse_best - 1) <= sweep.fine_range + 1e-9)
    )
    values = np.array(sorted(scores))
    table = np.array([scores[v] for v in values])
    best = parabola_vertex(fine, np.array([scores[v] for v in fine]))
    return SweepResult(values, table, best, nominal)
