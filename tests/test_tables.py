"""Particle tables: STAR (RELION names, optics block) and CSV round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from twodtm.ctf import Optics
from twodtm.errors import InputFileError
from twodtm.io.tables import (
    coordinate_file_name,
    read_particles,
    write_coordinates,
    write_particles,
    write_star_table,
)

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


def test_coordinate_file_is_one_block_of_what_relion_extraction_reads(tmp_path):
    table = _table().assign(x=[10.4, 200.5], y=[30.6, 40.25])
    original = table.copy()
    coordinates, listing = write_coordinates(table, tmp_path, "Movies/mic_001.mrc")
    pd.testing.assert_frame_equal(table, original)  # input untouched
    assert coordinates == tmp_path / "mic_001_twodtm.star"
    text = coordinates.read_text()
    assert text.count("data_") == 1 and "\ndata_\n" in text  # one unnamed block
    blocks = starfile.read(coordinates, always_dict=True)
    [block] = blocks.values()
    assert list(block.columns) == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnAutopickFigureOfMerit",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
    ]  # no CTF columns: RELION 3.1 aborts on them in a coordinate file
    # Nearest pixel (RELION truncates fractions; 200.5 rounds up, never to even).
    assert list(block["rlnCoordinateX"]) == [10.0, 201.0]
    assert list(block["rlnCoordinateY"]) == [31.0, 40.0]
    assert list(block["rlnAnglePsi"]) == [45.0, 0.5]
    assert list(block["rlnAutopickFigureOfMerit"]) == [8.5, 12.25]
    # RELION 4/5 --coord_list: micrograph name -> coordinate file.
    assert listing == tmp_path / "coordinates.star"
    assert "data_coordinate_files" in listing.read_text()
    [files] = starfile.read(listing, always_dict=True).values()
    assert list(files["rlnMicrographName"]) == ["Movies/mic_001.mrc"]
    assert list(files["rlnMicrographCoordinates"]) == [str(coordinates)]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_coordinate_file_of_no_particles_has_the_columns(tmp_path):
    empty = _table().iloc[:0][["x", "y", "zscore"]]
    coordinates, _ = write_coordinates(empty, tmp_path, "mic.mrc", suffix="picks")
    assert coordinates.name == "mic_picks.star"
    text = coordinates.read_text()
    assert "_rlnCoordinateX" in text and "_rlnAutopickFigureOfMerit" in text


@pytest.mark.parametrize(
    ("micrograph", "name"),
    [("mic.mrc", "mic_twodtm.star"), ("/data/a.b.tiff", "a.b_twodtm.star")],
)
def test_coordinate_file_name_is_relions(micrograph, name):
    # RELION looks for <coord_dir>/<micrograph without extension><suffix>.
    assert coordinate_file_name(micrograph) == name
