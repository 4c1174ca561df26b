"""End to end: a planted particle is found at its position, orientation and defocus."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from _scale_data import small_config
from twodtm.cli import app
from twodtm.cli.config_cmd import example_text
from twodtm.config import MatchConfig, dump_yaml, load_match_config, parse_config
from twodtm.ctf import Optics, ctf_stack
from twodtm.errors import ConfigError, InputFileError
from twodtm.io import results as results_module
from twodtm.io.mrc import write_mrc
from twodtm.io.results import MAP_NAMES, MatchResult
from twodtm.orientations import angular_distance, euler_to_matrix
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.programs import match as match_program
from twodtm.programs.match import build_search_space, match_template
from twodtm.search.inputs import build_search_inputs
from twodtm.search.projection import padded_dft, project

SHAPE = (112, 128)
TRUE_XY = (70, 45)  # column, row
TRUE_DEFOCUS_OFFSET = 400.0


def _config_dict(tmp_path) -> dict:
    return {
        "micrograph": str(tmp_path / "micrograph.mrc"),
        "template": str(tmp_path / "template.mrc"),
        "optics": {"pixel_size": 1.0, "defocus_u": 9000.0, "defocus_v": 9000.0},
        "defocus_search": {"min": -400.0, "max": 400.0, "step": 400.0},
        "orientation_search": {"in_plane_step": 30.0, "out_of_plane_step": 30.0},
        "compute": {"batch_size": 8},
        "output": {"directory": str(tmp_path / "result")},
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory, sharp_blob):
    blob = sharp_blob
    """A micrograph with one particle at a grid orientation, in white noise."""
    tmp_path = tmp_path_factory.mktemp("planted")
    config = parse_config(MatchConfig, _config_dict(tmp_path))
    space = build_search_space(config)
    true_orientation = space.n_orientations // 3
    optics = Optics(pixel_size=1.0, defocus_u=9000.0, defocus_v=9000.0)
    dummy = prepare_image(
        torch.randn(SHAPE), 1.0, FilterSettings(whitening=False), False
    )
    inputs = build_search_inputs(prepare_template(blob), 32, dummy, optics, space)
    rotation = euler_to_matrix(
        space.euler_angles[true_orientation : true_orientation + 1]
    )
    ctf = ctf_stack(optics, torch.tensor([TRUE_DEFOCUS_OFFSET]), SHAPE)[0]
    particle = torch.fft.irfft2(
        padded_dft(project(inputs.projector, rotation, 1.0), SHAPE)[0] * ctf, s=SHAPE
    )
    particle = torch.roll(particle, (TRUE_XY[1], TRUE_XY[0]), (0, 1))
    g = torch.Generator().manual_seed(7)
    image = 50.0 + torch.randn(SHAPE, generator=g) + 0.25 * particle / particle.std()
    write_mrc(tmp_path / "micrograph.mrc", image.numpy(), 1.0)
    write_mrc(tmp_path / "template.mrc", blob.numpy(), 1.0)
    return tmp_path, config, space, true_orientation


def test_planted_particle_is_found_with_its_pose_and_defocus(planted):
    _, config, space, true_orientation = planted
    result = match_template(config)
    z = result.maps["zscore"]
    row, col = np.unravel_index(np.argmax(z), z.shape)
    assert (col, row) == TRUE_XY
    assert z[row, col] > 7.0
    truth = euler_to_matrix(space.euler_angles[true_orientation][None])
    found = euler_to_matrix(
        torch.tensor(
            [[result.maps[a][row, col] for a in ("phi", "theta", "psi")]],
            dtype=torch.float64,
        )
    )
    assert float(angular_distance(truth, found)[0]) < 30.0
    assert result.maps["defocus"][row, col] == pytest.approx(
        9000.0 + TRUE_DEFOCUS_OFFSET
    )
    # every correlation of the search is one pixel of one correlation map
    n_pixels = z.shape[0] * z.shape[1]
    assert result.metadata.correlations_per_pixel == space.size
    assert result.metadata.total_correlations == space.size * n_pixels


def test_cli_writes_a_result_that_loads_back(planted, tmp_path):
    folder, config, _, _ = planted
    config_file = tmp_path / "match.yaml"
    data = _config_dict(folder)
    config_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "cli-result"
    runner = CliRunner()
    outcome = runner.invoke(app, ["match", str(config_file), "--output", str(out)])
    assert outcome.exit_code == 0, outcome.output
    loaded = MatchResult.load(out)
    assert set(loaded.maps) == set(MAP_NAMES)
    direct = match_template(config)
    np.testing.assert_array_equal(loaded.maps["mip"], direct.maps["mip"])
    assert loaded.pixel_size == pytest.approx(1.0)
    assert (
        loaded.metadata.search_space.orientations
        == direct.metadata.search_space.orientations
    )
    # result.json's counts, read as a user would (json), not through twodtm
    saved = json.loads((out / "result.json").read_text())
    per_pixel = saved["search_space"]["correlations_per_pixel"]
    assert saved["correlations_per_pixel"] == per_pixel
    assert saved["total_correlations"] == per_pixel * loaded.maps["mip"].size


def test_config_round_trips_through_yaml(tmp_path):
    original = parse_config(MatchConfig, _config_dict(tmp_path))
    file = tmp_path / "round.yaml"
    file.write_text(dump_yaml(original))
    assert load_match_config(file) == original


def test_example_config_is_accepted_once_paths_are_filled(tmp_path):
    data = yaml.safe_load(example_text("match"))
    data["micrograph"], data["template"] = "a.mrc", "b.mrc"
    config = parse_config(MatchConfig, data)
    assert config.orientation_search.symmetry == "C1"
    assert config.defocus_search.offsets()[0] == -1200.0


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("optics", "pixel_size"), -1.0, "optics.pixel_size"),
        (("defocus_search", "step"), 0.0, "defocus_search"),
        (("defocus_search", "max"), -2000.0, "defocus_search"),
        (("orientation_search", "symmetry"), "Q3", "orientation_search.symmetry"),
        (("compute", "batch_size"), 0, "compute.batch_size"),
        (("optics", "defocus_uu"), 1.0, "optics.defocus_uu"),
    ],
)
def test_invalid_fields_are_named(tmp_path, path, value, field):
    data = _config_dict(tmp_path)
    data[path[0]] = dict(data.get(path[0], {}), **{path[1]: value})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(MatchConfig, data, "test.yaml")


def test_interrupted_save_never_loads_as_a_mixed_result(planted, tmp_path, monkeypatch):
    _, config, _, _ = planted
    result = match_template(config)
    result.save(tmp_path)
    calls = []

    def failing_write(path, data, pixel_size):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(results_module, "write_mrc", failing_write)
    with pytest.raises(OSError):
        result.save(tmp_path)
    with pytest.raises(InputFileError, match="no result.json"):
        MatchResult.load(tmp_path)


def test_the_template_array_is_released_before_the_search(tmp_path, monkeypatch):
    # the task holds the prepared template: the map itself (0.5 GiB at 512^3)
    # must not be kept alive through the search
    loaded: list[weakref.ref[np.ndarray]] = []
    real_load, real_search = match_program.load_inputs, match_program.run_search

    def load(config):
        inputs = real_load(config)
        loaded.append(weakref.ref(inputs.template))
        return inputs

    alive: list[bool] = []

    def search(*args, **kwargs):
        gc.collect()
        alive.append(loaded[0]() is not None)
        return real_search(*args, **kwargs)

    monkeypatch.setattr(match_program, "load_inputs", load)
    monkeypatch.setattr(match_program, "run_search", search)
    result = match_template(small_config(tmp_path, out_of_plane_step=60.0))
    assert alive == [False]
    assert result.metadata.template_size == 16
