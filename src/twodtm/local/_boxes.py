"""Particle boxes: cutting, filtering and shifting them, and the window of shifts.

A local search looks at particles in small boxes cut from the micrograph, over
small rotations composed with each starting pose (``local._grid``), a few defocus
values and pixel sizes. The correlations of a batch of particles come from
``local._batch``; this module provides the pieces that need no engine: the boxes
and their filters, the window of shifts the peak may move to, the sub-pixel peaks
and the z-score re-normalisation.

Whitening in a box
------------------
The whitening filter must be the micrograph's, not the box's (a box holds too
little noise to estimate a spectrum, and a particle in it would bias it). So the
full micrograph is prepared once with ``preprocess.prepare_image``; its whitened
real-space image (unit variance, the very pixels the global search correlated) is
cut into boxes, and the templates receive the full image's filter (whitening x
bandpass) resampled radially onto the box's frequency grid. Correlations in a box
then equal those of the global search, up to CTF tails that wrap at the box edge.
"""

from __future__ import annotations

import math

import torch

from twodtm.ctf import Optics, electron_wavelength, frequency_grid
from twodtm.preprocess import PreparedImage, fft_friendly_size

__all__ = [
    "box_dfts",
    "default_box_size",
    "extract_boxes",
    "renormalised_zscore",
    "resample_filter",
    "shift_phases",
    "subpixel_peaks",
    "whitened_real_image",
    "window_mask",
    "window_radius",
]


def whitened_real_image(image: PreparedImage) -> torch.Tensor:
    """``(H, W)`` whitened, unit-variance micrograph in real space (padding cropped)."""
    real = torch.fft.irfft2(image.whitened_dft, s=image.padded_shape)
    return real[: image.shape[0], : image.shape[1]]


