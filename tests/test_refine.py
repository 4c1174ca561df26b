"""Local refinement: grids, box filters and sub-pixel peaks against analytic values,
box correlations against the full-image engine, and plant-and-recover of poses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import blob_volume
from twodtm.cli import app
from twodtm.cli.config_cmd import example_text
from twodtm.config import (
    ConfigError,
    ConstrainedConfig,
    OptimizeConfig,
    RefineConfig,
    load_program_config,
    parse_config,
)
from twodtm.ctf import Optics, frequency_grid
from twodtm.io.tables import read_particles, write_csv_table
from twodtm.local import (
    LocalGrid,
    local_orientations,
    resample_filter,
    small_rotations,
    subpixel_peak,
)
from twodtm.orientations import angular_distance, euler_to_matrix
from twodtm.preprocess import FilterSettings, prepare_image
from twodtm.refine import (
    LocalSettings,
    Pose,
    fit_particle,
    make_template,
    prepare_micrograph,
    refine_particles,
)
from twodtm.search.engine import (
    build_search_inputs,
    correlate,
    filter_norms,
    projection_dfts,
)
from twodtm.search.space import SearchSpace
from twodtm.simulate import SimulationParams, simulate_micrograph, write_simulation

OPTICS = Optics(pixel_size=1.0, defocus_u=6000.0, defocus_v=6000.0)


def sharp_volume(size: int = 32, n_blobs: int = 40, seed: int = 2) -> torch.Tensor:
    """Many 1-px Gaussian blobs (fine detail, well-defined orientation and scale)."""
    return blob_volume(size, n_blobs, seed, sigma=1.0, spread=0.6) * 0.02


def rotations_of(table: pd.DataFrame) -> torch.Tensor:
    return euler_to_matrix(torch.tensor(table[["phi", "theta", "psi"]].to_numpy()))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def simulated():
    volume = sharp_volume()
    params = SimulationParams((160, 160), 4, dose=2000.0, defocus_spread=250.0, seed=3)
    return volume, simulate_micrograph(volume, OPTICS, params)


def test_local_grid_varies_every_angle_within_its_range():
    grid = LocalGrid(
        out_of_plane_range=4, out_of_plane_step=2, in_plane_range=4, in_plane_step=2
    )
    start = torch.tensor([40.0, 70.0, 200.0], dtype=torch.float64)
    angles = local_orientations(start, grid)
    distance = angular_distance(euler_to_matrix(start), euler_to_matrix(angles))
    assert torch.allclose(angles[0], start, atol=1e-9)
    assert float(distance.max()) <= math.hypot(4, 4) + 1e-6
    assert len(angles) == 13 * 5  # 13 tilts in the disk of radius 4, 5 turns
    for column in range(3):  # phi, theta and psi all change (Leopard-EM keeps phi)
        assert len(torch.unique(angles[:, column].round(decimals=3))) > 3
    # A pure phi offset of 3 deg lies within half a grid diagonal of some grid point.
    target = euler_to_matrix(start + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64))
    nearest = angular_distance(target, euler_to_matrix(angles)).min()
    assert float(nearest) < 2.0 * math.sqrt(3) / 2


def test_small_rotations_are_rotations():
    r = small_rotations(LocalGrid(2, 1, 2, 1))
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(len(r), dtype=torch.float64))


def test_resample_filter_matches_the_radial_function():
    shape, box = (200, 240), (64, 64)

    def radial(s):
        k = frequency_grid(s, 1.0)
        return torch.exp(-((k / 0.2) ** 2)) + 0.3 * k

    resampled = resample_filter(radial(shape), shape, box)
    expected = radial(box)
    expected[0, 0] = 0.0
    assert float((resampled - expected).abs().max()) < 5e-3


def test_subpixel_peak_finds_a_parabola_vertex():
    y, x = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    surface = 10 - (y - 4.3) ** 2 - 2 * (x - 3.8) ** 2
    d_row, d_col = subpixel_peak(surface, 4, 4)
    assert d_row == pytest.approx(0.3, abs=1e-5)
    assert d_col == pytest.approx(-0.2, abs=1e-5)


def test_box_correlation_equals_full_image_correlation(simulated):
    volume, sim = simulated
    row = sim.truth.iloc[1]
    image = torch.from_numpy(sim.micrograph)
    angles = torch.tensor([[row.phi, row.theta, row.psi]], dtype=torch.float64)
    # Full image: the global search's engine at the particle's pixel.
    prepared = prepare_image(image, 1.0, FilterSettings(), pad_to_fft_friendly=False)
    optics = Optics(1.0, defocus_u=row.defocus, defocus_v=row.defocus)
    space = SearchSpace(
        angles, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    )
    template = make_template(volume, 1.0)
    inputs = build_search_inputs(template.dft, 32, prepared, optics, space)
    dft = projection_dfts(inputs, euler_to_matrix(angles), 0)
    full = correlate(inputs, dft[0], filter_norms(inputs, dft, 0)[0], 0)[0]
    iy, ix = round(row.y), round(row.x)
    # Box: the same pose, integer position, no search.
    micrograph = prepare_micrograph(image, OPTICS, FilterSettings(), pad=False)
    start = Pose(float(ix), float(iy), tuple(angles[0].tolist()), row.defocus, 1.0)
    fit = fit_particle(
        micrograph, template, start, LocalSettings(LocalGrid(0, 1, 0, 1), max_shift=0.0)
    )
    assert fit.correlation == pytest.approx(float(full[iy, ix]), rel=0.03)
    assert float(full[iy, ix]) > 10  # a real peak, not noise


def test_refinement_of_coarse_poses(simulated):
    volume, sim = simulated
    truth = sim.truth
    rng = np.random.default_rng(7)
    start = truth.copy()
    # What a coarse search (6 deg, 1 px, no defocus search) leaves behind.
    for name in ("phi", "theta", "psi"):
        start[name] = truth[name] + rng.uniform(-3.0, 3.0, len(truth))
    start.loc[0, "phi"] = truth.loc[0, "phi"] + 5.0  # phi alone off by > fine step
    start.loc[0, ["theta", "psi"]] = truth.loc[0, ["theta", "psi"]]
    start["x"] = np.round(truth["x"] + rng.uniform(-1, 1, len(truth)))
    start["y"] = np.round(truth["y"] + rng.uniform(-1, 1, len(truth)))
    start["defocus"] = OPTICS.defocus_mean
    original = start.copy()
    micrograph = prepare_micrograph(
        torch.from_numpy(sim.micrograph), OPTICS, FilterSettings()
    )
    template = make_template(volume, 1.0)
    fine_step, defocus_step = 2.0, 200.0
    settings = LocalSettings(
        grid=LocalGrid(4.0, fine_step, 4.0, fine_step),
        defocus_offsets=(-400.0, -200.0, 0.0, 200.0, 400.0),
        max_shift=2.0,
        iterations=3,
    )
    refined = refine_particles(micrograph, template, start, settings)
    at_start = refine_particles(
        micrograph, template, start, LocalSettings(LocalGrid(0, 1, 0, 1), max_shift=0.0)
    )

    pd.testing.assert_frame_equal(start, original)  # input untouched
    error_before = angular_distance(rotations_of(truth), rotations_of(start))
    error_after = angular_distance(rotations_of(truth), rotations_of(refined))
    assert float(error_before.median()) > fine_step
    assert float(error_after.median()) < fine_step
    position_error = np.hypot(refined.x - truth.x, refined.y - truth.y)
    assert float(np.median(position_error)) < 0.5
    assert float(np.median(np.abs(refined.defocus - truth.defocus))) < defocus_step
    assert refined.zscore.mean() > at_start.zscore.mean()
    # The particle whose phi alone was off ends at the right phi.
    phi_error = (refined.loc[0, "phi"] - truth.loc[0, "phi"] + 180.0) % 360.0 - 180.0
    assert abs(phi_error) < 1.5
    assert refined.loc[0, "delta_angle"] > 3.0
    assert refined.delta_x.to_numpy() == pytest.approx((refined.x - start.x).to_numpy())


def test_refine_program_writes_a_refined_table(simulated, tmp_path):
    volume, sim = simulated
    paths = write_simulation(sim, tmp_path, volume, 1.0)
    table = sim.truth.iloc[:2].copy()
    table["x"] = table["x"].round()
    table["y"] = table["y"].round()
    table["mean"], table["std"], table["zscore"] = 0.1, 1.1, 5.0
    write_csv_table(table, tmp_path / "particles.csv")
    yaml_text = f"""
