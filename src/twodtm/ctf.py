"""The contrast transfer function (physics): CTF filter stacks and envelopes.

The CTF here is cisTEM's and CTFFIND4's (Rohou & Grigorieff 2015, J. Struct.
Biol. 192:216, eq. 1-3; Rickgauer et al. 2017, eLife 6:e25648, use the same):
``CTF(k) = -sin(chi(k))`` with
``chi = pi lambda df k^2 - (pi / 2) Cs lambda^3 k^4 + phase_shift + arcsin(A)``,
so that a raw micrograph (no contrast inversion) is ``1 + 2 CTF * phase``: at
underfocus (``df > 0``) the CTF is negative at low frequency and protein, whose
projected potential is positive, is dark. torch-ctf, which evaluates the formula,
returns ``+sin(chi)`` (RELION's sign, for contrast-inverted particle images);
``ctf_stack`` negates it. The search (``twodtm.search``), the local search
(``twodtm.local``) and the simulator build their filters from this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch_ctf import calculate_ctf_2d

__all__ = ["Optics", "ctf_stack", "electron_wavelength", "frequency_grid"]

# CODATA 2018 values, SI units (those torch-ctf computes its wavelength from).
_PLANCK = 6.62607015e-34  # J s
_ELECTRON_MASS = 9.1093837015e-31  # kg
_ELEMENTARY_CHARGE = 1.602176634e-19  # C
_SPEED_OF_LIGHT = 299792458.0  # m / s


@dataclass(frozen=True)
class Optics:
    """Microscope and micrograph optics.

    Attributes
    ----------
    pixel_size : float
        Micrograph pixel size, Angstrom.
    voltage : float
        Acceleration voltage, kV.
    spherical_aberration : float
        Cs, mm.
    amplitude_contrast : float
        Fraction of amplitude contrast in [0, 1].
    defocus_u, defocus_v : float
        Defocus along the major and minor axes, Angstrom, positive underfocus.
    astigmatism_angle : float
        Angle of the ``defocus_u`` axis from the x axis, degrees (CTFFIND/RELION).
    phase_shift : float
        Additional phase shift (phase plate), degrees.
    b_factor : float
        B-factor of the CTF envelope ``exp(-B k^2 / 4)``, Angstrom^2.

    Examples
    --------
    >>> optics = Optics(pixel_size=1.06, defocus_u=12000.0, defocus_v=11000.0)
    >>> optics.defocus_mean
    11500.0
    >>> optics.voltage, optics.spherical_aberration, optics.amplitude_contrast
    (300.0, 2.7, 0.07)
    """

    pixel_size: float
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_u: float = 10000.0
    defocus_v: float = 10000.0
    astigmatism_angle: float = 0.0
    phase_shift: float = 0.0
    b_factor: float = 0.0

    @property
    def defocus_mean(self) -> float:
        """Mean defocus in Angstrom."""
        return 0.5 * (self.defocus_u + self.defocus_v)


def electron_wavelength(voltage: float) -> float:
    """Relativistic electron wavelength in Angstrom at ``voltage`` kV.

    ``lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2)))`` (the relativistic de
    Broglie wavelength; Kirkland, Advanced Computing in Electron Microscopy,
    eq. 2.5), with CODATA 2018 constants, as torch-ctf evaluates it for
    ``ctf_stack``.

    Parameters
    ----------
    voltage : float
        Acceleration voltage, kV.

    Returns
    -------
    float
        Wavelength, Angstrom.

    Examples
    --------
    >>> round(electron_wavelength(300.0), 5)
    0.01969
    >>> round(electron_wavelength(200.0), 6)
    0.025079
    """
    energy = _ELEMENTARY_CHARGE * voltage * 1e3  # J
    rest = _ELECTRON_MASS * _SPEED_OF_LIGHT**2
    momentum = math.sqrt(2.0 * _ELECTRON_MASS * energy * (1.0 + energy / (2.0 * rest)))
    return _PLANCK / momentum * 1e10


def frequency_grid(
    shape: tuple[int, int], pixel_size: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Spatial frequency magnitude (1/Angstrom) on the rfft grid of ``shape``.

    Parameters
    ----------
    shape : tuple[int, int]
        ``(H, W)`` of the real-space image.
    pixel_size : float
        Angstrom per pixel.
    device : torch.device or str
        Where the grid is made.

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` float32, unshifted rfft layout (DC at [0, 0]).

    Examples
    --------
    A 4 x 4 image at 2 A per pixel: one step is 1 / (4 * 2 A), Nyquist 0.25 / A.

    >>> k = frequency_grid((4, 4), 2.0)
    >>> k.shape
    torch.Size([4, 3])
    >>> [round(float(v), 4) for v in (k[0, 1], k[0, 2], k[2, 2], k[3, 1])]
    [0.125, 0.25, 0.3536, 0.1768]
    """
    ky = torch.fft.fftfreq(shape[0], d=pixel_size, device=device)
    kx = torch.fft.rfftfreq(shape[1], d=pixel_size, device=device)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).to(torch.float32)


