"""An independent cryo-EM image simulator, the reference the search is checked against.

Nothing here comes from ``twodtm`` (nor from torch-ctf or torch-fourier-slice, which
twodtm builds on): the physics is written out from the literature with numpy and
scipy, so that a convention twodtm gets wrong (CTF sign, astigmatism angle, Euler
handedness, a transposed rotation, shifts) cannot be repeated here by sharing code.

Sources
-------
- Electron wavelength: relativistic de Broglie wavelength (e.g. Kirkland,
  *Advanced Computing in Electron Microscopy*, 2nd ed., eq. 2.5), CODATA 2018
  constants; cisTEM's ``WavelengthGivenAccelerationVoltage`` gives the same
  (``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` A, V in volts).
- CTF: cisTEM's ``CTF::Evaluate`` (Grant, Rohou & Grigorieff, eLife 2018;
  Rohou & Grigorieff, JSB 2015, CTFFIND4), as used for 2DTM by Rickgauer,
  Grigorieff & Denk, eLife 2017:
  ``CTF(k) = -sin(chi(k))``,
  ``chi = pi lambda df(a) k^2 - (pi / 2) Cs lambda^3 k^4 + phase_shift + arcsin(A)``,
  astigmatic defocus ``df(a) = (dU + dV) / 2 + (dU - dV) / 2 cos(2 (a - angle))``
  with ``a`` the azimuth of the frequency vector from the x axis (CTFFIND and
  RELION's ``rlnDefocusU/V/Angle``).
- Image formation: weak-phase approximation, expected counts
  ``dose * pixel_size^2 * (1 + 2 CTF * phase)`` (Rickgauer et al. 2017, methods;
  Himes & Grigorieff, IUCrJ 2021 for the simulator whose map units are used
  here), Poisson counting noise.
- Euler angles: RELION's ``Euler_angles2matrix(rot, tilt, psi)`` gives ``A``;
  RELION's ``Projector::project`` samples the map's DFT at ``A^-1 (kx, ky, 0)``,
  which in real space is ``p(x, y) = integral V(A^T (x, y, z)) dz``
  (Scheres, JMB 2012; Heymann, Chagoyen & Belnap, JSB 2005 for the convention).
  ``A^T = Rz(phi) Ry(theta) Rz(psi)``.

Layout conventions: maps are indexed ``[z, y, x]`` as mrcfile returns them,
images ``[y, x]`` (x = column), coordinates are 0-based pixels, the rotation and
projection centre is voxel ``t // 2`` on every axis. DFTs are numpy's, unshifted
(DC at ``[0, 0]``).

Map units: a simulated map (ttsim3d, Himes & Grigorieff 2021) holds the projected
phase per voxel: its sum along a line through the map is the phase shift of the
electron wave in radians. ``bin_map`` keeps those sums when it coarsens a map.
"""

from __future__ import annotations

from dataclasses import dataclass

import mrcfile
import numpy as np
from scipy import ndimage

# CODATA 2018 exact / recommended values, SI units.
_PLANCK = 6.62607015e-34  # J s
_ELECTRON_MASS = 9.1093837015e-31  # kg
_ELEMENTARY_CHARGE = 1.602176634e-19  # C
_SPEED_OF_LIGHT = 299792458.0  # m / s


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength, Angstrom.

    ``lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2)))`` (Kirkland 2020,
    eq. 2.5). 300 kV gives 0.019687 A, 200 kV 0.025079 A.

    Parameters
    ----------
    voltage_kv : float
        Acceleration voltage, kV.
    """
    energy = _ELEMENTARY_CHARGE * voltage_kv * 1e3  # J
    rest = _ELECTRON_MASS * _SPEED_OF_LIGHT**2
    momentum = np.sqrt(2.0 * _ELECTRON_MASS * energy * (1.0 + energy / (2.0 * rest)))
    return float(_PLANCK / momentum * 1e10)


def frequencies_2d(
    shape: tuple[int, int], pixel_size: float, rfft: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Frequency components ``(ky, kx)`` in 1/Angstrom on an unshifted DFT grid.

    Returns
    -------
    tuple of np.ndarray
        ``ky`` of shape ``(H, 1)`` and ``kx`` of shape ``(1, W)`` (or
        ``(1, W // 2 + 1)`` with ``rfft``), broadcasting to the grid.
    """
    ky = np.fft.fftfreq(shape[0], d=pixel_size)[:, None]
    if rfft:
        kx = np.fft.rfftfreq(shape[1], d=pixel_size)[None, :]
    else:
        kx = np.fft.fftfreq(shape[1], d=pixel_size)[None, :]
    return ky, kx


