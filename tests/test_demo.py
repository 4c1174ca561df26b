"""The demo pipeline: simulate, search, pick, score, and the CLI's last line."""

from __future__ import annotations

import re

import pytest

from twodtm.evaluation import match_to_truth
from twodtm.io.mrc import read_mrc
from twodtm.io.tables import read_particles
from twodtm.picking import number_of_trials
from twodtm.programs.demo import (
    DEMO_BOX_SIZE,
    DEMO_PIXEL_SIZE,
    SearchSettings,
    demo_optics,
    demo_volume,
    run_demo,
    run_demo_verbose,
    run_trial,
)
from twodtm.significance import threshold_for_false_positives
from twodtm.simulate import SimulationParams, fourier_bin

TINY = SimulationParams((128, 128), 1, dose=30.0, seed=5)
COARSE = SearchSettings(in_plane_step=30.0, out_of_plane_step=30.0)
COARSE_NOISE = SearchSettings(in_plane_step=12.0, out_of_plane_step=12.0)


def test_shipped_map_is_small_and_at_the_demo_pixel_size():
    volume, pixel_size = demo_volume()
    assert tuple(volume.shape) == (DEMO_BOX_SIZE,) * 3
    assert pixel_size == DEMO_PIXEL_SIZE
    # apoferritin: ~0.2 rad projected phase through the shell (ttsim3d units)
    assert 0.1 < float(volume.sum(0).max()) < 0.4


def test_demo_pipeline_writes_everything_and_reports_its_score(tmp_path):
    lines = run_demo_verbose(tmp_path, report=False, params=TINY, search=COARSE)
    last = re.fullmatch(r"recall (\d\.\d\d) precision (\d\.\d\d)", lines[-1])
    assert last is not None
    for name in ("micrograph.mrc", "template.mrc", "truth.star", "demo_scores.csv"):
        assert (tmp_path / name).is_file()
    assert read_mrc(tmp_path / "micrograph.mrc").data.shape == (128, 128)
    found = read_particles(tmp_path / "result" / "particles.csv")
    truth = read_particles(tmp_path / "truth.star")
    score = match_to_truth(found, truth, DEMO_BOX_SIZE / 4, "O")
    assert float(last.group(1)) == pytest.approx(score.recall, abs=0.005)
    assert float(last.group(2)) == pytest.approx(score.precision, abs=0.005)


@pytest.mark.slow
def test_full_demo_finds_the_particles_at_their_poses(tmp_path):
    # moderate dose (30 e/A^2), 12 particles, 4 degree grid: about 4 min on 2 cores
    score = run_demo(tmp_path, report=False)
    assert score.n_truth == 12
    assert score.recall >= 0.9
    assert score.precision >= 0.95
    assert score.median_position_error <= 1.0
    assert score.median_angular_error <= 4.0


def test_pure_noise_gives_about_one_false_positive(tmp_path):
    volume, _ = demo_volume()
    template = fourier_bin(volume, 2)  # 32 px at 5 A
    optics = demo_optics(5.0)
    counts = []
    for seed in (1, 2):
        noise = SimulationParams((128, 128), 0, dose=30.0, seed=seed)
        trial = run_trial(template, optics, noise, COARSE_NOISE, tmp_path / str(seed))
        counts.append(len(trial.peaks))
        top = float(trial.result.maps["zscore"].max())
        threshold = threshold_for_false_positives(number_of_trials(trial.result))
        # the noise maximum sits near, not far above, the 1-per-micrograph threshold
        assert threshold - 2.0 < top < threshold + 1.0
    assert sum(counts) <= 4
