"""Particle tables: STAR (RELION names, optics block) and CSV round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from twodtm.ctf import Optics
from twodtm.errors import InputFileError
from twodtm.io.tables import read_particles, write_particles, write_star_table

OPTICS = Optics(
    pixel_size=1.5, defocus_u=12000.0, defocus_v=11000.0, astigmatism_angle=30.0
)


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [10.0, 200.5],
            "y": [30.0, 40.25],
            "phi": [10.0, 350.0],
            "theta": [90.0, 5.0],
            "psi": [45.0, 0.5],
            "defocus": [11500.0, 11700.0],
            "zscore": [8.5, 12.25],
        }
    )


def test_star_uses_relion_names_and_carries_optics(tmp_path):
    star, csv = write_particles(_table(), tmp_path, "mic.mrc", OPTICS)
    blocks = starfile.read(star, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    assert optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(1.5)
    assert optics["rlnVoltage"].iloc[0] == pytest.approx(300.0)
    assert list(particles["rlnCoordinateX"]) == [10.0, 200.5]
    assert list(particles["rlnAnglePsi"]) == [45.0, 0.5]
    assert list(particles["rlnAutopickFigureOfMerit"]) == [8.5, 12.25]
    # astigmatism of the optics around each particle's mean defocus
    assert list(particles["rlnDefocusU"]) == [12000.0, 12200.0]
    assert list(particles["rlnDefocusV"]) == [11000.0, 11200.0]
    assert list(particles["rlnDefocusAngle"]) == [30.0, 30.0]
    assert set(particles["rlnMicrographName"]) == {"mic.mrc"}
    assert csv.name == "particles.csv"
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("name", ["particles.star", "particles.csv"])
def test_round_trip_keeps_values(tmp_path, name):
    write_particles(_table(), tmp_path, "mic.mrc", OPTICS)
    back = read_particles(tmp_path / name)
    for column in ("x", "y", "phi", "theta", "psi", "zscore", "defocus"):
        np.testing.assert_allclose(back[column], _table()[column], rtol=1e-6)
    np.testing.assert_allclose(back["defocus_u"] - back["defocus_v"], [1000.0, 1000.0])


def test_reads_relion_star_from_other_programs(tmp_path):
    path = tmp_path / "autopick.star"
    path.write_text(
        "\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
        "_rlnAutopickFigureOfMerit #3\n_rlnDefocusU #4\n_rlnDefocusV #5\n"
        "  100.0  200.0  1.5  10000.0  9000.0\n  300.0  50.0  0.7  10000.0  9000.0\n"
    )
    table = read_particles(path)
    assert list(table["x"]) == [100.0, 300.0]
    assert list(table["y"]) == [200.0, 50.0]
    assert list(table["zscore"]) == [1.5, 0.7]
    assert list(table["defocus"]) == [9500.0, 9500.0]


def test_truth_table_without_optics_round_trips(tmp_path):
    table = _table().drop(columns=["zscore"])
    write_star_table(table, tmp_path / "truth.star")
    back = read_particles(tmp_path / "truth.star")
    np.testing.assert_allclose(back["defocus"], table["defocus"])
    np.testing.assert_allclose(back["theta"], table["theta"])


def test_missing_or_coordinate_free_files_name_the_problem(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        read_particles(tmp_path / "none.star")
    bad = tmp_path / "bad.star"
    bad.write_text("data_\n\nloop_\n_rlnVoltage #1\n300\n")
    with pytest.raises(InputFileError, match="rlnCoordinateX"):
        read_particles(bad)
