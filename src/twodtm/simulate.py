"""Synthetic micrographs with known particles (ground truth for 2DTM).

Image model
-----------
The template map is taken in ttsim3d's units, where the sum of voxel values along
a line through the map is the phase shift of the electron wave in radians (ttsim3d
scales the potential by ``lambda / pixel_size**2``). Each particle's projection
``phi(x, y)`` is rendered with the search engine's own code
(``twodtm.search.engine.project`` and ``padded_dft``) so the engine finds it at the
stated pose, shifted to its (sub-pixel) position in Fourier space, and filtered by
the CTF at its own defocus on the whole (margin-padded) image, so delocalised
signal is neither cut at a box edge nor wrapped around the image. In the weak-phase
approximation the expected count per pixel is::

    counts = dose * pixel_size**2 * (1 + 2 * (CTF * phi))

(``dose`` in e/A^2; the factor 2 is the weak-phase intensity term; the CTF is the
microscope's, ``-sin(chi)`` (``ctf.ctf_stack``), so particles at underfocus are
dark, as in a raw micrograph). Counts are Poisson distributed,
optionally plus Gaussian read noise. The matched-filter SNR of a particle is then
``2 * sqrt(dose * integral (CTF * phi)^2 dA)``: it grows as ``sqrt(dose)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ttsim3d.models import Simulator, SimulatorConfig

from twodtm.config import SimulateConfig
from twodtm.ctf import Optics, ctf_stack
from twodtm.errors import ConfigError, InputDataError, InputFileError
from twodtm.io.mrc import read_mrc, write_mrc
from twodtm.io.tables import write_star_table
from twodtm.orientations import matrix_to_euler, random_rotations
from twodtm.preprocess import PreparedImage, prepare_template
from twodtm.search.engine import SearchInputs, build_search_inputs, padded_dft, project
from twodtm.search.space import SearchSpace

_BATCH = 8
_MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent", ".pdb.gz", ".cif.gz")
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


def fourier_bin(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Reduce a ``(t k)^3`` map to ``t^3`` by Fourier cropping (pixel size x ``k``).

    Values are scaled by ``1 / k**2`` so that sums along z (projected phase per
    pixel, see the module doc) are unchanged.

    Returns
    -------
    torch.Tensor
        ``(t, t, t)`` float32 (the input is not modified).
    """
    big = int(volume.shape[-1])
    small = big // factor
    dims = (-3, -2, -1)
    dft = torch.fft.fftshift(torch.fft.fftn(volume.to(torch.float64)), dim=dims)
    start = big // 2 - small // 2
    cropped = dft[start : start + small, start : start + small, start : start + small]
    real = torch.fft.ifftn(torch.fft.ifftshift(cropped, dim=dims)).real
    return (real * (small**3 / big**3) * factor).to(torch.float32)


def map_from_model(
    path: str | os.PathLike[str],
    pixel_size: float,
    box_size: int,
    b_factor: float = 0.0,
    voltage: float = 300.0,
    *,
    filters: SimulatorConfig | None = None,
) -> torch.Tensor:
    """Simulate the 3D potential of an atomic model (PDB/mmCIF) with ttsim3d.

    ttsim3d's scale is calibrated at voxel sizes of at most 1 A (where the z-sum
    of a map is the phase shift in radians, e.g. 0.26 rad through apoferritin), so
    the map is simulated at ``pixel_size / k`` with ``k = ceil(pixel_size)`` and
    Fourier-binned by ``k``.

    Parameters
    ----------
    path : str or PathLike
        PDB or mmCIF file; atoms are centred on their mean position.
    pixel_size : float
        Voxel size, Angstrom.
    box_size : int
        Edge of the cubic box, voxels.
    b_factor : float
        Extra B-factor added to every atom, A^2.
    voltage : float
        Acceleration voltage, kV.
    filters : ttsim3d.models.SimulatorConfig, optional
        ttsim3d's dose-weighting and detector filters (its voltage is replaced by
        ``voltage``); default: a K2 MTF/DQE and 0-30 e/A^2 dose weighting. The MTF
        acts in inverse voxels of the simulation, at ``pixel_size / k``.

    Returns
    -------
    torch.Tensor
        ``(box_size,) * 3`` float32 potential (ttsim3d units, see module doc),
        with the filters applied.
    """
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"{file}: atomic model not found; check the path.")
    factor = max(1, math.ceil(pixel_size - 1e-9))
    size = box_size * factor
    simulator = Simulator(
        pdb_filepath=file,
        pixel_spacing=pixel_size / factor,
        volume_shape=(size, size, size),
        additional_b_factor=b_factor,
        simulator_config=(
            filters or SimulatorConfig(mtf_reference="k2_300kv")
        ).model_copy(update={"voltage": voltage}),
    )
    with torch.inference_mode():
        volume = simulator.run(device="cpu").detach().clone()
    return fourier_bin(volume, factor) if factor > 1 else volume.to(torch.float32)


def _frequency_3d(size: int, pixel_size: float) -> torch.Tensor:
    k = torch.fft.fftfreq(size, d=pixel_size)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kz**2 + ky**2 + kx**2)


