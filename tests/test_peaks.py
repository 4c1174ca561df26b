"""Peak picking: threshold formula, suppression, borders, table values, files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from _scale_data import small_config
from twodtm.cli import app
from twodtm.errors import ConfigError, InputFileError
from twodtm.io.results import (
    MAP_NAMES,
    MatchMetadata,
    MatchResult,
    SearchSpaceSummary,
)
from twodtm.io.tables import read_particles
from twodtm.picking import PeakSettings, find_peaks, read_peak_record
from twodtm.programs.match import run_match
from twodtm.programs.peaks import pick_and_write, remove_picks
from twodtm.progress import ProgressReporter
from twodtm.significance import family_pvalue, threshold_for_false_positives

SHAPE = (200, 240)


@pytest.mark.parametrize(
    ("n", "fp"), [(1e4, 1.0), (1e10, 1.0), (5e12, 3.0), (1e6, 10.0)]
)
def test_threshold_matches_the_normal_quantile(n, fp):
    # sqrt(2) erfcinv(2 fp / N) is the normal upper quantile of fp / N
    assert threshold_for_false_positives(n, fp) == pytest.approx(stats.norm.isf(fp / n))


def test_threshold_known_value_and_bad_rates():
    assert threshold_for_false_positives(1e10) == pytest.approx(6.3613409, abs=1e-6)
    with pytest.raises(ConfigError, match="false_positives"):
        threshold_for_false_positives(100.0, 0.0)
    with pytest.raises(ConfigError, match="n_trials"):
        threshold_for_false_positives(0.0)


def test_family_pvalue_matches_the_direct_formula():
    z = np.array([1.0, 2.0, 3.0])
    direct = 1.0 - (1.0 - stats.norm.sf(z)) ** 50
    np.testing.assert_allclose(family_pvalue(z, 50.0), direct, rtol=1e-10)
    # and stays accurate where the direct formula underflows to 0
    assert family_pvalue(np.array([9.0]), 1e10)[0] == pytest.approx(
        1e10 * stats.norm.sf(9.0), rel=1e-6
    )


def _result(zscore: np.ndarray, correlations: int = 1000) -> MatchResult:
    maps = {name: np.zeros(zscore.shape, np.float32) for name in MAP_NAMES}
    rows, cols = np.indices(zscore.shape)
    maps.update(
        zscore=zscore.astype(np.float32),
        mip=(0.1 * zscore).astype(np.float32),
        phi=(cols % 360).astype(np.float32),
        theta=(rows % 180).astype(np.float32),
        psi=np.full(zscore.shape, 7.0, np.float32),
        defocus=(10000.0 + cols).astype(np.float32),
        pixel_size=np.full(zscore.shape, 1.5, np.float32),
        std=np.full(zscore.shape, 0.01, np.float32),
    )
    metadata = MatchMetadata(
        config={
            "micrograph": "micrograph.mrc",
            "template": "template.mrc",
            "optics": {
                "pixel_size": 1.5,
                "defocus_u": 10200.0,
                "defocus_v": 9800.0,
                "astigmatism_angle": 15.0,
            },
        },
        search_space=SearchSpaceSummary(correlations, 1, 1, correlations),
        image_shape=zscore.shape,
    )
    return MatchResult(maps=maps, pixel_size=1.5, metadata=metadata)


def _blob(shape, centre, height, sigma):
    rows, cols = np.indices(shape)
    r2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    return height * np.exp(-r2 / (2 * sigma**2))


def _particle(shape, centre, height=30.0):
    """A strong particle: a wide peak with ripples above threshold around it."""
    rows, cols = np.indices(shape)
    r = np.hypot(rows - centre[0], cols - centre[1])
    ripples = 0.45 * height * np.cos(r / 3.0) ** 2 * np.exp(-r / 30.0)
    return _blob(shape, centre, height, 3.0) + ripples


def test_one_strong_particle_gives_exactly_one_peak():
    z = _particle(SHAPE, (100, 120))
    result = _result(z)
    peaks = find_peaks(result, PeakSettings(zscore=7.0), template_size=48)
    assert len(peaks) == 1
    assert (peaks["x"].iloc[0], peaks["y"].iloc[0]) == (120.0, 100.0)
    # Leopard-EM's 5 px suppression leaves the ripples as extra peaks
    assert len(find_peaks(result, PeakSettings(zscore=7.0, min_distance=5), 48)) > 3


def test_peaks_are_separated_ordered_and_inside_the_border():
    z = (
        _blob(SHAPE, (50, 60), 12.0, 2.0)
        + _blob(SHAPE, (50, 90), 10.0, 2.0)  # 30 px from the first
        + _blob(SHAPE, (150, 200), 9.0, 2.0)
        + _blob(SHAPE, (100, 3), 15.0, 2.0)  # at the left edge
    )
    result = _result(z)
    peaks = find_peaks(result, PeakSettings(zscore=8.0), template_size=40)
    assert list(zip(peaks["x"], peaks["y"], strict=True)) == [
        (60.0, 50.0),
        (90.0, 50.0),
        (200.0, 150.0),
    ]
    merged = find_peaks(result, PeakSettings(zscore=8.0, min_distance=31), 40)
    assert list(merged["x"]) == [60.0, 200.0]
    no_border = find_peaks(result, PeakSettings(zscore=8.0, border=0), 40)
    assert no_border["x"].iloc[0] == 3.0


def test_table_values_come_from_the_maps_at_each_peak():
    z = _blob(SHAPE, (70, 110), 12.0, 2.0)
    peaks = find_peaks(_result(z, correlations=500), PeakSettings(), template_size=32)
    assert len(peaks) == 1
    row = peaks.iloc[0]
    assert (row["x"], row["y"]) == (110.0, 70.0)
    assert (row["x_angstrom"], row["y_angstrom"]) == (165.0, 105.0)
    assert (row["phi"], row["theta"], row["psi"]) == (110.0, 70.0, 7.0)
    assert row["defocus"] == 10110.0
    assert (row["defocus_u"], row["defocus_v"], row["defocus_angle"]) == (
        10310.0,
        9910.0,
        15.0,
    )
    assert row["zscore"] == pytest.approx(12.0)
    assert row["mip"] == pytest.approx(1.2)
    n = 500 * SHAPE[0] * SHAPE[1]
    assert row["pvalue"] == pytest.approx(n * stats.norm.sf(12.0), rel=1e-4)
    # the global search's number of trials travels with the row (refine reuses it)
    assert row["n_trials"] == n


def test_default_threshold_follows_the_false_positive_rate():
    threshold = stats.norm.isf(1.0 / (SHAPE[0] * SHAPE[1] * 1000))  # 5.33
    z = _blob(SHAPE, (70, 110), threshold - 0.1, 2.0)
    z = z + _blob(SHAPE, (140, 60), threshold + 0.1, 2.0)
    result = _result(z)
    assert list(find_peaks(result, PeakSettings(), 32)["x"]) == [60.0]
    assert len(find_peaks(result, PeakSettings(false_positives=1e4), 32)) == 2


def test_pick_and_write_reads_result_json(tmp_path):
    z = _blob(SHAPE, (70, 110), 12.0, 2.0) + _blob(SHAPE, (150, 180), 10.0, 2.0)
    result = _result(z)
    result.metadata = replace(result.metadata, template_size=32)
    result.save(tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["template_size"] == 32
    peaks = pick_and_write(tmp_path, PeakSettings())
    assert len(peaks) == 2
    table = read_particles(tmp_path / "particles.star")
    np.testing.assert_allclose(table["x"], [110.0, 180.0])
    np.testing.assert_allclose(table["zscore"], peaks["zscore"], rtol=1e-6)
    csv = read_particles(tmp_path / "particles.csv")
    np.testing.assert_allclose(csv["pvalue"], peaks["pvalue"], rtol=1e-5)
    # the CSV (which refine reads in full) keeps the search's number of trials
    n_trials = 1000.0 * SHAPE[0] * SHAPE[1]
    np.testing.assert_allclose(csv["n_trials"], [n_trials, n_trials], rtol=1e-5)


def test_peaks_command_writes_tables_and_rejects_bad_rates(tmp_path):
    result = _result(_blob(SHAPE, (70, 110), 12.0, 2.0))
    result.metadata = replace(result.metadata, template_size=32)
    result.save(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["peaks", str(tmp_path), "--min-distance", "10"])
    assert done.exit_code == 0, done.output
    assert list(read_particles(tmp_path / "particles.star")["x"]) == [110.0]
    bad = runner.invoke(app, ["peaks", str(tmp_path), "--false-positives", "0"])
    assert bad.exit_code != 0


def test_pick_and_write_records_the_settings_used(tmp_path):
    z = _blob(SHAPE, (70, 110), 12.0, 2.0) + _blob(SHAPE, (150, 180), 10.0, 2.0)
    result = _result(z)
    result.metadata = replace(result.metadata, template_size=32)
    result.save(tmp_path)
    assert read_peak_record(tmp_path) is None
    peaks = pick_and_write(tmp_path, PeakSettings(false_positives=5.0))
    record = read_peak_record(tmp_path)
    n_trials = 1000 * SHAPE[0] * SHAPE[1]
    assert record is not None
    assert record.threshold == pytest.approx(stats.norm.isf(5.0 / n_trials))
    assert record.threshold < stats.norm.isf(1.0 / n_trials) - 0.1
    assert record.settings == PeakSettings(false_positives=5.0)
    assert not record.fixed_threshold
    assert (record.n_trials, record.n_pixels) == (n_trials, SHAPE[0] * SHAPE[1])
    assert (record.min_distance, record.border, record.template_size) == (16.0, 16, 32)
    assert record.n_peaks == len(peaks) == 2
    # the file a user reads holds the same number
    saved = json.loads((tmp_path / "peaks.json").read_text())
    assert saved["threshold"] == pytest.approx(record.threshold)
    pick_and_write(tmp_path, PeakSettings(zscore=11.0, border=3))
    fixed = read_peak_record(tmp_path)
    assert fixed is not None
    assert (fixed.threshold, fixed.border, fixed.n_peaks) == (11.0, 3, 1)
    assert fixed.fixed_threshold


def test_a_damaged_peak_record_names_the_fix(tmp_path):
    (tmp_path / "peaks.json").write_text('{"settings": {}}')
    with pytest.raises(InputFileError, match="twodtm peaks"):
        read_peak_record(tmp_path)


def test_remove_picks_takes_what_write_picks_wrote_and_nothing_else(tmp_path):
    z = _blob(SHAPE, (70, 110), 12.0, 2.0)
    result = _result(z)
    result.metadata = replace(result.metadata, template_size=32)
    result.save(tmp_path)
    pick_and_write(tmp_path, PeakSettings(), micrograph_name="mic_007.mrc")
    (tmp_path / "notes.txt").write_text("mine")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "mic_007_twodtm.star" in written and "peaks.json" in written
    removed = remove_picks(tmp_path)
    assert sorted(removed) == sorted(
        set(written) - {"notes.txt", "result.json"} - {f"{n}.mrc" for n in MAP_NAMES}
    )
    assert (tmp_path / "notes.txt").is_file() and (tmp_path / "result.json").is_file()
    assert remove_picks(tmp_path) == []


def test_a_search_overwriting_a_result_removes_its_picks(tmp_path):
    config = small_config(tmp_path, out_of_plane_step=60.0)
    out = tmp_path / "out"
    run_match(config, out)
    pick_and_write(out, PeakSettings(zscore=1.0))  # low: some picks to go stale
    assert (out / "particles.star").is_file()
    notes: list[str] = []

    class Notes(ProgressReporter):
        def note(self, text: str) -> None:
            notes.append(text)

    run_match(config, out, overwrite=True, progress=Notes())
    assert not (out / "particles.star").exists()
    assert not (out / "peaks.json").exists()
    assert any("removed the picks" in n and "peaks.json" in n for n in notes)
