"""The template volume's Fourier transform, laid out for central-slice extraction."""

from __future__ import annotations

import torch
from torch.nn.functional import pad as zero_pad

__all__ = ["prepare_template"]


def prepare_template(volume: torch.Tensor, pad_factor: float = 2.0) -> torch.Tensor:
    """Fourier transform of a cubic template laid out for central-slice extraction.

    The volume is made zero at its faces, zero-padded by ``pad_factor``, divided by
    the sinc^2 of trilinear interpolation, and transformed with its centre at the
    origin. The result is rfftn with the two full axes fftshifted, as
    torch-fourier-slice's ``extract_central_slices_rfft_3d`` (and the engine's
    ``central_slices``) expects. For an even padded size the padded volume is
    never built: the output is the only array of its size (4.3 GB for t = 512
    and padding 2), besides the t^3 map.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` real map, centre at voxel ``t // 2`` (not modified).
    pad_factor : float
        Real-space oversampling before the transform (>= 1).

    Returns
    -------
    torch.Tensor
        ``(p, p, p // 2 + 1)`` complex64 with ``p = t + 2 * floor(t (pad - 1) / 2)``
        (``8 p^2 (p // 2 + 1)`` bytes).

    Examples
    --------
    A unit point at the centre voxel moves to the origin, so its transform is 1
    at every frequency (even and odd padded sizes alike):

    >>> point = torch.zeros(16, 16, 16)
    >>> point[8, 8, 8] = 1.0
    >>> dft = prepare_template(point)
    >>> dft.shape, dft.dtype
    (torch.Size([32, 32, 17]), torch.complex64)
    >>> torch.allclose(dft, torch.ones_like(dft))
    True
    >>> odd = torch.zeros(15, 15, 15)
    >>> odd[7, 7, 7] = 1.0
    >>> dft = prepare_template(odd)
    >>> dft.shape, torch.allclose(dft, torch.ones_like(dft), atol=1e-6)
    (torch.Size([29, 29, 15]), True)
    """
    t = volume.shape[-1]
    faces = torch.cat(
        [
            volume[[0, -1]].flatten(),
            volume[:, [0, -1]].flatten(),
            volume[..., [0, -1]].flatten(),
        ]
    )
    vol = volume.to(torch.float32) - faces.mean()
    pad = int(t * (pad_factor - 1.0)) // 2
    p = t + 2 * pad
    factor = _sinc2(p, vol.device)[pad : pad + t]
    vol.div_(factor[:, None, None]).div_(factor[:, None]).div_(factor)
    if p % 2:
        vol = torch.fft.ifftshift(zero_pad(vol, [pad] * 6), dim=(-3, -2, -1))
        return _fftshift_full_axes(torch.fft.rfftn(vol, dim=(-3, -2, -1)))
    return _even_padded_transform(vol, pad)


def _sinc2(p: int, device: torch.device) -> torch.Tensor:
    """Trilinear interpolation's ``sinc^2`` along one axis of a p box, centre p // 2.

    torch-fourier-slice's ``separable_sinc2_correction`` is its outer product.
    """
    return torch.sinc(torch.fft.fftshift(torch.fft.fftfreq(p, device=device))) ** 2


def _even_padded_transform(vol: torch.Tensor, pad: int) -> torch.Tensor:
    """``prepare_template``'s output for an even padded size, from the t^3 map.

    Both shifts by p / 2 are signs (p even): the centre to the origin multiplies
    frequency k by ``(-1)^(kx + ky + kz)``, and the fftshift of the ky, kz axes
    is the real-space factor ``(-1)^(y + z)``. The zero padding is never
    materialised: rows are transformed along x into their place in the output,
    then the output is transformed along y (only the map's planes) and z in place.
    ``vol`` (corrected, ``(t, t, t)``) is overwritten.
    """
    t = int(vol.shape[-1])
    p = t + 2 * pad
    vol[1::2].neg_()  # (-1)^(y + z); the pad is even, so parities are unchanged
    vol[:, 1::2].neg_()
    dft = torch.zeros((p, p, p // 2 + 1), dtype=torch.complex64, device=vol.device)
    rows = torch.zeros((t, p), dtype=torch.float32, device=vol.device)
    for z in range(t):
        rows[:, pad : pad + t] = vol[z]
        dft[pad + z, pad : pad + t] = torch.fft.rfft(rows, dim=-1)
    for z in range(pad, pad + t):  # the other planes are zero
        dft[z] = torch.fft.fft(dft[z], dim=0)
    for y in range(p):
        dft[:, y] = torch.fft.fft(dft[:, y], dim=0)
    dft[1::2].neg_()  # (-1)^(kx + ky + kz): the centre voxel to the origin
    dft[:, 1::2].neg_()
    dft[:, :, 1::2].neg_()
    return dft


def _fftshift_full_axes(dft: torch.Tensor) -> torch.Tensor:
    """``dft`` fftshifted along its two full axes (0, 1), as complex64.

    Written block by block into the result: no intermediate copy (``torch.fft.
    fftshift`` over two axes makes two).
    """
    p = int(dft.shape[0])
    s = p // 2  # fftshift: out[(i + s) % p] = in[i]
    shifted = torch.empty(dft.shape, dtype=torch.complex64, device=dft.device)
    blocks = ((slice(0, p - s), slice(s, p)), (slice(p - s, p), slice(0, s)))
    for source_z, target_z in blocks:
        for source_y, target_y in blocks:
            shifted[target_z, target_y] = dft[source_z, source_y]
    return shifted
