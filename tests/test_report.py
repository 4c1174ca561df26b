"""The report: figures drawn where the tables say, images that decode, honest maths."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import norm
from typer.testing import CliRunner

from twodtm.cli import app, main
from twodtm.errors import InputFileError
from twodtm.io.mrc import write_mrc
from twodtm.io.results import (
    MAP_NAMES,
    MatchMetadata,
    MatchResult,
    RunRecord,
    SearchSpaceSummary,
)
from twodtm.io.tables import read_particles, write_star_table
from twodtm.picking import PeakSettings
from twodtm.programs.demo import SearchSettings, run_demo
from twodtm.programs.peaks import pick_and_write
from twodtm.report import (
    bin_image,
    display_binning,
    noise_counts,
    stretch_contrast,
    write_report,
)
from twodtm.simulate import SimulationParams

SHAPE = (128, 160)
BOX = 16
# (x, y) in pixels: x is the column, y the row.
PLANTED = np.array([[20, 30], [60, 25], [100, 40], [140, 90], [40, 100], [90, 80]])


def _planted_result(directory: Path, micrograph: bool = True) -> Path:
    """A result directory whose z-score map holds peaks at ``PLANTED``."""
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    zscore = rng.normal(3.0, 0.3, SHAPE)
    image = rng.normal(0.0, 1.0, SHAPE)
    for k, (x, y) in enumerate(PLANTED):
        blob = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 1.2**2))
        zscore += (9.0 + k) * blob
        image -= 2.0 * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 5.0**2))
    maps = {name: np.zeros(SHAPE, np.float32) for name in MAP_NAMES}
    maps["zscore"] = zscore.astype(np.float32)
    maps["mip"] = (0.02 * zscore).astype(np.float32)
    maps["defocus"] = np.full(SHAPE, 12000.0, np.float32)
    maps["defocus"][:, SHAPE[1] // 2 :] = 12200.0
    write_mrc(directory / "micrograph.mrc", image.astype(np.float32), 1.5)
    write_mrc(directory / "template.mrc", np.zeros((BOX,) * 3, np.float32), 1.5)
    name = directory / ("micrograph.mrc" if micrograph else "gone.mrc")
    metadata = MatchMetadata(
        config={
            "micrograph": str(name),
            "template": str(directory / "template.mrc"),
            "optics": {"pixel_size": 1.5, "defocus_u": 12100.0, "defocus_v": 12100.0},
        },
        search_space=SearchSpaceSummary(
            orientations=100,
            defocus_values=10,
            pixel_sizes=1,
            correlations_per_pixel=1000,
        ),
        image_shape=SHAPE,
        run=RunRecord(run_time_s=2.0, devices=("cpu",)),
        config_yaml="micrograph: micrograph.mrc\n",
    )
    return MatchResult(maps, 1.5, metadata).save(directory / "result")


def _decode_all(result: Path) -> dict[str, Image.Image]:
    images = {}
    for png in sorted(result.glob("*.png")):
        with Image.open(png) as im:
            im.load()
            images[png.name] = im.copy()
    return images


def _circle_set(circles: list[dict[str, float]]) -> set[tuple[float, float]]:
    return {(c["x"], c["y"]) for c in circles}


def test_bin_image_matches_direct_block_reduction() -> None:
    image = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    before = image.copy()
    mean = bin_image(image, 3)
    peak = bin_image(image, 3, "max")
    assert mean.shape == (2, 3)
    assert mean[1, 2] == pytest.approx(image[3:6, 6:9].mean())
    assert peak[1, 2] == image[5, 8]
    np.testing.assert_array_equal(image, before)
    assert display_binning((4096, 4096), 1024) == 4
    assert display_binning((1025, 100), 1024) == 2
    assert display_binning((512, 512), 1024) == 1


def test_stretch_contrast_maps_percentiles_to_unit_range() -> None:
    image = np.linspace(0.0, 100.0, 9999).reshape(101, 99)
    stretched = stretch_contrast(image, 10.0, 90.0)
    assert stretched.min() == 0.0
    assert stretched.max() == 1.0
    # The median of a uniform ramp sits half way between the 10th and 90th.
    assert float(np.median(stretched)) == pytest.approx(0.5, abs=1e-3)


def test_noise_counts_follow_the_maximum_of_gaussians() -> None:
    edges = np.array([-1.0, 0.0, 1.0, 2.5])
    single = noise_counts(edges, 1000, 1)
    np.testing.assert_allclose(single, 1000 * np.diff(norm.cdf(edges)), rtol=1e-10)
    triple = noise_counts(edges, 1000, 3)
    np.testing.assert_allclose(triple, 1000 * np.diff(norm.cdf(edges) ** 3), rtol=1e-10)
    # Far in the tail the maximum of N behaves like N independent tails.
    tail = noise_counts(np.array([7.0, 60.0]), 10, 10**9)
    assert tail[0] == pytest.approx(10 * 10**9 * norm.sf(7.0), rel=1e-3)


def test_report_circles_the_picked_peaks_and_embeds_decodable_images(
    tmp_path: Path,
) -> None:
    result = _planted_result(tmp_path)
    page = write_report(result)
    record = json.loads((result / "report.json").read_text())
    circles = record["pictures"]["micrograph.png"]["circles"]
    assert _circle_set(circles) == {(float(x), float(y)) for x, y in PLANTED}
    assert {c["radius"] for c in circles} == {BOX / 2}
    # The highest peak is labelled first.
    labelled = record["pictures"]["micrograph.png"]["labelled"]
    assert circles[labelled[0]] == {"x": 90.0, "y": 80.0, "radius": BOX / 2}
    images = _decode_all(result)
    wanted = {"micrograph.png", "zscore.png", "mip.png", "histogram.png", "defocus.png"}
    assert set(images) == wanted
    assert all(min(im.size) > 200 for im in images.values())
    text = page.read_text()
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(embedded) == len(wanted)
    for data in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.verify()
    assert "1,000 correlations per pixel" in text
    assert "twodtm report" in text


def test_report_scores_against_a_truth_table(tmp_path: Path) -> None:
    result = _planted_result(tmp_path)
    # Truth: the first five planted peaks and one place that holds nothing.
    truth = pd.DataFrame(
        np.vstack([PLANTED[:5], [[120, 20]]]).astype(float), columns=["x", "y"]
    )
    write_star_table(truth, tmp_path / "truth.star")
    write_report(result, truth=tmp_path / "truth.star")
    record = json.loads((result / "report.json").read_text())
    drawn = record["pictures"]["truth.png"]
    assert _circle_set(drawn["found"]) == {(float(x), float(y)) for x, y in PLANTED[:5]}
    assert _circle_set(drawn["false"]) == {tuple(map(float, PLANTED[5]))}
    assert _circle_set(drawn["missed"]) == {(120.0, 20.0)}
    assert record["truth"]["recall"] == pytest.approx(5 / 6)
    assert record["truth"]["precision"] == pytest.approx(5 / 6)
    assert "recall_precision.png" in _decode_all(result)


def test_given_particles_are_drawn_and_left_unchanged(tmp_path: Path) -> None:
    result = _planted_result(tmp_path, micrograph=False)
    particles = pd.DataFrame({"x": [33.0, 77.0], "y": [44.0, 55.0]})
    before = particles.copy()
    write_report(result, particles=particles)
    pd.testing.assert_frame_equal(particles, before)
    record = json.loads((result / "report.json").read_text())
    circles = record["pictures"]["micrograph.png"]["circles"]
    assert _circle_set(circles) == {(33.0, 44.0), (77.0, 55.0)}
    assert record["particles_source"] == "given by the caller"
    assert any("z-score map" in note for note in record["notes"])


def test_report_of_a_missing_result_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="twodtm match"):
        write_report(tmp_path)
    result = _planted_result(tmp_path)
    with pytest.raises(InputFileError, match="truth"):
        write_report(result, truth=tmp_path / "nope.star")


def test_report_command_writes_the_page_and_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _planted_result(tmp_path)
    outcome = CliRunner().invoke(app, ["report", str(result)])
    assert outcome.exit_code == 0, outcome.output
    assert (result / "report.html").stat().st_size > 10_000
    monkeypatch.setattr("sys.argv", ["twodtm", "report", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2


def test_demo_report_circles_the_particle_table(tmp_path: Path) -> None:
    params = SimulationParams(image_shape=(160, 192), n_particles=3, dose=40.0, seed=5)
    search = SearchSettings(in_plane_step=20.0, out_of_plane_step=20.0)
    score = run_demo(tmp_path, report=True, params=params, search=search)
    result = tmp_path / "result"
    assert (result / "report.html").is_file()
    images = _decode_all(result)
    assert {"micrograph.png", "histogram.png", "truth.png"} <= set(images)
    record = json.loads((result / "report.json").read_text())
    table = read_particles(result / "particles.star")
    circles = record["pictures"]["micrograph.png"]["circles"]
    assert [(c["x"], c["y"]) for c in circles] == list(
        zip(table["x"].astype(float), table["y"].astype(float), strict=True)
    )
    truth = record["pictures"]["truth.png"]
    assert len(truth["found"]) == score.n_matched
    assert len(truth["missed"]) == score.n_truth - score.n_matched
    assert len(truth["false"]) == score.n_found - score.n_matched


def _threshold_row(page: Path) -> str:
    found = re.search(r"<th>z-score threshold</th><td>([^<]*)</td>", page.read_text())
    assert found is not None
    return html.unescape(found.group(1))


def test_report_states_the_threshold_the_picks_were_made_with(tmp_path: Path) -> None:
    result = _planted_result(tmp_path)
    n_trials = 1000 * SHAPE[0] * SHAPE[1]
    one, five = norm.isf(1.0 / n_trials), norm.isf(5.0 / n_trials)  # 5.49, 5.05
    assert f"{one:.2f}" != f"{five:.2f}"
    # Tables without peaks.json: the 1-false-positive default, labelled as such.
    table = pd.DataFrame({"x": [90.0], "y": [80.0], "zscore": [14.0]})
    write_star_table(table, result / "particles.star")
    write_report(result)
    record = json.loads((result / "report.json").read_text())
    assert record["threshold"] == pytest.approx(one)
    assert "the default: no peaks.json" in record["threshold_source"]
    assert _threshold_row(result / "report.html").startswith(f"{one:.2f} (1 expected")
    # Picked at 5 false positives: the report states and draws that threshold.
    pick_and_write(result, PeakSettings(false_positives=5.0))
    page = write_report(result)
    record = json.loads((result / "report.json").read_text())
    assert record["threshold"] == pytest.approx(five)
    assert "peaks.json" in record["threshold_source"]
    row = _threshold_row(page)
    assert row.startswith(f"{five:.2f} (5 expected false positives")
    assert f"{one:.2f}" not in row
    line = record["pictures"]["histogram.png"]["threshold"]
    assert line["z"] == pytest.approx(five)
    assert line["label"].startswith(f"threshold z = {five:.2f} ")
