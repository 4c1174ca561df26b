"""Local refinement: grids, box filters and sub-pixel peaks against analytic values,
box correlations against the full-image engine, and plant-and-recover of poses."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from conftest import blob_volume
from twodtm.cli import app
from twodtm.cli.config_cmd import example_text
from twodtm.config import (
    ConstrainedConfig,
    OptimizeConfig,
    RefineConfig,
    load_program_config,
    parse_config,
)
from twodtm.ctf import Optics, frequency_grid
from twodtm.errors import ConfigError
from twodtm.io.tables import read_particles, write_csv_table
from twodtm.local import (
    LocalGrid,
    LocalSettings,
    Micrograph,
    Pose,
    Template,
    fit_particles,
    make_template,
    prepare_micrograph,
    refine_particles,
    small_rotations,
)
from twodtm.local._boxes import (
    default_box_size,
    resample_filter,
    subpixel_peaks,
    window_mask,
    window_radius,
)
from twodtm.local._grid import local_orientations
from twodtm.orientations import angular_distance, euler_to_matrix
from twodtm.preprocess import FilterSettings, PreparedImage, prepare_image
from twodtm.programs.simulate import write_simulation
from twodtm.search.engine import correlate, search_orientations
from twodtm.search.inputs import build_search_inputs
from twodtm.search.norms import orientation_norms
from twodtm.search.projection import padded_dft, project
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics
from twodtm.significance import family_pvalue
from twodtm.simulate import SimulationParams, simulate_micrograph

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
    maps = torch.stack([surface, surface.flip(0, 1)])
    offsets = subpixel_peaks(maps, torch.tensor([4, 4]), torch.tensor([4, 4]))
    assert offsets[0].tolist() == pytest.approx([0.3, -0.2], abs=1e-5)
    assert offsets[1].tolist() == pytest.approx([-0.3, 0.2], abs=1e-5)
    edges = subpixel_peaks(maps, torch.tensor([0, 4]), torch.tensor([4, 8]))
    assert edges[0, 0] == 0.0 and edges[1, 1] == 0.0  # no neighbour beyond an edge


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
    box = project(inputs.projector, euler_to_matrix(angles), inputs.pixel_scales[0])
    dft = padded_dft(box, inputs.image_shape)
    full = correlate(inputs, dft[0], orientation_norms(inputs, box[0], dft, 0), 0)[0]
    iy, ix = round(row.y), round(row.x)
    # Box: the same pose, integer position, no search.
    micrograph = prepare_micrograph(image, OPTICS, FilterSettings(), pad=False)
    start = Pose(float(ix), float(iy), tuple(angles[0].tolist()), row.defocus, 1.0)
    [fit] = fit_particles(
        micrograph,
        template,
        [start],
        LocalSettings(LocalGrid(0, 1, 0, 1), max_shift=0.0),
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


def test_refined_pvalue_is_recomputed_for_the_refined_zscore(simulated):
    """The p-value follows the refined z-score (global noise model and trials)."""
    volume, sim = simulated
    micrograph = prepare_micrograph(
        torch.from_numpy(sim.micrograph), OPTICS, FilterSettings()
    )
    template = make_template(volume, 1.0)
    start = sim.truth.copy()
    for name in ("phi", "psi"):
        start[name] = start[name] + 4.0  # two local steps off: refinement gains
    start["x"], start["y"] = start["x"].round(), start["y"].round()
    start["defocus"] = OPTICS.defocus_mean
    at_start = refine_particles(
        micrograph, template, start, LocalSettings(LocalGrid(0, 1, 0, 1), max_shift=0.0)
    )
    # A global noise model that puts the starts near z = 4.5, where p-values are
    # neither 0 nor 1; n_trials as `twodtm peaks` writes it.
    n_trials = 1e5
    start["mean"] = 0.2
    start["std"] = (at_start["mip"] - 0.2) / 4.5
    start["zscore"] = (at_start["mip"] - start["mean"]) / start["std"]
    start["n_trials"] = n_trials
    start["pvalue"] = family_pvalue(start["zscore"].to_numpy(), n_trials)
    settings = LocalSettings(grid=LocalGrid(4.0, 2.0, 4.0, 2.0), max_shift=1.0)
    refined = refine_particles(micrograph, template, start, settings)
    z_refined = ((refined["mip"] - start["mean"]) / start["std"]).to_numpy()
    np.testing.assert_allclose(refined["zscore"], z_refined, rtol=1e-9)
    assert (refined["zscore"] > start["zscore"] + 0.05).all()
    assert (refined["pvalue"] < start["pvalue"]).all()
    np.testing.assert_allclose(
        refined["pvalue"], family_pvalue(z_refined, n_trials), rtol=1e-9
    )
    # independent of family_pvalue: 1 - (1 - sf)^N for the normal tail
    direct = 1.0 - (1.0 - scipy_stats.norm.sf(z_refined)) ** n_trials
    np.testing.assert_allclose(refined["pvalue"], direct, rtol=1e-6)
    # without the global number of trials the old p-value is dropped, not kept
    no_trials = refine_particles(
        micrograph, template, start.drop(columns="n_trials"), settings
    )
    assert no_trials["pvalue"].isna().all()


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


def _vertex(left: float, centre: float, right: float) -> float:
    curvature = left - 2.0 * centre + right
    return (
        0.0 if curvature >= 0 else max(-0.5, min(0.5, 0.5 * (left - right) / curvature))
    )


def reference_pass(
    micrograph: Micrograph, template: Template, start: Pose, settings: LocalSettings
) -> tuple[Pose, float]:
    """One particle alone through the global engine: the path batching replaced."""
    deepest = abs(start.defocus) + max(abs(d) for d in settings.defocus_offsets)
    size = settings.box_size or default_box_size(
        template.size, micrograph.optics, deepest
    )
    r = window_radius(settings.max_shift)
    w = 2 * r + 1
    cy, cx = round(start.y), round(start.x)
    padded = torch.nn.functional.pad(micrograph.whitened, (size,) * 4)
    top, left = cy + size - size // 2, cx + size - size // 2
    box = padded[top : top + size, left : left + size].roll(
        (r - size // 2,) * 2, (0, 1)
    )
    fy, fx = start.y - cy, start.x - cx  # moved onto the pixel grid by a phase ramp
    ky = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    ramp = torch.exp(2j * torch.pi * (ky * fy + kx * fx))
    image = PreparedImage(
        whitened_dft=(torch.fft.rfft2(box) * ramp).to(torch.complex64),
        template_filter=micrograph.box_filter(size),
        padded_shape=(size, size),
        shape=(size, size),
    )
    optics = replace(
        micrograph.optics, defocus_u=start.defocus, defocus_v=start.defocus
    )
    space = SearchSpace(
        local_orientations(
            torch.tensor(start.angles, dtype=torch.float64), settings.grid
        ),
        torch.tensor(settings.defocus_offsets, dtype=torch.float64),
        start.pixel_size
        + torch.tensor(settings.pixel_size_offsets, dtype=torch.float64),
    )
    inputs = build_search_inputs(
        template.dft, template.size, image, optics, space, template.pixel_size
    )
    stats = SearchStatistics.empty((w, w))
    rotations = euler_to_matrix(space.euler_angles)
    search_orientations(inputs, rotations, 0, stats, crop=(w, w))
    masked = torch.where(window_mask(w, settings.max_shift), stats.mip, -torch.inf)
    row, column = divmod(int(torch.argmax(masked)), w)
    o, p, d = (int(v) for v in space.decode(stats.best_index[row, column]))
    box = project(inputs.projector, rotations[o : o + 1], inputs.pixel_scales[p])
    dft = padded_dft(box, inputs.image_shape)
    peak = correlate(inputs, dft[0], orientation_norms(inputs, box[0], dft, p), p)[d]
    d_row = _vertex(*(float(peak[row + k, column]) for k in (-1, 0, 1)))
    d_column = _vertex(*(float(peak[row, column + k]) for k in (-1, 0, 1)))
    phi, theta, psi = space.euler_angles[o].tolist()
    pose = Pose(
        x=start.x - r + column + d_column,
        y=start.y - r + row + d_row,
        angles=(phi, theta, psi),
        defocus=start.defocus + settings.defocus_offsets[d],
        pixel_size=float(space.pixel_sizes[p]),
    )
    return pose, float(stats.mip[row, column])


def reference_fit(
    micrograph: Micrograph, template: Template, start: Pose, settings: LocalSettings
) -> tuple[Pose, float]:
    pose, correlation = reference_pass(micrograph, template, start, settings)
    for _ in range(settings.iterations - 1):
        settings = settings.halved()
        pose, correlation = reference_pass(micrograph, template, pose, settings)
    return pose, correlation


def assert_same_fit(pose: Pose, correlation: float, expected: tuple[Pose, float]):
    assert (pose.x, pose.y) == pytest.approx((expected[0].x, expected[0].y), abs=2e-3)
    assert pose.angles == pytest.approx(expected[0].angles, abs=1e-6)
    assert pose.defocus == pytest.approx(expected[0].defocus, abs=1e-6)
    assert pose.pixel_size == pytest.approx(expected[0].pixel_size, abs=1e-12)
    assert correlation == pytest.approx(expected[1], rel=1e-4)


@pytest.mark.parametrize("box_size", [None, 100])
def test_batched_fits_equal_each_particle_alone(simulated, box_size):
    """Particles at different defocus (boxes of 90, 100 and 112 px unless fixed),
    two pixel sizes, two passes: batched as 3 or 1, each equals the reference."""
    volume, sim = simulated
    micrograph = prepare_micrograph(
        torch.from_numpy(sim.micrograph), OPTICS, FilterSettings()
    )
    whitened = micrograph.whitened.clone()
    template = make_template(volume, 1.0)
    rng = np.random.default_rng(11)
    starts = [
        Pose(
            x=float(round(row.x + rng.uniform(-1, 1))) + 0.3,
            y=float(round(row.y + rng.uniform(-1, 1))) - 0.2,
            angles=tuple((np.array([row.phi, row.theta, row.psi]) + 2.0).tolist()),
            defocus=defocus,
            pixel_size=1.0,
        )
        for row, defocus in zip(
            sim.truth.itertuples(), (5000.0, 6000.0, 5000.0, 7000.0), strict=True
        )
    ]
    settings = LocalSettings(
        grid=LocalGrid(4.0, 2.0, 2.0, 2.0),
        defocus_offsets=(-200.0, 0.0, 200.0),
        pixel_size_offsets=(0.0, 0.02),
        max_shift=2.0,
        box_size=box_size,
        iterations=2,
    )
    by_three = fit_particles(
        micrograph, template, starts, replace(settings, particle_batch_size=3)
    )
    alone = fit_particles(
        micrograph,
        template,
        starts,
        # 4 orientations per chunk too
        replace(settings, particle_batch_size=1, orientations_per_chunk=4),
    )
    assert torch.equal(micrograph.whitened, whitened)  # input untouched
    for start, fit, single in zip(starts, by_three, alone, strict=True):
        expected = reference_fit(micrograph, template, start, settings)
        assert_same_fit(fit.pose, fit.correlation, expected)
        assert_same_fit(single.pose, single.correlation, expected)
        assert fit.correlation > 8  # at the particle, not noise (z ~ 1 there)
    assert by_three[0].n_trials == 13 * 3 * 3 * 2  # last pass: 13 tilts, 3 turns
