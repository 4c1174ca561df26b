"""Template projections: central slices of the Fourier-padded template.

Per orientation the template DFT is sampled on a central plane (the Fourier
slice theorem; sampler and conventions of teamtomo's torch-fourier-slice) at the
frequencies of the smallest box that holds the projections (``projection_box``,
usually the template's own box t rather than the padded 2t: 4x fewer samples and
a 4x smaller inverse transform), transformed back and cropped to t
(``project``). ``padded_dft`` places such a box at the origin of an image and
transforms it with a pruned FFT.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

__all__ = [
    "BOX_ENERGY_TOLERANCE",
    "Projector",
    "central_slices",
    "compact_template",
    "compiled_slices",
    "is_compact",
    "padded_dft",
    "project",
    "projection_box",
]


@dataclass(frozen=True)
class Projector:
    """What ``project`` needs: the padded template and the box sizes.

    Attributes
    ----------
    template_dft : torch.Tensor
        ``(p, p, p // 2 + 1)`` complex64 template from
        ``preprocess.prepare_template``, on the device projections are made on,
        or its ``compact_template`` (compiled sampling only).
    template_size : int
        Box size t of the projections (before the template's Fourier padding).
    slice_size : int
        Box m in which projections are formed before the crop to t: 0 for the
        padded size p (exact whatever the map), else ``projection_box`` of the
        map, t for a map inside its inscribed sphere.
    compiled : bool
        Sample the slices with the compiled kernel (``compiled_slices``; the
        values agree with the eager sampler's to float32 rounding).
    """

    template_dft: torch.Tensor
    template_size: int
    slice_size: int = 0
    compiled: bool = False


def _planar_template(template_dft: torch.Tensor) -> torch.Tensor:
    """View a complex ``(p, p, q)`` template as ``(2, p, p, q)`` real channels.

    No copy: the two parts of a voxel stay side by side in memory (channel
    stride 1), which the sampler reads 1.2-1.3x faster than two separate
    volumes (measured at t = 256, padding 2). A real ``(2, p, p, q)`` tensor is
    returned as it is.
    """
    if template_dft.is_complex():
        return torch.view_as_real(template_dft).permute(3, 0, 1, 2)
    return template_dft


def _slice_frequencies(size: int, device: torch.device) -> torch.Tensor:
    """``(size, size // 2 + 1, 2)`` frequencies ``(ky, kx)`` of a ``size`` box's rfft2.

    Cycles per voxel, unshifted layout (``fftfreq`` rows, ``rfftfreq`` columns).
    """
    ky = torch.fft.fftfreq(size, device=device)[:, None]
    kx = torch.fft.rfftfreq(size, device=device)[None, :]
    return torch.stack(torch.broadcast_tensors(ky, kx), dim=-1)


def _redundant_half(
    x: torch.Tensor, matrices: torch.Tensor, tolerance: float = 1e-8
) -> torch.Tensor:
    """Where a rotated frequency falls in the half the rfft grid leaves out.

    As torch-fourier-slice 0.6.0 decides it: ``kx < -tolerance``, and on the
    plane ``|kx| < tolerance`` by the sign of the matrix element that moves
    points off it (``R[0, 0]``, else ``R[0, 1]``), so that a point and its
    Friedel mate are never both taken from the stored half.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, n)`` rotated x frequencies.
    matrices : torch.Tensor
        ``(B, 3, 3)`` xyz rotation matrices that rotated them.
    """
    r_xx = matrices[:, 0, 0, None]
    r_xy = matrices[:, 0, 1, None]
    edge = torch.where(r_xx.abs() > 10 * tolerance, r_xx < 0, r_xy < 0)
    return (x < -tolerance) | ((x.abs() < tolerance) & edge)


def _array_coordinates(
    matrices: torch.Tensor, frequencies: torch.Tensor, p: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each slice point is read in the ``(p, p, q)`` template: zyx and flip.

    Parameters
    ----------
    matrices : torch.Tensor
        ``(B, 3, 3)`` float32 xyz rotation matrices (possibly scaled); entries
        below 1e-8 count as 0, so that points on the kx = 0 plane stay on it.
    frequencies : torch.Tensor
        ``(n, 2)`` slice frequencies ``(ky, kx)`` in cycles per voxel.
    p : int
        Padded box of the template.

    Returns
    -------
    tuple of torch.Tensor
        ``(B, n)`` array coordinates z, y, x (DC at ``p // 2`` on the full axes,
        at 0 on x) of the point or, where ``(B, n)`` ``flip`` is set
        (``_redundant_half``), of its Friedel mate, whose value is conjugated.
    """
    m = torch.where(matrices.abs() < 1e-8, torch.zeros_like(matrices), matrices)
    ky, kx = frequencies[:, 0], frequencies[:, 1]
    # rotated (x, y, z) of the slice point (kx, ky, 0), one element at a time
    rotated = [m[:, i, 0, None] * kx + m[:, i, 1, None] * ky for i in range(3)]
    flip = _redundant_half(rotated[0], m)
    sign = torch.where(flip, -1.0, 1.0)
    centre = float(p // 2)
    z = rotated[2] * sign * p + centre
    y = rotated[1] * sign * p + centre
    return z, y, rotated[0] * sign * p, flip


def _trilinear(volume: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``(B, n, C)`` of a ``(C, d, h, w)`` volume at ``(B, n, 3)``.

    What ``torch_image_interpolation.sample_image_3d`` computes (the same
    ``grid_sample`` call and conventions: zyx array coordinates, border padding,
    zero outside ``[0, N - 1]``), with one batch element per row of
    ``coordinates`` against a stride-0 view of the volume (no copy): the CPU
    kernel spreads batch elements over threads, where ``sample_image_3d``'s
    single one runs on one thread (1.4x faster on 2 busy cores). Every point is
    computed alone, so no sample depends on the batch.
    """
    shape = torch.tensor(volume.shape[-3:], device=volume.device, dtype=torch.float32)
    grid = (coordinates / (0.5 * shape - 0.5) - 1.0).flip(-1)  # xyz in [-1, 1]
    batch = int(coordinates.shape[0])
    samples = torch.nn.functional.grid_sample(
        volume.expand(batch, *volume.shape),
        grid[:, None, None],
        mode="bilinear",  # trilinear on 5-D input
        padding_mode="border",
        align_corners=True,
    )[:, :, 0, 0]  # (B, C, n)
    inside = ((coordinates >= 0) & (coordinates <= shape - 1)).all(-1)
    return (samples * inside[:, None]).transpose(1, 2).contiguous()


def _gathered_slices(
    voxels: torch.Tensor,
    matrices: torch.Tensor,
    frequencies: torch.Tensor,
    p: int,
    q: int,
) -> torch.Tensor:
    """``central_slices``'s samples as one pass of gathers, written to be compiled.

    The same points (``_array_coordinates``), half-grid rule and trilinear
    weights as ``central_slices`` with ``_trilinear``, interpolated at the
    array coordinates directly (no
    normalisation to [-1, 1] and back, hence float32-rounding differences of
    about 1e-6 of the largest value). Under ``torch.compile`` the rotation, the
    eight gathers and the conjugation are one loop over the points: 2.3-2.8x
    faster than ``grid_sample`` on 2 CPU cores at t = 128 and 256, padding 2
    (``benchmarks/RESULTS.md``), whose kernel also walks every point several
    times. Eager and compiled calls give the same bits on the CPU (tested).

    Parameters
    ----------
    voxels : torch.Tensor
        ``(2 p p q,)`` float32 or bfloat16: the contiguous complex ``(p, p, q)``
        template viewed as interleaved real and imaginary parts (read in
        float32).
    matrices : torch.Tensor
        ``(B, 3, 3)`` float32 xyz rotation matrices (possibly scaled).
    frequencies : torch.Tensor
        ``(n, 2)`` slice frequencies ``(ky, kx)`` in cycles per voxel.
    p, q : int
        Template grid ``(p, p, q)``.

    Returns
    -------
    torch.Tensor
        ``(B, n, 2)`` float32 real and imaginary parts of each sample.
    """
    z, y, x, flip = _array_coordinates(matrices, frequencies, p)
    inside = (z >= 0) & (z <= p - 1) & (y >= 0) & (y <= p - 1)
    inside = inside & (x >= 0) & (x <= q - 1)
    z0, y0, x0 = z.floor(), y.floor(), x.floor()
    fz, fy, fx = z - z0, y - y0, x - x0
    iz, iy, ix = z0.long(), y0.long(), x0.long()
    real = torch.zeros_like(x)
    imag = torch.zeros_like(x)
    # corners past the last voxel have weight 0 or lie outside: clamped reads
    for dz in (0, 1):
        wz = fz if dz else 1.0 - fz
        cz = (iz + dz).clamp(0, p - 1)
        for dy in (0, 1):
            wy = fy if dy else 1.0 - fy
            cy = (iy + dy).clamp(0, p - 1)
            for dx in (0, 1):
                wx = fx if dx else 1.0 - fx
                cx = (ix + dx).clamp(0, q - 1)
                at = ((cz * p + cy) * q + cx) * 2
                weight = wz * wy * wx
                real = real + weight * voxels[at].float()
                imag = imag + weight * voxels[at + 1].float()
    real = torch.where(inside, real, 0.0)
    imag = torch.where(inside, torch.where(flip, -imag, imag), 0.0)
    return torch.stack([real, imag], dim=-1)


@cache
def _compiled_gather() -> Callable[..., torch.Tensor]:
    """``_gathered_slices`` compiled (once per process; shapes become dynamic)."""
    return torch.compile(_gathered_slices, fullgraph=True)


# Device types whose compile failed: the process runs the same gathers eagerly
# from then on (on the CPU the same bits), rather than failing the search.
_UNCOMPILED: set[str] = set()


def _gather(device: torch.device) -> Callable[..., torch.Tensor]:
    """Return the compiled gathers, or eager ones where the compile failed."""
    if device.type in _UNCOMPILED:
        return _gathered_slices
    compiled = _compiled_gather()

    def gather(*args: Any) -> torch.Tensor:  # _gathered_slices' arguments
        try:
            return compiled(*args)
        except torch._dynamo.exc.TorchDynamoException as error:
            warnings.warn(
                f"the compiled slice sampler failed on {device.type} ({error!r}); "
                "its gathers run uncompiled from now on",
                RuntimeWarning,
                stacklevel=3,
            )
            _UNCOMPILED.add(device.type)
            return _gathered_slices(*args)

    return gather


def compact_template(template_dft: torch.Tensor) -> torch.Tensor:
    """Return the template in half the memory: ``(p, p, q, 2)`` bfloat16 parts.

    Read only by the compiled sampler, which interpolates in float32. bfloat16
    keeps 8 bits of mantissa: the slices of a random volume differ from the
    complex64 template's by 0.17 % (rms), which lowers a correlation by about
    1e-6 of itself; the z-scores of true particles moved by less than 0.01 %
    (``benchmarks/RESULTS.md``). At t = 512, padding 2, the template takes
    2.2 GB instead of 4.3; sampling it was as fast (9.2 against 9.5 ms per
    orientation, 2 CPU cores).
    """
    return torch.view_as_real(template_dft).to(torch.bfloat16).contiguous()


def is_compact(template_dft: torch.Tensor) -> bool:
    """Whether ``template_dft`` is a ``compact_template``."""
    return template_dft.dtype == torch.bfloat16


def compiled_slices(
    template_dft: torch.Tensor, matrices: torch.Tensor, size: int
) -> torch.Tensor:
    """``central_slices`` through the compiled sampler (``_gathered_slices``).

    Parameters and result as ``central_slices``; ``template_dft`` is the
    contiguous complex ``(p, p, q)`` template or its ``compact_template``. The
    first call of a process compiles the kernel (seconds), so it pays only for
    long searches.
    """
    if is_compact(template_dft):
        voxels = template_dft.view(-1)
    elif template_dft.is_complex() and template_dft.is_contiguous():
        voxels = torch.view_as_real(template_dft).view(-1)
    else:
        raise ValueError("compiled_slices: needs the contiguous complex template")
    p, q = int(template_dft.shape[0]), int(template_dft.shape[2])
    frequencies = _slice_frequencies(size, template_dft.device).reshape(-1, 2)
    samples = _gather(template_dft.device)(voxels, matrices, frequencies, p, q)
    return torch.view_as_complex(samples).reshape(-1, size, size // 2 + 1)


def central_slices(
    template_dft: torch.Tensor, matrices: torch.Tensor, size: int
) -> torch.Tensor:
    """Central slices of the template DFT on the rfft grid of a ``size`` box.

    The slice at frequency k of rotation R is the template DFT at ``R (kx, ky,
    0)``, read by trilinear interpolation (``_trilinear``, torch-fourier-slice's
    sampler) from the padded ``(p, p, q)`` grid. With ``size = p`` this is
    torch-fourier-slice's slice of an even box; ``size = t < p`` samples every
    ``p / t``-th frequency, whose inverse transform is the p-box projection
    folded onto the t box (see ``project``). Frequencies in the half the rfft
    grid leaves out are read at ``-k`` and conjugated. Each frequency is sampled
    on its own (elementwise arithmetic): a slice does not depend on the other
    rotations of the batch.

    Parameters
    ----------
    template_dft : torch.Tensor
        ``prepare_template`` output: complex ``(p, p, q)``, the two full axes
        fftshifted (or its ``_planar_template`` view).
    matrices : torch.Tensor
        ``(B, 3, 3)`` float32 xyz rotation matrices, possibly scaled (not
        modified).
    size : int
        Box size of the slices.

    Returns
    -------
    torch.Tensor
        ``(B, size, size // 2 + 1)`` complex64, unshifted rfft2 layout.
    """
    volume = _planar_template(template_dft)
    p = int(volume.shape[-3])
    k = _slice_frequencies(size, volume.device).reshape(-1, 2)
    z, y, x, flip = _array_coordinates(matrices, k, p)
    values = torch.view_as_complex(_trilinear(volume, torch.stack([z, y, x], -1)))
    values = torch.where(flip, values.conj(), values)
    return values.reshape(-1, size, size // 2 + 1)


# Share of a map's energy (squared deviation from its faces' mean) that may lie
# outside the projection box and fold back in: the correlation changes by about
# half of it (5e-4), below the 0.1-0.4 % the interpolation's folded ghosts cost.
BOX_ENERGY_TOLERANCE = 1e-3


def projection_box(
    volume: torch.Tensor,
    padded_size: int,
    tolerance: float = BOX_ENERGY_TOLERANCE,
) -> int:
    """Smallest box, from t to p, that holds every projection of a map.

    The map's energy (squared deviation from the faces' mean, which
    ``prepare_template`` subtracts) is summed by distance from the centre voxel
    ``t // 2``; r is the radius outside which at most ``tolerance`` of it lies
    (a map's faint ringing or noise reaches every corner, so not every voxel
    can be held). Every projection of what lies inside lies within the disc of
    radius r about the box centre, which an even box of ``2 ceil(r) + 2``
    pixels (offsets ``-m / 2`` to ``m / 2 - 1``) holds. A map inside its
    inscribed sphere gets t.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` map (not modified).
    padded_size : int
        p of its ``prepare_template`` output (the largest box returned).
    tolerance : float
        Share of the energy allowed outside radius r.

    Returns
    -------
    int
        The box size m, ``t <= m <= p``, even or t itself.

    Examples
    --------
    A blob inside the inscribed sphere keeps the template's box; one that fills
    the corners needs up to the padded box:

    >>> axis = torch.arange(32.0) - 16
    >>> r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis**2
    >>> projection_box((-r2 / 18.0).exp(), 64)
    32
    >>> noise = torch.rand(32, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> projection_box(noise, 64)
    56
    """
    t = int(volume.shape[-1])
    energy = _radial_energy(volume)
    outside = energy.flip(0).cumsum(0).flip(0)  # energy at radius >= each bin
    total = float(outside[0])
    if total <= 0.0:
        return t
    # smallest integer radius r with the energy beyond it within the tolerance
    radius = int((outside > tolerance * total).nonzero().max())
    needed = 2 * radius + 2
    return t if needed <= t else min(padded_size, needed)


def _radial_energy(volume: torch.Tensor) -> torch.Tensor:
    """Squared deviation from the faces' mean, summed in shells ``ceil(r) = k``.

    One z plane at a time (no t^3 radius array). Returns a float64 ``(K,)``.
    """
    t = int(volume.shape[-1])
    faces = torch.cat(
        [volume[[0, -1]].flatten(), volume[:, [0, -1]].flatten()]
        + [volume[..., [0, -1]].flatten()]
    )
    background = faces.double().mean()
    axis = torch.arange(t, device=volume.device, dtype=torch.float64) - t // 2
    plane = axis[:, None] ** 2 + axis[None, :] ** 2
    n_shells = math.ceil(math.sqrt(3) * (t - t // 2)) + 2
    shells = torch.zeros(n_shells, dtype=torch.float64, device=volume.device)
    for z in range(t):
        shell = (plane + axis[z] ** 2).sqrt().ceil().long().flatten()
        deviation = (volume[z].double() - background).square().flatten()
        shells += torch.bincount(shell, weights=deviation, minlength=n_shells)
    return shells


def project(
    projector: Projector, rotations: torch.Tensor, scale: float
) -> torch.Tensor:
    """Real-space template projections, centred in a ``t x t`` box.

    Slices are sampled at the frequencies of an m box (``central_slices``, m =
    ``projector.slice_size``) from the Fourier-padded p-box template, transformed at
    m^2 and cropped to t. With m = p this is torch-fourier-slice's projection
    cropped. With m < p it is the p-box projection folded (periodised) onto the
    m box: where the map's projections fit in it (``projection_box``) only the
    trilinear interpolation's faint ghosts fold in (1.8-4 % of the norm against
    the p crop), for (p / m)^2 fewer samples and a smaller transform. Measured
    z-scores of true particles in ``benchmarks/RESULTS.md``.

    Parameters
    ----------
    projector : Projector
        Template and box sizes (``SearchInputs.projector``).
    rotations : torch.Tensor
        ``(B, 3, 3)`` rotation matrices (not modified).
    scale : float
        Magnification of the slice frequencies (pixel-size search).

    Returns
    -------
    torch.Tensor
        ``(B, t, t)`` float32, projection centre at index ``t // 2``.
    """
    template = projector.template_dft
    if is_compact(template) and not projector.compiled:
        raise ValueError("project: a compact template is read by the compiled sampler")
    matrices = rotations.to(device=template.device, dtype=torch.float32) * scale
    t = projector.template_size
    m = projector.slice_size or int(_planar_template(template).shape[-3])
    sample = compiled_slices if projector.compiled else central_slices
    slices = sample(template, matrices, m)
    # One transform per orientation: batched FFTs round differently depending on
    # the batch's size, and the statistics must not depend on how work is batched.
    real = torch.stack([torch.fft.irfft2(s, s=(m, m)) for s in slices])
    real = torch.fft.fftshift(real, dim=(-2, -1))
    start = m // 2 - t // 2
    return real[..., start : start + t, start : start + t]


def padded_dft(
    projections: torch.Tensor,
    shape: tuple[int, int],
    spectrum: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """rfft2 of centred ``(B, t, t)`` boxes placed at the origin of an ``(H, W)`` image.

    Equivalent to wrapping each box around pixel (0, 0) of a zero image and taking
    ``rfft2``, but only the t rows that hold data are transformed along x.

    Parameters
    ----------
    projections : torch.Tensor
        ``(B, t, t)`` real boxes.
    shape : tuple[int, int]
        ``(H, W)``.
    spectrum : torch.Tensor, optional
        ``(B, H, W // 2 + 1)`` complex64 work buffer, zero except in the rows this
        function writes (reuse it: no allocation per call).
    out : torch.Tensor, optional
        ``(B, H, W // 2 + 1)`` complex64 buffer for the result.

    Returns
    -------
    torch.Tensor
        ``(B, H, W // 2 + 1)`` complex64 (``out`` when given).

    Examples
    --------
    >>> box = torch.arange(25.0).reshape(1, 5, 5).sin()
    >>> image = torch.zeros(1, 12, 16)
    >>> image[:, :5, :5] = box
    >>> wrapped = image.roll((-2, -2), dims=(-2, -1))  # centre 5 // 2 at (0, 0)
    >>> expected = torch.fft.rfft2(wrapped)
    >>> bool(torch.allclose(padded_dft(box, (12, 16)), expected, atol=1e-5))
    True
    """
    b, t = projections.shape[0], projections.shape[-1]
    h, w = shape
    half = t // 2
    rows = projections.new_zeros((b, t, w))
    rows[..., : t - half] = projections[..., half:]
    rows[..., w - half :] = projections[..., :half]
    rows_dft = torch.fft.rfft(rows, dim=-1)
    full = rows_dft.new_zeros((b, h, w // 2 + 1)) if spectrum is None else spectrum
    full[:, : t - half] = rows_dft[:, half:]
    full[:, h - half :] = rows_dft[:, :half]
    return torch.fft.fft(full, dim=-2, out=out)
