"""result.json: the typed record round-trips, old files load, damaged ones are named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from twodtm.errors import InputFileError
from twodtm.io.mrc import write_mrc
from twodtm.io.results import (
    MAP_NAMES,
    MatchMetadata,
    MatchResult,
    RunRecord,
    SearchSpaceSummary,
)

SHAPE = (12, 10)


def _config() -> dict[str, object]:
    return {
        "micrograph": "data/mic.mrc",
        "template": "data/template.mrc",
        "optics": {
            "pixel_size": 1.2,
            "voltage": 200.0,
            "spherical_aberration": 2.7,
            "amplitude_contrast": 0.1,
            "defocus_u": 15000.0,
            "defocus_v": 14000.0,
            "astigmatism_angle": 30.0,
            "phase_shift": 0.0,
            "ctf_b_factor": 0.0,
        },
        "orientation_search": {"symmetry": "O"},
    }


def _old_result(directory: Path, **changes: object) -> Path:
    """A result directory as the first release wrote it (no template_size)."""
    for name in MAP_NAMES:
        write_mrc(directory / f"{name}.mrc", np.zeros(SHAPE, np.float32), 1.2)
    doc = {
        "program": "match",
        "config": _config(),
        "config_yaml": "micrograph: data/mic.mrc\n",
        "search_space": {
            "orientations": 40,
            "defocus_values": 5,
            "pixel_sizes": 1,
            "correlations_per_pixel": 200,
        },
        "correlations_per_pixel": 200,
        "total_correlations": 200,  # the first release stored the per-pixel count
        "image_shape": list(SHAPE),
        "run_time_s": 4.0,
        "correlations_per_second": 50.0,
        "devices": ["cuda:0"],
        "versions": {"python": "3.11.9"},
        "pixel_size": 1.2,
    }
    doc.update(changes)
    doc = {k: v for k, v in doc.items() if v is not None}
    (directory / "result.json").write_text(json.dumps(doc))
    return directory


def test_the_record_round_trips_through_result_json(tmp_path: Path) -> None:
    meta = MatchMetadata(
        config=_config(),
        search_space=SearchSpaceSummary(40, 5, 1, 200),
        image_shape=SHAPE,
        run=RunRecord(4.0, ("cuda:0", "cuda:1"), {"torch": "2.5.1"}),
        config_yaml="micrograph: data/mic.mrc\n",
        template_size=64,
        replaced_pixels=3,
    )
    maps = {name: np.full(SHAPE, k, np.float32) for k, name in enumerate(MAP_NAMES)}
    MatchResult(maps, 1.2, meta).save(tmp_path)
    loaded = MatchResult.load(tmp_path)
    assert loaded.metadata == meta
    assert loaded.pixel_size == 1.2
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["total_correlations"] == 200 * 120
    assert saved["correlations_per_second"] == 50.0
    assert saved["template_size"] == 64
    assert saved["replaced_pixels"] == 3
    # the record is read through attributes that hold the config's values
    assert (loaded.metadata.micrograph, loaded.metadata.symmetry) == (
        "data/mic.mrc",
        "O",
    )
    assert loaded.metadata.optics.defocus_mean == 14500.0
    assert loaded.metadata.optics.voltage == 200.0


def test_a_result_of_the_first_release_loads_with_documented_defaults(
    tmp_path: Path,
) -> None:
    meta = MatchResult.load(_old_result(tmp_path)).metadata
    assert meta.template_size is None
    assert meta.replaced_pixels == 0
    assert meta.correlations_per_pixel == 200
    # derived from the sizes, not the old file's per-pixel "total"
    assert meta.total_correlations == 200 * SHAPE[0] * SHAPE[1]
    assert meta.run.devices == ("cuda:0",)
    assert meta.optics.astigmatism_angle == 30.0


def test_a_result_without_a_run_record_loads(tmp_path: Path) -> None:
    bare = _old_result(
        tmp_path, run_time_s=None, devices=None, versions=None, config_yaml=None
    )
    meta = MatchResult.load(bare).metadata
    assert math.isnan(meta.run.run_time_s)
    assert math.isnan(meta.correlations_per_second)
    assert (meta.run.devices, dict(meta.run.versions), meta.config_yaml) == ((), {}, "")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"search_space": None}, "'search_space'"),
        ({"image_shape": None}, "'image_shape'"),
        ({"config": None}, "'config'"),
        ({"pixel_size": None}, "'pixel_size'"),
        ({"config": {"template": "t.mrc", "optics": {}}}, "'micrograph'"),
        (
            {"config": {"micrograph": "m.mrc", "template": "t.mrc", "optics": {}}},
            "'pixel_size'",
        ),
        ({"search_space": {"orientations": 4}}, "'defocus_values'"),
        ({"image_shape": "12 x 10"}, "'image_shape'"),
    ],
)
def test_a_missing_required_field_is_named(
    tmp_path: Path, changes: dict[str, object], named: str
) -> None:
    with pytest.raises(InputFileError, match=named) as caught:
        MatchResult.load(_old_result(tmp_path, **changes))
    assert "result.json" in str(caught.value)