micrograph: {paths["micrograph"].name}
template: {paths["template"].name}
particles: particles.csv
optics: {{pixel_size: 1.0, defocus_u: 6000.0, defocus_v: 6000.0}}
search:
  orientation: {{out_of_plane_range: 1.0, in_plane_range: 1.0}}
  defocus: {{enabled: false}}
  iterations: 1
output: {{directory: refined}}
"""
    (tmp_path / "refine.yaml").write_text(yaml_text)
    config = load_program_config(RefineConfig, tmp_path / "refine.yaml")
    assert config.particles == str(tmp_path / "particles.csv")
    result = CliRunner().invoke(
        app,
        [
            "refine",
            str(tmp_path / "refine.yaml"),
            "--output",
            str(tmp_path / "refined"),
        ],
    )
    assert result.exit_code == 0, result.output
    written = read_particles(tmp_path / "refined" / "particles.csv")
    assert len(written) == 2
    assert {"delta_x", "delta_angle", "delta_defocus", "delta_zscore"} <= set(
        written.columns
    )
    # z-score re-normalised with the global mean and std of the table.
    assert written.zscore.to_numpy() == pytest.approx(
        ((written.mip - 0.1) / 1.1).to_numpy(), rel=1e-4
    )
    assert (
        np.hypot(written.x - sim.truth.x[:2], written.y - sim.truth.y[:2]).max() < 0.5
    )
    again = CliRunner().invoke(
        app,
        [
            "refine",
            str(tmp_path / "refine.yaml"),
            "--output",
            str(tmp_path / "refined"),
        ],
    )
    assert again.exit_code != 0  # refuses to overwrite


@pytest.mark.parametrize(
    ("program", "model"),
    [
        ("refine", RefineConfig),
        ("optimize", OptimizeConfig),
        ("constrained", ConstrainedConfig),
    ],
)
def test_example_configs_validate(program, model):
    config = parse_config(model, yaml.safe_load(example_text(program)), program)
    assert config.optics.pixel_size == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(model, {**config.model_dump(mode="json"), "typo": 1}, program)