def ctf_2d(
    shape: tuple[int, int],
    pixel_size: float,
    *,
    voltage: float,
    cs_mm: float,
    amplitude_contrast: float,
    defocus_u: float,
    defocus_v: float,
    astigmatism_angle: float,
    phase_shift: float = 0.0,
    b_factor: float = 0.0,
    rfft: bool = False,
) -> np.ndarray:
    """The microscope's CTF (cisTEM's sign) on an unshifted DFT grid.

    ``CTF(k) = -sin(chi(k)) exp(-B k^2 / 4)`` with
    ``chi = pi lambda df(a) k^2 - (pi / 2) Cs lambda^3 k^4 + phase_shift + arcsin(A)``
    and ``df(a) = (dU + dV) / 2 + (dU - dV) / 2 cos(2 (a - angle))``, ``a`` the
    azimuth ``atan2(ky, kx)`` of the frequency (cisTEM ``CTF::Evaluate``,
    ``DefocusGivenAzimuth``; RELION's angle convention). Underfocus is positive:
    then the CTF is negative at low frequency (``-A`` at DC), and protein
    (positive phase) is dark in ``1 + 2 CTF phase``.

    Parameters
    ----------
    shape : tuple[int, int]
        ``(H, W)`` of the real-space image.
    pixel_size : float
        Angstrom per pixel.
    voltage : float
        kV.
    cs_mm : float
        Spherical aberration, mm.
    amplitude_contrast : float
        Fraction ``A`` in [0, 1).
    defocus_u, defocus_v : float
        Defocus along the azimuth ``astigmatism_angle`` and perpendicular to it,
        Angstrom, underfocus positive (either may be the larger).
    astigmatism_angle : float
        Degrees from the x axis (image columns) to the ``defocus_u`` axis.
    phase_shift : float
        Extra phase (phase plate), degrees.
    b_factor : float
        Envelope B-factor, Angstrom^2.
    rfft : bool
        Half grid ``(H, W // 2 + 1)`` of ``numpy.fft.rfft2`` instead of the full one.

    Returns
    -------
    np.ndarray
        ``(H, W)`` or ``(H, W // 2 + 1)`` float64.
    """
    ky, kx = frequencies_2d(shape, pixel_size, rfft)
    k2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx)
    defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * np.cos(
        2.0 * (azimuth - np.deg2rad(astigmatism_angle))
    )
    lam = electron_wavelength(voltage)
    cs = cs_mm * 1e7  # Angstrom
    chi = (
        np.pi * lam * defocus * k2
        - 0.5 * np.pi * cs * lam**3 * k2**2
        + np.deg2rad(phase_shift)
        + np.arcsin(amplitude_contrast)
    )
    return -np.sin(chi) * np.exp(-b_factor * k2 / 4.0)


