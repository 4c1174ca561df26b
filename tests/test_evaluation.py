"""Matching picks to ground truth: counts, position, angular and defocus errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twodtm.evaluation import match_to_truth, score_curve
from twodtm.orientations import euler_to_matrix, matrix_to_euler, symmetry_operators
from twodtm.programs.demo import demo_volume
from twodtm.search.projection import project
from twodtm.simulate import _projector


def _truth() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [50.0, 150.0, 250.0, 350.0],
            "y": [60.0, 160.0, 260.0, 360.0],
            "phi": [10.0, 80.0, 200.0, 300.0],
            "theta": [30.0, 60.0, 90.0, 120.0],
            "psi": [5.0, 100.0, 190.0, 270.0],
            "defocus": [10000.0, 10100.0, 10200.0, 10300.0],
        }
    )


def test_counts_and_errors_against_planted_offsets():
    truth = _truth()
    found = truth.iloc[:3].copy()
    found["x"] += [3.0, 0.0, -1.0]
    found["y"] += [4.0, 1.0, 0.0]  # distances 5, 1, 1
    found["psi"] += [2.0, 4.0, 6.0]  # rotations about z: geodesic = psi offset
    found["defocus"] += [-50.0, 100.0, 30.0]
    found["zscore"] = [9.0, 8.0, 7.0]
    false_pick = pd.DataFrame(
        {
            "x": [700.0],
            "y": [700.0],
            "phi": [0.0],
            "theta": [0.0],
            "psi": [0.0],
            "defocus": [1e4],
            "zscore": [6.5],
        }
    )
    found = pd.concat([found, false_pick], ignore_index=True)
    score = match_to_truth(found, truth, max_distance=10.0)
    assert (score.n_found, score.n_truth, score.n_matched) == (4, 4, 3)
    assert score.recall == pytest.approx(0.75)
    assert score.precision == pytest.approx(0.75)
    assert score.median_position_error == pytest.approx(1.0)
    assert score.median_angular_error == pytest.approx(4.0, abs=1e-4)
    assert score.median_defocus_error == pytest.approx(50.0)
    assert sorted(score.pairs["truth_index"]) == [0, 1, 2]


def test_pairs_beyond_the_distance_do_not_count():
    truth = _truth()
    found = truth.copy()
    found["x"] += 12.0
    assert match_to_truth(found, truth, max_distance=10.0).n_matched == 0
    assert match_to_truth(found, truth, max_distance=13.0).n_matched == 4


def test_assignment_is_one_to_one():
    truth = _truth().iloc[:1]
    found = pd.concat([truth, truth.assign(x=truth["x"] + 1.0)], ignore_index=True)
    score = match_to_truth(found, truth, max_distance=5.0)
    assert score.n_matched == 1
    assert score.precision == pytest.approx(0.5)
    assert score.median_position_error == pytest.approx(0.0)


def test_angular_error_respects_symmetry():
    truth = _truth()
    ops = symmetry_operators("O")
    rotations = euler_to_matrix(torch.tensor(truth[["phi", "theta", "psi"]].to_numpy()))
    equivalent = matrix_to_euler(ops[5] @ rotations).numpy()
    found = truth.copy()
    found[["phi", "theta", "psi"]] = equivalent
    assert match_to_truth(found, truth, 5.0, "O").median_angular_error < 1e-3
    assert match_to_truth(found, truth, 5.0, "C1").median_angular_error > 30.0


def test_score_curve_trades_recall_for_precision():
    truth = _truth()
    found = pd.concat(
        [
            truth.assign(zscore=[10.0, 9.0, 8.0, 7.0]),
            pd.DataFrame(
                {"x": [900.0, 950.0], "y": [900.0, 10.0], "zscore": [8.5, 6.0]}
            ),
        ],
        ignore_index=True,
    )
    curve = score_curve(found, truth, 5.0, np.array([6.0, 7.5, 9.5]))
    np.testing.assert_allclose(curve["recall"], [1.0, 0.75, 0.25])
    np.testing.assert_allclose(curve["precision"], [4 / 6, 3 / 4, 1.0])


def test_symmetry_equivalent_poses_project_identically():
    # the demo map is octahedral: R and S @ R must give the same projection,
    # which is why the symmetry acts on the left in the angular error
    volume, _ = demo_volume()
    inputs = _projector(volume)
    rotation = euler_to_matrix(torch.tensor([[30.0, 50.0, 70.0]], dtype=torch.float64))
    op = symmetry_operators("O")[7]
    same = project(inputs, torch.cat([rotation, op @ rotation, rotation @ op]), 1.0)
    norm = float(same[0].norm())
    assert float((same[1] - same[0]).norm()) < 0.01 * norm
    assert float((same[2] - same[0]).norm()) > 0.1 * norm
