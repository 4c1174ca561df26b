"""``twodtm.programs.benchmark.time_engine`` and ``twodtm bench`` on tiny inputs."""

import json

import pytest
from typer.testing import CliRunner

from twodtm.cli import app
from twodtm.cli.bench_cmd import parse_image_size
from twodtm.errors import ConfigError
from twodtm.programs.benchmark import EngineOptions, time_engine
from twodtm.search.clock import STAGES


def test_time_engine_counts_correlations_and_compares_with_the_floor():
    record = time_engine(
        image_shape=(64, 80),
        template_size=16,
        n_orientations=5,
        n_defocus=3,
        n_pixel_sizes=2,
        options=EngineOptions(batch_size=2, fused=False),
    )
    assert record["correlations"] == 5 * 3 * 2
    rate = record["correlations_per_second"]
    assert rate == pytest.approx(30 / record["seconds"])
    assert record["floor_ratio"] == pytest.approx(record["fft_floor_per_second"] / rate)
    assert set(record["stage_ms_per_correlation"]) == set(STAGES)
    assert all(v > 0 for v in record["stage_ms_per_correlation"].values())
    assert record["padded_shape"] == [64, 80] and record["peak_memory_bytes"] > 2**20


def test_bench_cli_prints_json():
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--image-size",
            "48x64",
            "--template-size",
            "16",
            "--orientations",
            "2",
            "--defocus",
            "2",
            "--no-fused",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["image_shape"] == [48, 64] and record["correlations"] == 4
    assert record["correlations_per_second"] > 0 and record["fft_floor_per_second"] > 0


def test_image_size_parsing():
    assert parse_image_size("4096") == (4096, 4096)
    assert parse_image_size("5760x4092") == (5760, 4092)
    for bad in ("12y", "4x4", "1x2x3", ""):
        with pytest.raises(ConfigError, match="--image-size"):
            parse_image_size(bad)
