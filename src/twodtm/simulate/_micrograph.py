"""The micrograph forward model: particle poses, CTF-filtered phase, counts.

See ``twodtm.simulate`` for the image model and its units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from twodtm.ctf import Optics, ctf_stack
from twodtm.errors import InputDataError
from twodtm.orientations import matrix_to_euler, random_rotations
from twodtm.preprocess import prepare_template
from twodtm.search.projection import Projector, padded_dft, project

_BATCH = 8
_MAX_TRIES_PER_PARTICLE = 500


@dataclass(frozen=True)
class SimulationParams:
    """What to simulate.

    Attributes
    ----------
    image_shape : tuple[int, int]
        ``(H, W)`` of the micrograph in pixels.
    n_particles : int
        Number of particles, placed without overlap.
    dose : float
        Electron dose, e/A^2 (sets the Poisson noise and hence the SNR).
    defocus_spread : float
        Standard deviation of the per-particle defocus around the micrograph's
        defocus, Angstrom (0: every particle at the micrograph defocus).
    gaussian_noise : float
        Standard deviation of extra Gaussian noise, in counts (electrons) per pixel.
    min_separation : float or None
        Smallest distance between particle centres, pixels; None means 0.9 times
        the template box size.
    seed : int
        Seed of every random draw (positions, orientations, defocus, noise).
    """

    image_shape: tuple[int, int]
    n_particles: int
    dose: float
    defocus_spread: float = 0.0
    gaussian_noise: float = 0.0
    min_separation: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class Simulation:
    """A simulated micrograph and its ground truth.

    Attributes
    ----------
    micrograph : np.ndarray
        ``(H, W)`` float32 noisy counts per pixel.
    noiseless : np.ndarray
        ``(H, W)`` float32 expected counts per pixel (no noise).
    truth : pandas.DataFrame
        One row per particle: ``x``, ``y`` (pixels, particle centre, x = column,
        y = row), ``phi``, ``theta``, ``psi`` (degrees, ZYZ) and ``defocus``
        (absolute mean defocus of that particle, Angstrom).
    """

    micrograph: np.ndarray
    noiseless: np.ndarray
    truth: pd.DataFrame


def place_particles(
    image_shape: tuple[int, int],
    n_particles: int,
    min_separation: float,
    margin: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Uniformly random particle centres at least ``min_separation`` apart.

    Parameters
    ----------
    image_shape : tuple[int, int]
        ``(H, W)`` in pixels.
    n_particles : int
        Number of centres.
    min_separation : float
        Smallest centre-to-centre distance, pixels.
    margin : float
        Smallest distance of a centre from the image edge, pixels.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    np.ndarray
        ``(n, 2)`` float64 ``(x, y)`` = (column, row).

    Raises
    ------
    InputDataError
        When the particles do not fit (too many or too far apart).
    """
    h, w = image_shape
    low = np.array([margin, margin])
    high = np.array([w - 1 - margin, h - 1 - margin])
    if np.any(high <= low):
        raise InputDataError(
            f"image {w}x{h} px is too small for a margin of {margin:.0f} px; "
            "use a larger image or a smaller template"
        )
    placed: list[np.ndarray] = []
    for _ in range(_MAX_TRIES_PER_PARTICLE * max(n_particles, 1)):
        if len(placed) == n_particles:
            break
        candidate = rng.uniform(low, high)
        if all(np.hypot(*(candidate - p)) >= min_separation for p in placed):
            placed.append(candidate)
    if len(placed) < n_particles:
        raise InputDataError(
            f"only {len(placed)} of {n_particles} particles fit "
            f"{min_separation:.0f} px apart; lower the particle number (or "
            "density) or the minimum separation"
        )
    return np.array(placed, dtype=np.float64).reshape(-1, 2)


