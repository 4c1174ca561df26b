"""Simulation: particles where the truth says, dose statistics, SO(3) uniformity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from twodtm.cli import app
from twodtm.ctf import Optics, ctf_stack
from twodtm.errors import InputDataError
from twodtm.io.mrc import read_mrc, write_mrc
from twodtm.io.tables import read_particles
from twodtm.orientations import angular_distance, euler_to_matrix
from twodtm.programs.simulate import write_simulation
from twodtm.simulate import (
    SimulationParams,
    degrade_volume,
    fourier_bin,
    place_particles,
    random_poses,
    simulate_micrograph,
)

OPTICS = Optics(
    pixel_size=4.0, defocus_u=16000.0, defocus_v=15000.0, astigmatism_angle=20.0
)


def _volume(size: int = 24) -> torch.Tensor:
    """An asymmetric test object: three Gaussian blobs of different weights."""
    grid = torch.arange(size, dtype=torch.float64) - size // 2
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    vol = torch.zeros_like(x)
    for (cz, cy, cx), weight in (
        ((0, 0, 4), 1.0),
        ((3, -5, -2), 0.6),
        ((-4, 3, -3), 0.3),
    ):
        vol += weight * torch.exp(
            -((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / 4.0
        )
    return (0.01 * vol).to(torch.float32)


def _reference(volume, rotation, defocus, shape):
    """CTF-filtered projection centred on pixel (0, 0), via a direct 3D rotation.

    The volume is resampled on the rotated grid and summed along z: an
    independent route to the projection ``p(x, y) = int V(R (x, y, z)) dz``.
    """
    t = volume.shape[-1]
    grid = torch.arange(t, dtype=torch.float64) - t // 2
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    points = torch.stack([x, y, z], -1) @ rotation.T  # R @ (x, y, z)
    coords = (points / (t // 2))[None]  # grid_sample wants (x, y, z) in [-1, 1]
    coords = coords * (t // 2) / ((t - 1) / 2)  # align_corners=True scaling
    rotated = torch.nn.functional.grid_sample(
        volume.to(torch.float64)[None, None],
        coords + (t // 2 - (t - 1) / 2) / ((t - 1) / 2),
        align_corners=True,
    )[0, 0]
    proj = rotated.sum(0)
    image = torch.zeros(shape, dtype=torch.float64)
    image[:t, :t] = proj
    image = torch.roll(image, (-(t // 2), -(t // 2)), (0, 1))
    offset = torch.tensor([defocus - OPTICS.defocus_mean], dtype=torch.float32)
    ctf = ctf_stack(OPTICS, offset, shape)[0].to(torch.float64)
    return torch.fft.irfft2(torch.fft.rfft2(image) * ctf, s=shape)


def _correlate(image, reference):
    return torch.fft.irfft2(
        torch.fft.rfft2(image) * torch.fft.rfft2(reference).conj(), s=image.shape
    )


def test_particles_are_where_the_truth_says_at_the_stated_pose():
    volume = _volume()
    params = SimulationParams((128, 128), 3, dose=20.0, defocus_spread=300.0, seed=4)
    sim = simulate_micrograph(volume, OPTICS, params)
    signal = torch.from_numpy(sim.noiseless.astype(np.float64))
    signal = signal - signal.mean()
    for _, row in sim.truth.iterrows():
        rotation = euler_to_matrix(torch.tensor([row.phi, row.theta, row.psi]))
        corr = _correlate(signal, _reference(volume, rotation, row.defocus, (128, 128)))
        peak = np.unravel_index(int(corr.argmax()), corr.shape)
        assert abs(peak[0] - row.y) <= 1.0 and abs(peak[1] - row.x) <= 1.0
        # the stated pose fits better than a pose 30 degrees away
        turned = rotation @ euler_to_matrix(
            torch.tensor([0.0, 30.0, 0.0], dtype=torch.float64)
        )
        other = _correlate(signal, _reference(volume, turned, row.defocus, (128, 128)))
        assert float(corr.max()) > 1.1 * float(other.max())


def test_noise_has_the_dose_statistics():
    dose = 15.0
    params = SimulationParams((256, 256), 0, dose=dose, seed=1)
    counts = simulate_micrograph(_volume(), OPTICS, params).micrograph.astype(
        np.float64
    )
    expected = dose * OPTICS.pixel_size**2  # 240 e per pixel
    assert counts.mean() == pytest.approx(expected, rel=0.002)
    assert counts.var() == pytest.approx(expected, rel=0.02)  # Poisson: var = mean
    assert np.all(counts == np.round(counts))
    extra = SimulationParams((256, 256), 0, dose=dose, gaussian_noise=10.0, seed=1)
    noisy = simulate_micrograph(_volume(), OPTICS, extra).micrograph.astype(np.float64)
    assert noisy.var() == pytest.approx(expected + 100.0, rel=0.02)


def test_signal_scales_with_dose_as_weak_phase_contrast():
    params = SimulationParams((96, 96), 1, dose=10.0, seed=2)
    low = simulate_micrograph(_volume(), OPTICS, params).noiseless
    high = simulate_micrograph(
        _volume(), OPTICS, SimulationParams((96, 96), 1, 40.0, seed=2)
    )
    per_pixel = 10.0 * OPTICS.pixel_size**2
    np.testing.assert_allclose(high.noiseless, 4.0 * low, rtol=1e-5)
    contrast = low / per_pixel - 1.0
    assert 1e-3 < np.abs(contrast).max() < 0.5


def test_orientations_are_uniform_on_so3():
    rotations, angles = random_poses(3000, torch.Generator().manual_seed(7))
    phi, theta, psi = angles.T.numpy()
    # Haar measure: phi, psi uniform, cos(theta) uniform on [-1, 1]
    assert stats.kstest(phi / 360.0, "uniform").pvalue > 0.001
    assert stats.kstest(psi / 360.0, "uniform").pvalue > 0.001
    assert stats.kstest((np.cos(np.radians(theta)) + 1) / 2, "uniform").pvalue > 0.001
    # uniform Euler angles would fail the theta test
    flat = np.random.default_rng(0).uniform(0, 180, 3000)
    assert stats.kstest((np.cos(np.radians(flat)) + 1) / 2, "uniform").pvalue < 1e-6
    # and the angles describe the rotations
    again = euler_to_matrix(angles)
    assert float(angular_distance(again, rotations).max()) < 1e-3


def test_seeded_reproducible_and_separated():
    params = SimulationParams((160, 160), 5, dose=5.0, defocus_spread=200.0, seed=11)
    a = simulate_micrograph(_volume(), OPTICS, params)
    b = simulate_micrograph(_volume(), OPTICS, params)
    np.testing.assert_array_equal(a.micrograph, b.micrograph)
    assert a.truth.equals(b.truth)
    c = simulate_micrograph(
        _volume(), OPTICS, SimulationParams((160, 160), 5, 5.0, seed=12)
    )
    assert not np.array_equal(a.micrograph, c.micrograph)
    xy = a.truth[["x", "y"]].to_numpy()
    gaps = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert gaps[~np.eye(5, dtype=bool)].min() >= 0.9 * 24
    assert a.truth["defocus"].std() > 50.0


def test_placement_refuses_what_does_not_fit():
    with pytest.raises(InputDataError, match="fit"):
        place_particles((64, 64), 8, 30.0, 5.0, np.random.default_rng(0))


def test_inputs_are_not_modified_and_files_round_trip(tmp_path):
    volume = _volume()
    before = volume.clone()
    sim = simulate_micrograph(
        volume, OPTICS, SimulationParams((96, 96), 2, 10.0, seed=3)
    )
    assert torch.equal(volume, before)
    paths = write_simulation(
        sim, tmp_path, degrade_volume(volume, 4.0, b_factor=200.0), 4.0
    )
    assert read_mrc(paths["micrograph"]).pixel_size == pytest.approx(4.0)
    np.testing.assert_array_equal(read_mrc(paths["micrograph"]).data, sim.micrograph)
    truth = read_particles(paths["truth"])
    np.testing.assert_allclose(
        truth[["x", "y", "phi", "theta", "psi", "defocus"]], sim.truth, rtol=1e-6
    )


def test_degrade_and_bin_keep_the_projected_phase():
    volume = _volume(32)
    binned = fourier_bin(volume, 2)
    # a z-sum is a phase per pixel: binning by 2 keeps the integrated phase over area
    assert float(binned.sum()) * 4 == pytest.approx(float(volume.sum()), rel=1e-4)
    smooth = degrade_volume(volume, 1.0, b_factor=300.0)  # band-limited below Nyquist/2
    zsum = smooth.sum(0)[::2, ::2]  # binned pixel j sits at original pixel 2 j
    np.testing.assert_allclose(
        fourier_bin(smooth, 2).sum(0), zsum, atol=0.03 * float(zsum.max())
    )
    blurred = degrade_volume(volume, 4.0, b_factor=400.0)
    assert float(blurred.sum()) == pytest.approx(float(volume.sum()), rel=1e-4)
    assert float(blurred.max()) < 0.9 * float(volume.max())
    low = degrade_volume(volume, 4.0, resolution=20.0)
    spectrum = torch.fft.fftn(low.to(torch.float64)).abs()
    k = torch.fft.fftfreq(32, d=4.0)
    kk = torch.sqrt(
        k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    )
    assert float(spectrum[kk > 1 / 20.0].max()) < 1e-6 * float(spectrum.max())


def test_simulate_command_writes_the_three_files(tmp_path):
    write_mrc(tmp_path / "map.mrc", _volume().numpy(), 4.0)
    out = tmp_path / "sim"
    args = ["simulate", str(tmp_path / "map.mrc"), str(out), "--pixel-size", "4"]
    args += ["--image-size", "96", "--particles", "2", "--set", "seed=2"]
    args += ["--set", "template_b_factor=100"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert len(read_particles(out / "truth.star")) == 2
    template = read_mrc(out / "template.mrc").data
    assert template.max() < 0.95 * float(_volume().max())  # B-factor applied
    wrong = CliRunner().invoke(
        app, [*args[:4], "--pixel-size", "2", "--particles", "1"]
    )
    assert wrong.exit_code != 0
