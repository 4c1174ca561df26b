"""A search's size before the work: orientations counted without the grid, memory,
a calibrated time; searches too large stop unless confirmed; STAR files without
per-micrograph CTF are refused.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import starfile
import torch

import twodtm.programs._match_size
import twodtm.programs._match_task
from _scale_data import small_config
from twodtm.cli import main
from twodtm.config import MatchConfig, dump_yaml, parse_config
from twodtm.errors import InputFileError, SearchTooLargeError
from twodtm.orientations import orientation_grid
from twodtm.programs._match_size import size_search
from twodtm.programs._match_task import prepare_task
from twodtm.programs.batch import (
    MissingCtfWarning,
    list_micrographs,
    read_star_micrographs,
)
from twodtm.programs.match import build_search_space, load_inputs, match_template
from twodtm.progress import PlainProgress
from twodtm.search._transforms import workspace
from twodtm.search.executors import InProcessExecutor
from twodtm.search.size import SearchSize, check_size, count_orientations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("base_grid", ["uniform", "healpix"])
@pytest.mark.parametrize("symmetry", ["C1", "C3", "D7", "T", "O", "I"])
@pytest.mark.parametrize(("in_plane", "out_of_plane"), [(1.5, 2.5), (7.0, 13.0)])
def test_orientation_count_equals_the_grid_built(
    base_grid, symmetry, in_plane, out_of_plane
):
    built = orientation_grid(in_plane, out_of_plane, symmetry, base_grid)
    counted = count_orientations(in_plane, out_of_plane, symmetry, base_grid)
    assert counted == built.shape[0]


def test_count_of_a_typo_is_instant_and_close_to_the_sphere_formula():
    # 41,253 deg^2 of sphere / 2.5^2 views x 360 / 0.001 in-plane angles
    expected = 41_252.96 / 2.5**2 * 360 / 0.001
    assert count_orientations(0.001, 2.5) == pytest.approx(expected, rel=0.01)
    # past two million rows of theta the count is the closed-form limit
    rows = count_orientations(360.0, 1e-5)
    assert rows == pytest.approx(41_252.96 / 1e-10, rel=1e-3)


def _size(**changes: object) -> SearchSize:
    fields: dict = {
        "n_orientations": 1_000_000,
        "n_defocus": 13,
        "n_pixel_sizes": 1,
        "image_shape": (4096, 4096),
        "host_bytes": 2 * 1024**3,
        "device_bytes": 10 * 1024**3,
        "available_host": 64 * 1024**3,
        "available_device": 80 * 1024**3,
        "workers_per_host": 0,
        "seconds_per_orientation": 0.01,
        "parallel": 2,
        "device": "cuda:0",
    }
    return SearchSize(**(fields | changes))


def test_size_arithmetic_and_description():
    size = _size()
    assert size.correlations_per_pixel == 13_000_000
    assert size.correlations == 13_000_000 * 4096 * 4096
    assert size.estimated_seconds == pytest.approx(5000.0)  # 1e6 x 10 ms / 2 GPUs
    lines = size.describe().splitlines()
    assert lines[0] == (
        "match size: 1,000,000 orientations x 13 planes (13 defocus x 1 pixel "
        "sizes) = 13,000,000 correlations per pixel, 2.18e+14 in all over "
        "4096x4096 px"
    )
    assert lines[1] == (
        "match memory: about 2 GB on the host (64 GB available), 10 GB per device "
        "(80 GB free)"
    )
    assert lines[2] == (
        "match time: about 1:23:20 on 2 devices (10 ms per orientation on cuda:0, "
        "from a calibration)"
    )
    assert size.problems(max_hours=48.0) == []


def test_problems_name_time_and_memory():
    slow = _size(seconds_per_orientation=1.0, parallel=1)  # 1e6 s = 11.6 days
    (problem,) = slow.problems(max_hours=48.0)
    assert "11 d 13:46:40" in problem and "compute.max_hours (48 h)" in problem
    with pytest.raises(SearchTooLargeError, match="confirm_long_run"):
        check_size(slow, 48.0, confirmed=False)
    check_size(slow, 48.0, confirmed=True)  # confirmed: no error

    on_cpu = _size(
        workers_per_host=4, available_device=None, available_host=20 * 1024**3
    )
    (problem,) = on_cpu.problems(max_hours=48.0)  # 2 + 4 x 10 GB > 20 GB
    assert "42 GB of host memory and 20 GB is available" in problem
    small_gpu = _size(available_device=8 * 1024**3)
    assert small_gpu.problems(48.0) == [
        "it needs about 10 GB per device and 8 GB is free"
    ]


def test_memory_estimate_bounds_the_engine_tensors(tmp_path):
    config = small_config(tmp_path)
    inputs = load_inputs(config)
    with InProcessExecutor("cpu") as executor:
        size, task = size_search(config, inputs, executor)
    assert task is not None
    engine = task.inputs
    tensors = [
        engine.template_dft,
        engine.filtered_image,
        engine.norm_weights,
        engine.norm_kernels,
        engine.paired_image,
        *vars(workspace(engine)).values(),
    ]
    held = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    pixels = 64 * 64
    held += 28 * pixels  # the device statistics: float32, int64, 2 x float64
    assert held <= size.device_bytes <= 8 * held
    assert size.n_orientations == build_search_space(config).n_orientations
    assert size.seconds_per_orientation > 0


def test_typo_in_the_step_stops_before_the_grid_is_built(tmp_path, monkeypatch):
    data = small_config(tmp_path).model_dump(mode="json")
    data["orientation_search"] = {"in_plane_step": 0.001, "out_of_plane_step": 30.0}
    data["compute"]["max_hours"] = 0.01  # 36 s: any machine needs more
    data["compute"]["fused_statistics"] = False  # no compile in the calibration
    config = parse_config(MatchConfig, data)

    def never(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the grid was built")

    monkeypatch.setattr(twodtm.programs._match_task, "orientation_grid", never)
    out = io.StringIO()
    with pytest.raises(SearchTooLargeError) as info:
        match_template(config, PlainProgress(out))
    n = count_orientations(0.001, 30.0)
    assert f"search of {n:,} orientations x 3 planes" in str(info.value)
    assert "more than compute.max_hours (0.01 h)" in str(info.value)
    assert f"match size: {n:,} orientations x 3 planes" in out.getvalue()


def test_too_little_memory_stops_unless_confirmed(tmp_path, monkeypatch):
    config = small_config(tmp_path)
    monkeypatch.setattr(
        twodtm.programs._match_size, "available_bytes", lambda device: 1024**2
    )
    with pytest.raises(SearchTooLargeError, match="host memory and 1 MB is available"):
        match_template(config)
    data = config.model_dump(mode="json")
    data["compute"]["confirm_long_run"] = True
    confirmed = match_template(parse_config(MatchConfig, data))
    assert confirmed.metadata.search_space.orientations == count_orientations(
        20.0, 30.0
    )


def test_the_calibrated_task_serves_the_search_bit_for_bit(tmp_path):
    config = small_config(tmp_path)
    inputs = load_inputs(config)
    space = build_search_space(config)
    with InProcessExecutor("cpu") as executor:
        _, calibrated = size_search(config, inputs, executor)
    fresh = prepare_task(config, inputs, space, torch.device("cpu"))
    assert calibrated is not None
    assert calibrated.batch_size == fresh.batch_size
    assert calibrated.inputs.fused == fresh.inputs.fused
    assert torch.equal(calibrated.inputs.filtered_image, fresh.inputs.filtered_image)


# --- micrographs STAR without per-micrograph CTF ------------------------------------


def _star(root: Path, columns: dict[str, list[float]]) -> Path:
    table = pd.DataFrame({"rlnMicrographName": ["a.mrc", "b.mrc"], **columns})
    path = root / "micrographs.star"
    starfile.write(table, path)
    return path


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({}, "rlnDefocusU, rlnDefocusV, rlnDefocusAngle"),
        ({"rlnDefocusU": [9e3, 1e4], "rlnDefocusV": [9e3, 1e4]}, "rlnDefocusAngle"),
    ],
)
def test_star_without_ctf_columns_is_refused_naming_them(tmp_path, present, missing):
    star = _star(tmp_path, present)
    with pytest.raises(InputFileError) as info:
        list_micrographs(str(star))
    assert f"lacks the column(s) {missing}." in str(info.value)
    assert str(star) in str(info.value)


def test_star_without_ctf_is_warned_about_when_allowed(tmp_path):
    star = _star(tmp_path, {})
    with pytest.warns(MissingCtfWarning, match="EVERY micrograph") as caught:
        entries = read_star_micrographs(star, use_config_ctf=True)
    assert "rlnDefocusU, rlnDefocusV, rlnDefocusAngle" in str(caught[0].message)
    assert [e.optics for e in entries] == [{}, {}]  # the config's optics apply
    full = {"rlnDefocusU": [9e3, 1e4], "rlnDefocusV": [8e3, 9e3]}
    full["rlnDefocusAngle"] = [5.0, 6.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = read_star_micrographs(_star(tmp_path, full))
    assert entries[1].optics == {
        "defocus_u": 1e4,
        "defocus_v": 9e3,
        "astigmatism_angle": 6.0,
    }


def test_cli_refuses_a_star_without_ctf(tmp_path, monkeypatch, capsys):
    config = small_config(tmp_path)
    path = tmp_path / "match.yaml"
    path.write_text(dump_yaml(config))
    star = _star(tmp_path, {"rlnDefocusU": [9e3, 1e4]})
    monkeypatch.setattr(sys, "argv", ["twodtm", "match", str(path)])
    sys.argv += ["--micrographs", str(star)]
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "lacks the column(s) rlnDefocusV, rlnDefocusAngle" in err
    assert not (tmp_path / "out").exists()