def _radial_profile(values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Ring means of an rfft-grid array, rings ``1 / max(shape)`` cycles/px wide."""
    n = max(shape)
    radius = frequency_grid(shape, 1.0, values.device).to(torch.float64) * n
    lower = radius.floor().long()
    frac = radius - lower
    n_bins = int(lower.max().item()) + 2
    sums = torch.zeros(n_bins, dtype=torch.float64, device=values.device)
    counts = torch.zeros_like(sums)
    for offset, weight in ((0, 1.0 - frac), (1, frac)):
        sums.index_add_(0, (lower + offset).flatten(), (weight * values).flatten())
        counts.index_add_(0, (lower + offset).flatten(), weight.flatten())
    return sums / counts.clamp_min(1e-12)


def resample_filter(
    values: torch.Tensor, shape: tuple[int, int], new_shape: tuple[int, int]
) -> torch.Tensor:
    """Resample a radially symmetric rfft-grid filter onto another image size.

    Parameters
    ----------
    values : torch.Tensor
        ``(H, W // 2 + 1)`` filter of an ``(H, W)`` image (whitening x bandpass).
    shape : tuple[int, int]
        ``(H, W)``.
    new_shape : tuple[int, int]
        ``(h, w)`` of the target image.

    Returns
    -------
    torch.Tensor
        ``(h, w // 2 + 1)`` float32: the ring mean at each frequency (in cycles
        per pixel), linearly interpolated; DC set to 0.
    """
    profile = _radial_profile(values.to(torch.float64), shape)
    n = max(shape)
    radius = frequency_grid(new_shape, 1.0, values.device).to(torch.float64) * n
    radius = radius.clamp(max=profile.shape[0] - 1.000001)
    lower = radius.floor().long()
    frac = radius - lower
    resampled = profile[lower] * (1.0 - frac) + profile[lower + 1] * frac
    resampled[0, 0] = 0.0
    return resampled.to(torch.float32)


def default_box_size(template_size: int, optics: Optics, defocus: float) -> int:
    """Choose an FFT-friendly box holding the template and most of its CTF tails.

    The CTF spreads Nyquist frequencies by ``lambda * defocus / (2 * pixel_size)``
    Angstrom; the box adds that distance once to the template (half on each side),
    which keeps the correlations within a few percent of a full-image search
    while the whitened noise dominates the outermost, most delocalised frequencies.

    Parameters
    ----------
    template_size : int
        Template box, pixels.
    optics : Optics
        Voltage and pixel size.
    defocus : float
        Largest defocus searched, Angstrom.
    """
    spread = (
        electron_wavelength(optics.voltage) * abs(defocus) / (2 * optics.pixel_size**2)
    )
    return fft_friendly_size(template_size + math.ceil(spread) + 8)


def extract_boxes(
    image: torch.Tensor, centres: torch.Tensor, size: int, anchor: int
) -> torch.Tensor:
    """Cut periodic ``(size, size)`` boxes around pixels of an image, in one gather.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` image (the whitened micrograph, whose mean is zero).
    centres : torch.Tensor
        ``(N, 2)`` int64 pixels ``(row, column)``.
    size : int
        Box edge, pixels.
    anchor : int
        Where each centre lands in its box: pixel ``(anchor, anchor)``. The rows
        and columns run on cyclically from there, so the box equals the box
        centred at ``size // 2`` rolled by ``anchor - size // 2``: the FFT treats
        both alike, and ``anchor = r`` puts the shifts ``-r..r`` at indices
        ``0..2r``.

    Returns
    -------
    torch.Tensor
        ``(N, size, size)``; pixels outside the image are zero.
    """
    h, w = image.shape[-2:]
    device = image.device
    axis = torch.arange(size, device=device)
    offsets = (axis - anchor + size // 2) % size - size // 2
    rows = centres[:, :1].to(device) + offsets
    columns = centres[:, 1:].to(device) + offsets
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((columns >= 0) & (columns < w))[
        :, None, :
    ]
    boxes = image[rows.clamp(0, h - 1)[:, :, None], columns.clamp(0, w - 1)[:, None, :]]
    return torch.where(inside, boxes, torch.zeros((), dtype=image.dtype, device=device))


def shift_phases(shape: tuple[int, int], shifts: torch.Tensor) -> torch.Tensor:
    """``(..., H, W // 2 + 1)`` factors moving images by ``shifts`` ``(..., 2)`` pixels.

    Multiplying an rfft2 by them moves its content by ``(rows, columns)`` pixels
    (circularly): what was at ``p`` is then at ``p + shift``. The result lives on
    the device of ``shifts``.
    """
    device = shifts.device
    ky = torch.fft.fftfreq(shape[0], device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(shape[1], device=device, dtype=torch.float64)
    shift = shifts.to(torch.float64)[..., None, None, :]
    angle = (
        -2.0 * torch.pi * (ky[:, None] * shift[..., 0] + kx[None, :] * shift[..., 1])
    )
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def box_dfts(boxes: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """rfft2 of ``(N, b, b)`` whitened boxes, moved by ``(N, 2)`` sub-pixel shifts.

    The boxes are transformed as they are (no new mean, whitening or scaling: they
    are cut from ``whitened_real_image``).

    Returns
    -------
    torch.Tensor
        ``(N, b, b // 2 + 1)`` complex64.
    """
    size = (int(boxes.shape[-2]), int(boxes.shape[-1]))
    return torch.fft.rfft2(boxes).to(torch.complex64) * shift_phases(size, shifts)


def window_radius(max_shift: float) -> int:
    """Half-width ``r`` of the ``(2r + 1)^2`` window holding shifts up to ``max_shift``.

    One pixel of margin lets a parabola through the outermost shifts.

    Examples
    --------
    >>> window_radius(2.0), window_radius(2.5), window_radius(0.0)
    (3, 4, 1)
    """
    return math.ceil(max_shift) + 1


def window_mask(
    size: int, radius: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(size, size)`` bool, True within ``radius`` pixels of the box centre."""
    axis = torch.arange(size, device=device) - size // 2
    return (axis[:, None] ** 2 + axis[None, :] ** 2) <= radius**2 + 1e-9


def _vertex(
    left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """Vertex offsets, in [-0.5, 0.5], of parabolas through three equal-step values."""
    curvature = left - 2.0 * centre + right
    safe = torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
    offset = (0.5 * (left - right) / safe).clamp(-0.5, 0.5)
    return torch.where(curvature < 0, offset, torch.zeros_like(offset))


def subpixel_peaks(
    values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """Sub-pixel offsets of maxima by parabolas through them and their neighbours.

    Parameters
    ----------
    values : torch.Tensor
        ``(N, H, W)`` correlation maps.
    rows, columns : torch.Tensor
        ``(N,)`` int64 integer maxima.

    Returns
    -------
    torch.Tensor
        ``(N, 2)`` float64 ``(d_row, d_column)`` in [-0.5, 0.5] pixels (0 along an
        axis where the maximum is on the edge or the top is flat).

    Examples
    --------
    A parabola with its vertex at (4.25, 3.5) and its top pixel at (4, 4):

    >>> y, x = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    >>> surface = 10 - (y - 4.25) ** 2 - (x - 3.5) ** 2
    >>> subpixel_peaks(surface[None], torch.tensor([4]), torch.tensor([4])).tolist()
    [[0.25, -0.5]]
    """
    h, w = values.shape[-2:]
    maps = values.to(torch.float64)
    n = torch.arange(maps.shape[0], device=maps.device)
    # Neighbours are clamped into the map; offsets at its edge are zeroed below.
    up, down = (rows - 1).clamp_min(0), (rows + 1).clamp_max(h - 1)
    left, right = (columns - 1).clamp_min(0), (columns + 1).clamp_max(w - 1)
    centre = maps[n, rows, columns]
    d_row = _vertex(maps[n, up, columns], centre, maps[n, down, columns])
    d_column = _vertex(maps[n, rows, left], centre, maps[n, rows, right])
    on_edge_row = (rows == 0) | (rows == h - 1)
    on_edge_column = (columns == 0) | (columns == w - 1)
    return torch.stack(
        [
            torch.where(on_edge_row, torch.zeros_like(d_row), d_row),
            torch.where(on_edge_column, torch.zeros_like(d_column), d_column),
        ],
        -1,
    )


def renormalised_zscore(correlation: float, mean: float, std: float) -> float:
    """``(correlation - mean) / std`` with the global search's statistics at a pixel.

    Parameters
    ----------
    correlation : float
        Best correlation of the local search.
    mean, std : float
        Mean and standard deviation of every correlation of the global search at
        that pixel (the ``mean`` and ``std`` maps of its result). Use 0 and 1 to
        keep the correlation itself, which is in units of the whitened noise.
    """
    return (correlation - mean) / std if std > 0 else 0.0