def relion_euler_matrix(phi: float, theta: float, psi: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix(rot, tilt, psi)``, element by element.

    Parameters
    ----------
    phi, theta, psi : float
        rlnAngleRot, rlnAngleTilt, rlnAnglePsi, degrees.

    Returns
    -------
    np.ndarray
        ``(3, 3)`` matrix ``A`` (acting on ``(x, y, z)`` columns);
        ``A = Rz(-psi) Ry(-theta) Rz(-phi)``.
    """
    a, b, g = np.deg2rad([phi, theta, psi])
    ca, sa, cb, sb, cg, sg = (
        np.cos(a),
        np.sin(a),
        np.cos(b),
        np.sin(b),
        np.cos(g),
        np.sin(g),
    )
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def rotation_matrix(phi: float, theta: float, psi: float) -> np.ndarray:
    """``R = A^T = Rz(phi) Ry(theta) Rz(psi)``: the projection samples ``V(R r)``."""
    return relion_euler_matrix(phi, theta, psi).T


def project_map(
    volume: np.ndarray, phi: float, theta: float, psi: float, order: int = 3
) -> np.ndarray:
    """Projection ``p(x, y) = sum_z V(R (x, y, z))`` by real-space rotation.

    The map is resampled (``scipy.ndimage.map_coordinates``, cubic B-spline by
    default, zero outside) at ``R r`` for every voxel ``r`` of the output box,
    coordinates relative to voxel ``t // 2``, and summed along z. The result's
    pixel ``[t // 2, t // 2]`` is the projection of the rotation centre.

    Parameters
    ----------
    volume : np.ndarray
        ``(t, t, t)`` map indexed ``[z, y, x]`` (not modified).
    phi, theta, psi : float
        ZYZ Euler angles, degrees (RELION rot, tilt, psi).
    order : int
        Spline order of the interpolation (1: trilinear, 3: cubic).

    Returns
    -------
    np.ndarray
        ``(t, t)`` float64 indexed ``[y, x]``.
    """
    t = volume.shape[0]
    axis = np.arange(t, dtype=np.float64) - t // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.stack([x.ravel(), y.ravel(), z.ravel()])  # (3, t^3), rows x, y, z
    source = rotation_matrix(phi, theta, psi) @ r + t // 2
    zyx = source[::-1]  # map_coordinates wants [z, y, x] index order
    rotated = ndimage.map_coordinates(
        np.asarray(volume, dtype=np.float64), zyx, order=order, mode="constant"
    )
    return rotated.reshape(t, t, t).sum(axis=0)


def fourier_crop(volume: np.ndarray, size: int) -> np.ndarray:
    """Crop a cubic map's centred DFT to ``size^3``, keeping the mean value.

    Returns
    -------
    np.ndarray
        ``(size, size, size)`` float64 (values scaled so the mean is unchanged;
        the Nyquist planes of an even ``size`` are zeroed to keep the map real).
    """
    big = volume.shape[0]
    dft = np.fft.fftshift(np.fft.fftn(np.asarray(volume, dtype=np.float64)))
    start = big // 2 - size // 2
    block = dft[start : start + size, start : start + size, start : start + size]
    if size % 2 == 0:
        block = block.copy()
        block[0, :, :] = block[:, 0, :] = block[:, :, 0] = 0.0
    real = np.fft.ifftn(np.fft.ifftshift(block)).real
    return real * (size**3 / big**3)


def bin_map(
    volume: np.ndarray, pixel_size: float, box: int, size: int
) -> tuple[np.ndarray, float]:
    """Crop a map to ``box^3`` about voxel ``t // 2``, Fourier-bin it to ``size^3``.

    Sums along a line (projected phase, see the module doc) are kept: the
    values are multiplied by the binning factor ``box / size``.

    Returns
    -------
    tuple
        The ``(size,) * 3`` float64 map and its voxel size, Angstrom.
    """
    t = volume.shape[0]
    start = t // 2 - box // 2
    cropped = volume[start : start + box, start : start + box, start : start + box]
    factor = box / size
    return fourier_crop(cropped, size) * factor, pixel_size * factor


def blob_map(
    size: int, centres: np.ndarray, sigmas: np.ndarray, heights: np.ndarray
) -> np.ndarray:
    """A map of Gaussian blobs (an asymmetric test object).

    Parameters
    ----------
    size : int
        Box edge, voxels.
    centres : np.ndarray
        ``(n, 3)`` blob centres ``(x, y, z)`` in voxels relative to voxel ``size // 2``.
    sigmas, heights : np.ndarray
        ``(n,)`` widths (voxels) and peak values.

    Returns
    -------
    np.ndarray
        ``(size, size, size)`` float64 indexed ``[z, y, x]``.
    """
    axis = np.arange(size, dtype=np.float64) - size // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = np.zeros((size, size, size))
    for (cx, cy, cz), s, h in zip(centres, sigmas, heights, strict=True):
        r2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        volume += h * np.exp(-r2 / (2.0 * s**2))
    return volume


@dataclass(frozen=True)
class Particle:
    """One particle: centre (pixels, x = column), ZYZ angles (deg), defocus (A)."""

    x: float
    y: float
    phi: float
    theta: float
    psi: float
    defocus: float


@dataclass(frozen=True)
class Microscope:
    """Optics shared by every particle of a micrograph (units as in ``ctf_2d``).

    ``astigmatism`` is ``dU - dV`` (Angstrom); a particle at mean defocus ``df``
    has ``dU = df + astigmatism / 2`` and ``dV = df - astigmatism / 2``.
    """

    voltage: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    astigmatism: float = 0.0
    astigmatism_angle: float = 0.0
    phase_shift: float = 0.0
    b_factor: float = 0.0

    def ctf(
        self, shape: tuple[int, int], pixel_size: float, defocus: float
    ) -> np.ndarray:
        """``(H, W // 2 + 1)`` rfft-grid CTF at mean defocus ``defocus``."""
        return ctf_2d(
            shape,
            pixel_size,
            voltage=self.voltage,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
            defocus_u=defocus + 0.5 * self.astigmatism,
            defocus_v=defocus - 0.5 * self.astigmatism,
            astigmatism_angle=self.astigmatism_angle,
            phase_shift=self.phase_shift,
            b_factor=self.b_factor,
            rfft=True,
        )


@dataclass(frozen=True)
class SimulatedMicrograph:
    """Noisy counts, expected counts and the particles that made them.

    Attributes
    ----------
    counts : np.ndarray
        ``(H, W)`` float64 Poisson counts (electrons per pixel).
    expected : np.ndarray
        ``(H, W)`` float64 expected counts.
    phase : np.ndarray
        ``(H, W)`` float64 CTF-filtered phase (radians), summed over particles.
    particles : tuple[Particle, ...]
        Ground truth.
    """

    counts: np.ndarray
    expected: np.ndarray
    phase: np.ndarray
    particles: tuple[Particle, ...]


def shift_factors(shape: tuple[int, int], x: float, y: float) -> np.ndarray:
    """``(H, W // 2 + 1)`` rfft factors moving an image's origin to ``(x, y)`` px."""
    ky, kx = frequencies_2d(shape, 1.0, rfft=True)
    return np.exp(-2j * np.pi * (kx * x + ky * y))


def particle_dft(
    projection: np.ndarray, canvas: tuple[int, int], x: float, y: float
) -> np.ndarray:
    """rfft of a canvas with ``projection``'s pixel ``t // 2`` at ``(x, y)``."""
    t = projection.shape[0]
    image = np.zeros(canvas)
    image[:t, :t] = projection
    # Put the projection centre on pixel [0, 0], then shift it to (x, y).
    image = np.roll(image, (-(t // 2), -(t // 2)), axis=(0, 1))
    return np.fft.rfft2(image) * shift_factors(canvas, x, y)


def render_phase(
    volume: np.ndarray,
    pixel_size: float,
    shape: tuple[int, int],
    particles: tuple[Particle, ...],
    microscope: Microscope,
) -> np.ndarray:
    """CTF-filtered projected phase of all particles, radians.

    Every projection is placed on a canvas padded by the box size on each side
    (so delocalised signal neither wraps nor is cut at a box edge), moved to its
    sub-pixel centre by a Fourier phase ramp and filtered with the CTF at its
    own defocus at canvas size; the canvas is cropped back to ``shape``.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float64.
    """
    margin = volume.shape[0]
    canvas = (shape[0] + 2 * margin, shape[1] + 2 * margin)
    total = np.zeros((canvas[0], canvas[1] // 2 + 1), dtype=np.complex128)
    for p in particles:
        projection = project_map(volume, p.phi, p.theta, p.psi)
        dft = particle_dft(projection, canvas, p.x + margin, p.y + margin)
        total += dft * microscope.ctf(canvas, pixel_size, p.defocus)
    image = np.fft.irfft2(total, s=canvas)
    return image[margin : margin + shape[0], margin : margin + shape[1]]


def simulate_micrograph(
    volume: np.ndarray,
    pixel_size: float,
    shape: tuple[int, int],
    particles: tuple[Particle, ...],
    *,
    dose: float,
    microscope: Microscope,
    seed: int,
) -> SimulatedMicrograph:
    """A raw (not contrast-inverted) micrograph of the given particles.

    Expected counts ``dose * pixel_size^2 * (1 + 2 CTF * phase)`` (weak-phase
    approximation, Rickgauer et al. 2017), Poisson noise from
    ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    volume : np.ndarray
        ``(t, t, t)`` map in projected-phase units at ``pixel_size`` (not modified).
    pixel_size : float
        Angstrom per pixel (map and micrograph).
    shape : tuple[int, int]
        ``(H, W)``.
    particles : tuple[Particle, ...]
        Poses, sub-pixel centres and defoci.
    dose : float
        Electrons per square Angstrom.
    microscope : Microscope
        Optics.
    seed : int
        Noise seed.

    Returns
    -------
    SimulatedMicrograph
    """
    phase = render_phase(volume, pixel_size, shape, particles, microscope)
    expected = dose * pixel_size**2 * (1.0 + 2.0 * phase)
    counts = np.random.default_rng(seed).poisson(np.clip(expected, 0.0, None))
    return SimulatedMicrograph(
        counts=counts.astype(np.float64),
        expected=expected,
        phase=phase,
        particles=tuple(particles),
    )


def random_particles(
    n: int,
    shape: tuple[int, int],
    separation: float,
    margin: float,
    defoci: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Particle, ...]:
    """Particles at uniform positions ``separation`` apart, Haar-uniform poses.

    A Haar-uniform rotation in ZYZ angles has phi and psi uniform in [0, 360)
    and cos(theta) uniform in [-1, 1].

    Parameters
    ----------
    n : int
        Number of particles.
    shape : tuple[int, int]
        ``(H, W)``.
    separation : float
        Smallest centre distance, pixels.
    margin : float
        Smallest distance of a centre from the edge, pixels.
    defoci : np.ndarray
        ``(n,)`` mean defocus of each particle, Angstrom.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    tuple[Particle, ...]
    """
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = rng.uniform(
            [margin, margin], [shape[1] - 1 - margin, shape[0] - 1 - margin]
        )
        if all(np.hypot(*(c - o)) >= separation for o in centres):
            centres.append(c)
    phi = rng.uniform(0.0, 360.0, n)
    psi = rng.uniform(0.0, 360.0, n)
    theta = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return tuple(
        Particle(float(c[0]), float(c[1]), float(a), float(b), float(g), float(d))
        for c, a, b, g, d in zip(centres, phi, theta, psi, defoci, strict=True)
    )


def geodesic_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of ``a^T b`` in degrees for two ``(3, 3)`` rotations."""
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))


def matched_filter_snr(
    volume: np.ndarray,
    pixel_size: float,
    particle: Particle,
    microscope: Microscope,
    dose: float,
) -> float:
    """Expected z-score of a perfect template at a particle's exact pose.

    The signal is ``s = 2 dose px^2 (CTF * p)`` counts per pixel on a
    background of ``dose px^2`` counts with Poisson (white) noise of variance
    ``dose px^2``, so the matched filter's SNR is
    ``||s|| / sqrt(dose px^2) = 2 sqrt(dose px^2) ||CTF * p||``.
    """
    t = volume.shape[0]
    canvas = (3 * t, 3 * t)
    projection = project_map(volume, particle.phi, particle.theta, particle.psi)
    dft = particle_dft(projection, canvas, 0.0, 0.0)
    filtered = np.fft.irfft2(
        dft * microscope.ctf(canvas, pixel_size, particle.defocus), s=canvas
    )
    return float(2.0 * np.sqrt(dose * pixel_size**2) * np.linalg.norm(filtered))


def read_map(path: str) -> tuple[np.ndarray, float]:
    """Read an MRC map (mrcfile) as float64 ``[z, y, x]`` and its voxel size, A."""
    with mrcfile.open(path, permissive=True) as mrc:
        header = mrc.header
        if (int(header.mapc), int(header.mapr), int(header.maps)) != (1, 2, 3):
            raise ValueError(f"{path}: axis order is not x, y, z")
        return np.asarray(mrc.data, dtype=np.float64), float(mrc.voxel_size.x)


def write_mrc(path: str, data: np.ndarray, pixel_size: float) -> None:
    """Write a float32 MRC file (mrcfile) with the voxel size in its header."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.voxel_size = pixel_size


__all__ = [
    "Microscope",
    "Particle",
    "SimulatedMicrograph",
    "bin_map",
    "blob_map",
    "ctf_2d",
    "electron_wavelength",
    "fourier_crop",
    "frequencies_2d",
    "geodesic_distance",
    "matched_filter_snr",
    "particle_dft",
    "project_map",
    "random_particles",
    "read_map",
    "relion_euler_matrix",
    "render_phase",
    "rotation_matrix",
    "shift_factors",
    "simulate_micrograph",
    "write_mrc",
]