def ctf_stack(
    optics: Optics,
    defocus_offsets: torch.Tensor,
    image_shape: tuple[int, int],
) -> torch.Tensor:
    """Physical CTFs (``-sin(chi)``) at several defocus offsets on an rfft grid.

    The CTF is evaluated at the micrograph's nominal pixel size, always: a
    pixel-size search rescales the template, while the Thon rings of the data stay
    where CTFFIND fitted them, in pixel units (cisTEM keeps the CTF in pixel
    units the same way). A defocus found at a trial pixel size ``p'`` is thus in
    the nominal frame; the same rings at ``p'`` mean ``df (p' / p)^2``.

    Parameters
    ----------
    optics : Optics
        Micrograph optics; the offsets are added to both defocus_u and defocus_v.
    defocus_offsets : torch.Tensor
        ``(D,)`` offsets in Angstrom; the result lives on this tensor's device.
    image_shape : tuple[int, int]
        ``(H, W)`` of the real-space image.

    Returns
    -------
    torch.Tensor
        ``(D, H, W // 2 + 1)`` float32, unshifted rfft layout, with the B-factor
        envelope applied; negative at low frequency for underfocus.

    Examples
    --------
    The CTF at k = 0.1 / A (column 1 of a 40-pixel grid at 0.25 A per pixel)
    against the formula written out (CTFFIND4 eq. 1-3) at 300 kV, Cs 2.7 mm,
    amplitude contrast 0.07 and 15,000 A underfocus:

    >>> import math
    >>> optics = Optics(pixel_size=0.25, defocus_u=15000.0, defocus_v=15000.0)
    >>> ctf = ctf_stack(optics, torch.tensor([0.0, 500.0]), (40, 40))
    >>> ctf.shape
    torch.Size([2, 40, 21])
    >>> h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    >>> volts = 300e3
    >>> lam = h / math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c**2)))
    >>> lam = lam * 1e10  # Angstrom
    >>> k, cs = 0.1, 2.7e7  # 1/A; Cs in A
    >>> chi = (
    ...     math.pi * lam * 15000.0 * k**2
    ...     - math.pi / 2 * cs * lam**3 * k**4
    ...     + math.asin(0.07)
    ... )
    >>> round(-math.sin(chi), 4), round(float(ctf[0, 0, 1]), 4)
    (-0.1094, -0.1094)
    >>> abs(float(ctf[0, 0, 1]) + math.sin(chi)) < 1e-5
    True

    At DC only the amplitude contrast is left, ``-sin(arcsin(0.07))``:

    >>> round(float(ctf[1, 0, 0]), 6)
    -0.07
    """
    px = optics.pixel_size
    du, dv, angle = optics.defocus_u, optics.defocus_v, optics.astigmatism_angle
    if du < dv:  # torch-ctf needs defocus_u >= defocus_v
        du, dv, angle = dv, du, angle + 90.0
    offsets = defocus_offsets.detach().clone().to(torch.float64)
    defocus_um = (0.5 * (du + dv) + offsets) * 1e-4
    ctf = -calculate_ctf_2d(
        defocus=defocus_um.clone(),  # torch-ctf writes into this tensor
        astigmatism=0.5 * (du - dv) * 1e-4,
        astigmatism_angle=angle,
        voltage=optics.voltage,
        spherical_aberration=optics.spherical_aberration,
        amplitude_contrast=optics.amplitude_contrast,
        phase_shift=optics.phase_shift,
        pixel_size=px,
        image_shape=image_shape,
        rfft=True,
        fftshift=False,
    ).to(torch.float32)
    if optics.b_factor:
        k = frequency_grid(image_shape, px, defocus_offsets.device)
        ctf = ctf * torch.exp(-optics.b_factor * k**2 / 4.0)
    return ctf
