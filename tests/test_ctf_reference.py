"""twodtm's CTF pinned to cisTEM's formula, written out independently, and its sign
pinned physically: protein is dark in a raw micrograph at underfocus.

The reference is ``forward_model.ctf_2d`` (numpy only, no torch-ctf); it is itself
pinned to numbers worked out by hand below.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch_ctf import calculate_relativistic_electron_wavelength

import forward_model as fm
from twodtm.ctf import Optics, ctf_stack
from twodtm.simulate import SimulationParams, simulate_micrograph

APOFERRITIN = "/work/shared/data/sim_6z6u_apoferritin_1.0A_192.mrc"
# Within float32 rounding of chi (up to ~500 rad at 30,000 A and 1 A/px).
ATOL = 2e-3
# ttsim3d's potential is in vacuum; against vitreous ice protein keeps about
# (1.35 - 0.94) / 1.35 ~ 0.3 of its contrast (mass densities, g/cm^3). At 2.5 A/px,
# 30 e/A^2 and 15,000 A this gives a matched-filter SNR of 11-14 per particle.
ICE_CONTRAST = 0.3


def test_wavelength_matches_hand_values_and_twodtm_dependency():
    # lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))), CODATA 2018.
    hand = {120.0: 0.033492, 200.0: 0.025079, 300.0: 0.019687}
    for kv, value in hand.items():
        assert fm.electron_wavelength(kv) == pytest.approx(value, abs=2e-6)
        # cisTEM's closed form gives the same within 1e-5 relative.
        volts = kv * 1e3
        cistem = 12.2643247 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))
        assert fm.electron_wavelength(kv) == pytest.approx(cistem, rel=1e-5)
        # The wavelength that ctf_stack's CTF (torch-ctf) uses, metres -> A.
        used = float(calculate_relativistic_electron_wavelength(volts)) * 1e10
        assert used == pytest.approx(fm.electron_wavelength(kv), rel=1e-6)


def test_reference_ctf_matches_a_hand_calculation():
    # k = 0.1 / A along x, 300 kV, Cs 2.7 mm, A = 0.07, df 15,000 A:
    # chi = pi * 0.0196875 * 15000 * 0.01 - pi / 2 * 2.7e7 * 0.0196875^3 * 1e-4
    #       + asin(0.07) = 9.27747 - 0.03236 + 0.07006 = 9.31517 rad
    # = 3 pi - 0.10961, so CTF = -sin(chi) = -sin(0.10961) = -0.10939.
    shape = (40, 40)  # pixel 0.25 A: column 1 is kx = 0.1 / A
    ctf = fm.ctf_2d(
        shape,
        0.25,
        voltage=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
        defocus_u=15000.0,
        defocus_v=15000.0,
        astigmatism_angle=0.0,
    )
    assert ctf[0, 1] == pytest.approx(-0.10939, abs=1e-4)
    assert ctf[0, 0] == pytest.approx(-0.07, abs=1e-12)  # DC: -sin(asin(A))
    # Astigmatism: along the U axis (30 deg) the defocus is U, across it V.
    astig = fm.ctf_2d(
        (400, 400),
        0.25,
        voltage=300.0,
        cs_mm=0.0,
        amplitude_contrast=0.0,
        defocus_u=15000.0,
        defocus_v=5000.0,
        astigmatism_angle=30.0,
    )
    lam = fm.electron_wavelength(300.0)
    k = 0.1
    for angle, defocus in ((30.0, 15000.0), (120.0, 5000.0), (75.0, 10000.0)):
        # Frequency (kx, ky) = k (cos a, sin a) on the grid (0.01 / A spacing).
        kx, ky = k * math.cos(math.radians(angle)), k * math.sin(math.radians(angle))
        row, col = round(ky / 0.01), round(kx / 0.01)
        exact = math.hypot(row * 0.01, col * 0.01)
        azimuth = math.atan2(row, col)
        df = 10000.0 + 5000.0 * math.cos(2.0 * (azimuth - math.radians(30.0)))
        assert abs(df - defocus) < 400.0  # the grid point is near the stated axis
        expected = -math.sin(math.pi * lam * df * exact**2)
        assert astig[row % 400, col % 400] == pytest.approx(expected, abs=1e-9)


CASES = [
    # (pixel size, shape, optics fields): defocus series, astigmatism angles,
    # U < V, Cs, amplitude contrast, phase plate, B-factor, 200 kV, odd/even sizes.
    (1.0, (64, 64), {"defocus_u": 5000.0, "defocus_v": 5000.0}),
    (1.0, (64, 65), {"defocus_u": 15000.0, "defocus_v": 15000.0}),
    (1.0, (63, 64), {"defocus_u": 30000.0, "defocus_v": 30000.0}),
    (1.3, (72, 81), {"defocus_u": 16000.0, "defocus_v": 14000.0}),
    (
        1.3,
        (72, 81),
        {"defocus_u": 16000.0, "defocus_v": 14000.0, "astigmatism_angle": 30.0},
    ),
    (
        1.3,
        (81, 72),
        {"defocus_u": 16000.0, "defocus_v": 12000.0, "astigmatism_angle": 90.0},
    ),
    (
        0.9,
        (60, 77),
        {"defocus_u": 9000.0, "defocus_v": 11000.0, "astigmatism_angle": 135.0},
    ),
    (
        1.1,
        (50, 50),
        {
            "defocus_u": 8000.0,
            "defocus_v": 7000.0,
            "astigmatism_angle": 60.0,
            "spherical_aberration": 0.01,
            "amplitude_contrast": 0.2,
        },
    ),
    (
        1.5,
        (48, 57),
        {
            "defocus_u": 6000.0,
            "defocus_v": 5500.0,
            "astigmatism_angle": 10.0,
            "phase_shift": 90.0,
            "voltage": 200.0,
            "spherical_aberration": 1.4,
        },
    ),
    (1.0, (64, 63), {"defocus_u": 12000.0, "defocus_v": 12000.0, "b_factor": 80.0}),
]


def _reference(optics: Optics, shape: tuple[int, int], offset: float) -> np.ndarray:
    return fm.ctf_2d(
        shape,
        optics.pixel_size,
        voltage=optics.voltage,
        cs_mm=optics.spherical_aberration,
        amplitude_contrast=optics.amplitude_contrast,
        defocus_u=optics.defocus_u + offset,
        defocus_v=optics.defocus_v + offset,
        astigmatism_angle=optics.astigmatism_angle,
        phase_shift=optics.phase_shift,
        b_factor=optics.b_factor,
        rfft=True,
    )


@pytest.mark.parametrize(("pixel_size", "shape", "fields"), CASES)
def test_ctf_stack_equals_the_written_out_formula(pixel_size, shape, fields):
    optics = Optics(pixel_size=pixel_size, **fields)
    offsets = torch.tensor([-700.0, 0.0, 1300.0])
    stack = ctf_stack(optics, offsets, shape).numpy()
    assert stack.shape == (3, shape[0], shape[1] // 2 + 1)
    for ctf, offset in zip(stack, offsets.tolist(), strict=True):
        reference = _reference(optics, shape, offset)
        np.testing.assert_allclose(ctf, reference, atol=ATOL, rtol=0)
        # Values, not signs: the CTF swings through +-1, and matches there too.
        assert np.abs(reference).max() > 0.9


def test_astigmatism_angle_is_not_mirrored():
    # Angle a and -a differ unless twodtm measures the angle the same way
    # (from x, towards +y = increasing row); a mirrored convention fails here.
    optics = Optics(
        pixel_size=1.0, defocus_u=20000.0, defocus_v=8000.0, astigmatism_angle=35.0
    )
    shape = (96, 96)
    ctf = ctf_stack(optics, torch.zeros(1), shape)[0].numpy()
    right = _reference(optics, shape, 0.0)
    mirrored = _reference(replace(optics, astigmatism_angle=-35.0), shape, 0.0)
    assert np.abs(ctf - right).max() < ATOL
    assert np.abs(ctf - mirrored).max() > 0.5


def _binned_apoferritin() -> tuple[np.ndarray, float]:
    volume, pixel_size = fm.read_map(APOFERRITIN)
    return fm.bin_map(volume, pixel_size, 160, 64)  # 2.5 A/px, 64^3


def _darkness(
    image: np.ndarray, xy: np.ndarray, background: float, radius: float = 24.0
) -> np.ndarray:
    """Disk-averaged (low-passed) contrast of each particle, in noise sigmas.

    The mean over a disk of the particle's radius, minus the background, over
    the standard deviation of such a mean in Poisson noise
    (``sqrt(background / n_pixels)``). A disk rather than the centre pixel:
    apoferritin is a hollow shell, and its centre projects to ~0.
    """
    rows, cols = np.indices(image.shape)
    out = []
    for x, y in xy:
        inside = np.hypot(cols - x, rows - y) < radius
        out.append(
            (image[inside].mean() - background) / np.sqrt(background / inside.sum())
        )
    return np.array(out)


def test_forward_model_particles_are_dark_at_underfocus():
    volume, pixel_size = _binned_apoferritin()
    rng = np.random.default_rng(3)
    shape = (256, 256)
    particles = fm.random_particles(4, shape, 70.0, 40.0, np.full(4, 15000.0), rng)
    sim = fm.simulate_micrograph(
        ICE_CONTRAST * volume,
        pixel_size,
        shape,
        particles,
        dose=30.0,
        microscope=fm.Microscope(),
        seed=1,
    )
    xy = np.array([[p.x, p.y] for p in particles])
    background = 30.0 * pixel_size**2
    expected = _darkness(sim.expected, xy, background)
    noisy = _darkness(sim.counts, xy, sim.counts.mean())
    print("forward model, disk contrast (sigma):", expected.round(1), noisy.round(1))
    assert np.all(expected < -4.0)
    assert noisy.mean() < -3.0
    # Without the particles the same disks hold no contrast (the measure is fair).
    empty = fm.simulate_micrograph(
        np.zeros_like(volume),
        pixel_size,
        shape,
        particles,
        dose=30.0,
        microscope=fm.Microscope(),
        seed=1,
    )
    assert np.all(np.abs(_darkness(empty.expected, xy, background)) < 1e-6)


def test_twodtm_simulator_particles_are_dark_at_underfocus():
    volume, pixel_size = _binned_apoferritin()
    optics = Optics(pixel_size=pixel_size, defocus_u=15000.0, defocus_v=15000.0)
    params = SimulationParams(image_shape=(256, 256), n_particles=4, dose=30.0, seed=4)
    sim = simulate_micrograph(
        torch.from_numpy(ICE_CONTRAST * volume).to(torch.float32), optics, params
    )
    xy = sim.truth[["x", "y"]].to_numpy()
    background = 30.0 * pixel_size**2
    expected = _darkness(sim.noiseless.astype(np.float64), xy, background)
    noisy = _darkness(
        sim.micrograph.astype(np.float64), xy, float(sim.micrograph.mean())
    )
    print("twodtm.simulate, disk contrast (sigma):", expected.round(1), noisy.round(1))
    assert np.all(expected < -4.0)
    assert noisy.mean() < -3.0