def degrade_volume(
    volume: torch.Tensor,
    pixel_size: float,
    b_factor: float = 0.0,
    resolution: float | None = None,
) -> torch.Tensor:
    """Return a copy of a map blurred by a B-factor and/or low-pass filtered.

    Used to give the search a template that differs from the simulated particles,
    as real templates do.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` map (not modified).
    pixel_size : float
        Voxel size, Angstrom.
    b_factor : float
        Envelope ``exp(-B k^2 / 4)``, A^2 (0: none).
    resolution : float or None
        Frequencies finer than ``1 / resolution`` (Angstrom) are set to zero.

    Returns
    -------
    torch.Tensor
        ``(t, t, t)`` float32.
    """
    if not b_factor and resolution is None:
        return volume.detach().clone().to(torch.float32)
    k = _frequency_3d(volume.shape[-1], pixel_size)
    weight = torch.exp(-b_factor * k**2 / 4.0)
    if resolution is not None:
        weight = torch.where(k <= 1.0 / resolution, weight, torch.zeros_like(weight))
    dft = torch.fft.fftn(volume.to(torch.float64))
    return torch.fft.ifftn(dft * weight).real.to(torch.float32)


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


def _projector(volume: torch.Tensor, optics: Optics) -> SearchInputs:
    """Engine inputs that only serve ``engine.project`` (no image attached)."""
    t = int(volume.shape[-1])
    dummy = PreparedImage(
        whitened_dft=torch.zeros((t, t // 2 + 1), dtype=torch.complex64),
        template_filter=torch.ones((t, t // 2 + 1)),
        padded_shape=(t, t),
        shape=(t, t),
    )
    space = SearchSpace(
        euler_angles=torch.zeros((1, 3), dtype=torch.float64),
        defocus_offsets=torch.zeros(1, dtype=torch.float64),
        pixel_sizes=torch.tensor([optics.pixel_size], dtype=torch.float64),
    )
    return build_search_inputs(prepare_template(volume), t, dummy, optics, space)


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
    inputs = _projector(volume, optics)
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


def write_simulation(
    sim: Simulation,
    directory: str | os.PathLike[str],
    template_volume: torch.Tensor | np.ndarray,
    pixel_size: float,
) -> dict[str, Path]:
    """Write ``micrograph.mrc``, ``template.mrc`` and ``truth.star`` (atomically each).

    Returns
    -------
    dict[str, Path]
        The paths written, keyed ``micrograph``, ``template``, ``truth``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "micrograph": out / "micrograph.mrc",
        "template": out / "template.mrc",
        "truth": out / "truth.star",
    }
    template = np.asarray(
        template_volume.detach().cpu().numpy()
        if isinstance(template_volume, torch.Tensor)
        else template_volume,
        dtype=np.float32,
    )
    write_mrc(paths["micrograph"], sim.micrograph, pixel_size)
    write_mrc(paths["template"], template, pixel_size)
    write_star_table(sim.truth, paths["truth"], micrograph_name="micrograph.mrc")
    return paths


def load_volume(config: SimulateConfig) -> torch.Tensor:
    """Load the map to simulate: ttsim3d for an atomic model, else the MRC map.

    Raises
    ------
    ConfigError
        A model without ``box_size``.
    InputDataError
        A map that is not cubic or whose pixel size differs from the micrograph's.
    """
    path = Path(config.template)
    pixel_size = config.optics.pixel_size
    if path.name.lower().endswith(_MODEL_SUFFIXES):
        if config.box_size is None:
            raise ConfigError(
                f"{path}: simulating an atomic model needs a box size; pass --box-size "
                "(e.g. the particle diameter in pixels plus 20%)"
            )
        return map_from_model(
            path, pixel_size, config.box_size, config.simulation_b_factor
        )
    mrc = read_mrc(path)
    if mrc.data.ndim != 3 or len(set(mrc.data.shape)) != 1:
        raise InputDataError(f"{path}: expected a cubic 3D map, found {mrc.data.shape}")
    if mrc.pixel_size > 0 and abs(mrc.pixel_size - pixel_size) > 0.01 * pixel_size:
        raise InputDataError(
            f"{path}: map pixel size {mrc.pixel_size:g} A differs from --pixel-size "
            f"{pixel_size:g} A; resample the map or simulate from the atomic model"
        )
    return torch.from_numpy(mrc.data)


def run_simulate_config(config: SimulateConfig) -> dict[str, Path]:
    """Simulate and write micrograph.mrc, template.mrc and truth.star as configured."""
    optics = config.optics.to_optics()
    volume = load_volume(config)
    params = SimulationParams(
        image_shape=config.image_size,
        n_particles=config.particle_count(),
        dose=config.dose,
        defocus_spread=config.defocus_spread,
        gaussian_noise=config.gaussian_noise,
        min_separation=config.min_separation,
        seed=config.seed,
    )
    sim = simulate_micrograph(volume, optics, params)
    template = degrade_volume(
        volume, optics.pixel_size, config.template_b_factor, config.template_resolution
    )
    return write_simulation(sim, config.output, template, optics.pixel_size)


__all__ = [
    "Simulation",
    "SimulationParams",
    "degrade_volume",
    "fourier_bin",
    "load_volume",
    "map_from_model",
    "place_particles",
    "random_poses",
    "render_phase_image",
    "run_simulate_config",
    "simulate_micrograph",
    "write_simulation",
]
