"""``twodtm demo``: simulate, search, pick and score, on data shipped in the package.

The shipped template is human apoferritin (PDB 6Z6U, octahedral), simulated with
ttsim3d and binned to 2.5 A/px in a 64 px box (``benchmarks/make_demo_data.py``).
The demo simulates a micrograph with a dozen particles, searches it over the
octahedral asymmetric unit, picks peaks at one expected false positive per
micrograph, and scores the picks against the truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twodtm.config import MatchConfig, OpticsConfig
from twodtm.ctf import Optics
from twodtm.evaluation import DetectionScore, match_to_truth
from twodtm.io.mrc import read_mrc
from twodtm.io.results import MatchResult
from twodtm.picking import PeakSettings, pick_peaks
from twodtm.programs.match import match_template
from twodtm.programs.peaks import write_picks
from twodtm.programs.simulate import write_simulation
from twodtm.progress import ProgressReporter, as_reporter
from twodtm.report import write_report
from twodtm.simulate import (
    Simulation,
    SimulationParams,
    degrade_volume,
    simulate_micrograph,
)

__all__ = [
    "DEMO_BOX_SIZE",
    "DEMO_PIXEL_SIZE",
    "DEMO_SYMMETRY",
    "SearchSettings",
    "Trial",
    "demo_optics",
    "demo_volume",
    "run_demo",
    "run_demo_verbose",
    "run_trial",
]

DEMO_PIXEL_SIZE = 2.5
DEMO_BOX_SIZE = 64
_DEMO_MAP = "demo_apoferritin.mrc"
DEMO_SYMMETRY = "O"

_ProgressHook = Callable[[int, int], None]
_Progress = ProgressReporter | _ProgressHook


@dataclass(frozen=True)
class SearchSettings:
    """The search run on a simulated micrograph (angles in degrees, lengths in A).

    Attributes
    ----------
    in_plane_step, out_of_plane_step : float
        Orientation grid steps.
    symmetry : str
        Point group of the template.
    defocus_range, defocus_step : float
        Defocus offsets searched, ``-range .. +range``; range 0 searches only the
        micrograph defocus.
    high_resolution : float or None
        Low-pass limit of the search (bandpass high resolution), Angstrom.
    batch_size : int
        Orientations per engine call.
    """

    in_plane_step: float = 4.0
    out_of_plane_step: float = 4.0
    symmetry: str = DEMO_SYMMETRY
    defocus_range: float = 0.0
    defocus_step: float = 200.0
    high_resolution: float | None = None
    batch_size: int = 8


@dataclass(frozen=True)
class Trial:
    """Everything one simulate-search-pick-score run produced."""

    simulation: Simulation
    result: MatchResult
    peaks: pd.DataFrame
    score: DetectionScore
    seconds: float


def demo_volume() -> tuple[torch.Tensor, float]:
    """Return the shipped apoferritin map and its pixel size (Angstrom)."""
    resource = resources.files("twodtm.data").joinpath(_DEMO_MAP)
    with resources.as_file(resource) as path:
        mrc = read_mrc(path)
    return torch.from_numpy(mrc.data), DEMO_PIXEL_SIZE


def demo_optics(pixel_size: float = DEMO_PIXEL_SIZE) -> Optics:
    """300 kV, Cs 2.7 mm, 1.5 um underfocus with a little astigmatism."""
    return Optics(
        pixel_size=pixel_size,
        defocus_u=15200.0,
        defocus_v=14800.0,
        astigmatism_angle=30.0,
    )


def _match_config(
    directory: Path, optics: Optics, search: SearchSettings
) -> MatchConfig:
    """Build the match config for micrograph.mrc and template.mrc in ``directory``."""
    defocus = (
        {"enabled": False}
        if search.defocus_range <= 0
        else {
            "min": -search.defocus_range,
            "max": search.defocus_range,
            "step": search.defocus_step,
        }
    )
    return MatchConfig.model_validate(
        {
            "micrograph": str(directory / "micrograph.mrc"),
            "template": str(directory / "template.mrc"),
            "optics": OpticsConfig.from_optics(optics).model_dump(),
            "defocus_search": defocus,
            "orientation_search": {
                "in_plane_step": search.in_plane_step,
                "out_of_plane_step": search.out_of_plane_step,
                "symmetry": search.symmetry,
            },
            "preprocessing": {"bandpass_high_resolution": search.high_resolution},
            "compute": {"devices": "cpu", "batch_size": search.batch_size},
            "output": {"directory": str(directory / "result"), "overwrite": True},
        }
    )


def run_trial(
    volume: torch.Tensor,
    optics: Optics,
    params: SimulationParams,
    search: SearchSettings,
    directory: str | Path,
    template_b_factor: float = 0.0,
    progress: _Progress | None = None,
) -> Trial:
    """Simulate a micrograph, search it, pick peaks and score them against the truth.

    Writes the simulation into ``directory`` and the search result (with
    particles.star/csv) into ``directory / "result"``.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` map used to simulate the particles.
    optics : Optics
        Micrograph optics.
    params : SimulationParams
        Micrograph to simulate.
    search : SearchSettings
        Search grid and filters.
    directory : str or Path
        Output directory.
    template_b_factor : float
        Extra B-factor (A^2) on the search template, to model template mismatch.
    progress : ProgressReporter or callable, optional
        Gets the phases and the search's size and progress; a plain callable is
        called as ``progress(done, total)`` in orientations.

    Returns
    -------
    Trial
    """
    out = Path(directory)
    started = time.perf_counter()
    reporter = as_reporter(progress)
    reporter.note(f"demo: simulating a {params.image_shape} px micrograph in {out}")
    sim = simulate_micrograph(volume, optics, params)
    template = degrade_volume(volume, optics.pixel_size, b_factor=template_b_factor)
    write_simulation(sim, out, template, optics.pixel_size)
    config = _match_config(out, optics, search)
    result = match_template(config, reporter)
    result.save(out / "result")
    reporter.note("demo: picking and scoring the particles")
    peaks, record = pick_peaks(result, PeakSettings(), int(volume.shape[-1]))
    write_picks(out / "result", peaks, record, "micrograph.mrc", optics)
    score = match_to_truth(peaks, sim.truth, volume.shape[-1] / 4, search.symmetry)
    return Trial(sim, result, peaks, score, time.perf_counter() - started)


def _score_table(trial: Trial) -> pd.DataFrame:
    """Found particles next to their true match (unmatched picks have NaN truth)."""
    peaks = trial.peaks.reset_index(drop=True)
    pairs = trial.score.pairs.set_index("found_index")
    truth = trial.simulation.truth
    rows = []
    for i, peak in peaks.iterrows():
        matched = i in pairs.index
        row = {
            "x": peak["x"],
            "y": peak["y"],
            "zscore": peak["zscore"],
            "phi": peak["phi"],
            "theta": peak["theta"],
            "psi": peak["psi"],
            "true_x": np.nan,
            "true_y": np.nan,
            "position_error_px": np.nan,
            "angular_error_deg": np.nan,
        }
        if matched:
            pair = pairs.loc[i]
            true = truth.iloc[int(pair["truth_index"])]
            row.update(
                true_x=true["x"],
                true_y=true["y"],
                position_error_px=pair["position_error"],
                angular_error_deg=pair["angular_error"],
            )
        rows.append(row)
    return pd.DataFrame(rows)


_DEMO_PARAMS = SimulationParams(
    image_shape=(1024, 1024), n_particles=12, dose=30.0, defocus_spread=50.0, seed=2024
)
_DEMO_SEARCH = SearchSettings()


def run_demo(
    directory: str | Path = "twodtm-demo",
    report: bool = True,
    progress: _Progress | None = None,
    params: SimulationParams = _DEMO_PARAMS,
    search: SearchSettings = _DEMO_SEARCH,
) -> DetectionScore:
    """Run the whole demo and return the detection score.

    Parameters
    ----------
    directory : str or Path
        Where the micrograph, truth, result maps and particle tables go.
    report : bool
        Write a report of the run (figures) into ``directory`` as well.
    progress : ProgressReporter or callable, optional
        Gets the phases and the search's progress (see ``run_trial``).
    params, search : optional
        Micrograph and search (smaller ones make quick tests).

    Returns
    -------
    DetectionScore
    """
    return _demo_trial(directory, report, progress, params, search).score


def _demo_trial(
    directory: str | Path,
    report: bool,
    progress: _Progress | None,
    params: SimulationParams,
    search: SearchSettings,
) -> Trial:
    volume, pixel_size = demo_volume()
    optics = demo_optics(pixel_size)
    reporter = as_reporter(progress)
    trial = run_trial(volume, optics, params, search, directory, 0.0, reporter)
    _score_table(trial).to_csv(Path(directory) / "demo_scores.csv", index=False)
    if report:
        reporter.note("demo: writing the report")
        _write_report(trial, Path(directory))
    return trial


def _summary_lines(trial: Trial) -> list[str]:
    """Return the demo printout; its last line is ``recall R precision P``."""
    score = trial.score
    table = _score_table(trial).to_string(
        index=False, float_format=lambda v: f"{v:.1f}", na_rep="-"
    )
    per_pixel = trial.result.metadata.correlations_per_pixel
    return [
        table,
        f"searched {per_pixel} correlations per pixel in {trial.seconds:.0f} s",
        f"found {score.n_found}, true {score.n_truth}, matched {score.n_matched}; "
        f"median position error {score.median_position_error:.2f} px, "
        f"median angular error {score.median_angular_error:.2f} deg",
        f"recall {score.recall:.2f} precision {score.precision:.2f}",
    ]


def run_demo_verbose(
    directory: str | Path = "twodtm-demo",
    report: bool = True,
    progress: _Progress | None = None,
    params: SimulationParams = _DEMO_PARAMS,
    search: SearchSettings = _DEMO_SEARCH,
) -> list[str]:
    """Run the demo and return the lines ``twodtm demo`` prints."""
    return _summary_lines(_demo_trial(directory, report, progress, params, search))


def _write_report(trial: Trial, directory: Path) -> None:
    """Write ``result/report.html`` (``twodtm report``), scored against the truth."""
    write_report(directory / "result", directory / "truth.star", trial.peaks)
