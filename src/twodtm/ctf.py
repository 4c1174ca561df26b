"""Contrast transfer function filter stacks and envelopes, in the microscope's sign.

The CTF here is cisTEM's (Rickgauer et al. 2017 use the same):
``CTF(k) = -sin(chi(k))`` with
``chi = pi lambda df k^2 - (pi / 2) Cs lambda^3 k^4 + phase_shift + arcsin(A)``,
so that a raw micrograph (no contrast inversion) is ``1 + 2 CTF * phase``: at
underfocus (``df > 0``) the CTF is negative at low frequency and protein, whose
projected potential is positive, is dark. torch-ctf, which evaluates the formula,
returns ``+sin(chi)`` (RELION's sign, for contrast-inverted particle images);
``ctf_stack`` negates it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_ctf import calculate_ctf_2d


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


def frequency_grid(
    shape: tuple[int, int], pixel_size: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Spatial frequency magnitude (1/Angstrom) on the rfft grid of ``shape``.

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` float32, unshifted rfft layout (DC at [0, 0]).
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