def random_poses(
    n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` Haar-uniform rotations ``(n, 3, 3)`` and their ZYZ angles (deg)."""
    rotations = random_rotations(n, generator)
    return rotations, matrix_to_euler(rotations)


def _projector(volume: torch.Tensor) -> Projector:
    """Return what ``projection.project`` needs (slices at the padded size p)."""
    return Projector(prepare_template(volume), int(volume.shape[-1]))


def _shift_phases(positions: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W // 2 + 1)`` Fourier factors moving the origin to ``(x, y)``."""
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)
    kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)
    x, y = positions[:, 0, None, None], positions[:, 1, None, None]
    angle = -2.0 * torch.pi * (ky[None, :, None] * y + kx[None, None, :] * x)
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def render_phase_image(
    volume: torch.Tensor,
    optics: Optics,
    rotations: torch.Tensor,
    positions: np.ndarray,
    defoci: np.ndarray,
    image_shape: tuple[int, int],
) -> torch.Tensor:
    """Render the CTF-filtered projected phase of every particle, summed.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` potential (not modified).
    optics : Optics
        Micrograph optics; each particle's defocus replaces the mean defocus
        (astigmatism kept).
    rotations : torch.Tensor
        ``(n, 3, 3)`` particle rotations (engine convention).
    positions : np.ndarray
        ``(n, 2)`` centres ``(x, y)`` in pixels.
    defoci : np.ndarray
        ``(n,)`` absolute mean defocus per particle, Angstrom.
    image_shape : tuple[int, int]
        ``(H, W)``.

    Returns
    -------
    torch.Tensor
        ``(H, W)`` float32 phase contrast (radians, CTF applied).
    """
    t = int(volume.shape[-1])
    margin = t
    shape = (image_shape[0] + 2 * margin, image_shape[1] + 2 * margin)
    inputs = _projector(volume)
    total = torch.zeros((shape[0], shape[1] // 2 + 1), dtype=torch.complex64)
    centres = torch.from_numpy(np.asarray(positions, dtype=np.float64) + margin)
    offsets = torch.from_numpy(
        np.asarray(defoci, dtype=np.float64) - optics.defocus_mean
    )
    for start in range(0, len(centres), _BATCH):
        stop = start + _BATCH
        projections = project(inputs, rotations[start:stop], 1.0)
        dfts = padded_dft(projections, shape) * _shift_phases(
            centres[start:stop], shape
        )
        ctfs = ctf_stack(optics, offsets[start:stop].to(torch.float32), shape)
        total = total + (dfts * ctfs).sum(0)
    image = torch.fft.irfft2(total, s=shape)
    return image[margin : margin + image_shape[0], margin : margin + image_shape[1]]


def _expected_counts(phase: torch.Tensor, optics: Optics, dose: float) -> np.ndarray:
    per_pixel = dose * optics.pixel_size**2
    counts = per_pixel * (1.0 + 2.0 * phase.to(torch.float64))
    return counts.clamp_min(0.0).numpy()


def simulate_micrograph(
    volume: torch.Tensor, optics: Optics, params: SimulationParams
) -> Simulation:
    """Simulate a micrograph of randomly placed, randomly oriented particles.

    Orientations are uniform on SO(3) (Haar measure); positions are uniform, at
    least ``min_separation`` apart and half a box plus one pixel from the edges.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` potential at ``optics.pixel_size`` (see module doc for units).
    optics : Optics
        Micrograph optics (pixel size, CTF).
    params : SimulationParams
        Size, particle number, dose, noise and seed.

    Returns
    -------
    Simulation
    """
    t = int(volume.shape[-1])
    rng = np.random.default_rng(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    separation = 0.9 * t if params.min_separation is None else params.min_separation
    positions = place_particles(
        params.image_shape, params.n_particles, separation, t / 2 + 1, rng
    )
    rotations, angles = random_poses(params.n_particles, generator)
    defoci = optics.defocus_mean + params.defocus_spread * rng.standard_normal(
        params.n_particles
    )
    with torch.inference_mode():
        phase = render_phase_image(
            volume, optics, rotations, positions, defoci, params.image_shape
        )
    expected = _expected_counts(phase, optics, params.dose)
    noisy = rng.poisson(expected).astype(np.float64)
    if params.gaussian_noise:
        noisy = noisy + rng.normal(0.0, params.gaussian_noise, size=noisy.shape)
    truth = pd.DataFrame(
        {
            "x": positions[:, 0],
            "y": positions[:, 1],
            "phi": angles[:, 0].numpy(),
            "theta": angles[:, 1].numpy(),
            "psi": angles[:, 2].numpy(),
            "defocus": defoci,
        }
    )
    return Simulation(
        micrograph=noisy.astype(np.float32),
        noiseless=expected.astype(np.float32),
        truth=truth,
    )


__all__ = [
    "Simulation",
    "SimulationParams",
    "place_particles",
    "random_poses",
    "render_phase_image",
    "simulate_micrograph",
]
