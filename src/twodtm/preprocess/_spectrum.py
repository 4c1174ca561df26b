"""Filters on the rfft grid: the radial power spectrum, whitening and bandpass.

The whitening filter ``1 / sqrt(radial power)`` is that of the whitened matched
filter of Rickgauer et al. 2017 (eLife 6:e25648) and cisTEM's ``match_template``.
"""

from __future__ import annotations

import torch

from twodtm.ctf import frequency_grid
from twodtm.preprocess._settings import FilterSettings

__all__ = ["bandpass_filter", "radial_power_spectrum", "whitening_filter"]


def radial_power_spectrum(
    image_dft: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Radially averaged power of an rfft2, resampled back onto the rfft grid.

    Parameters
    ----------
    image_dft : torch.Tensor
        ``(H, W // 2 + 1)`` rfft2 of a real image (unshifted).
    shape : tuple[int, int]
        ``(H, W)`` of the real image.

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` float32: the mean power in the ring through each
        frequency, linearly interpolated between rings one pixel wide.

    Examples
    --------
    A delta has the flat spectrum ``|X(k)|^2 = 1``:

    >>> delta = torch.zeros(16, 16)
    >>> delta[0, 0] = 1.0
    >>> power = radial_power_spectrum(torch.fft.rfft2(delta), (16, 16))
    >>> power.shape, torch.allclose(power, torch.ones(16, 9))
    (torch.Size([16, 9]), True)
    """
    radius = frequency_grid(shape, 1.0 / max(shape), image_dft.device)  # in pixels
    n_bins = int(radius.max().ceil().item()) + 2
    power = image_dft.abs().square().to(torch.float64)
    lower = radius.floor().long()
    frac = (radius - lower).to(torch.float64)
    sums = torch.zeros(n_bins, dtype=torch.float64, device=image_dft.device)
    counts = torch.zeros_like(sums)
    for offset, weight in ((0, 1.0 - frac), (1, frac)):
        sums.index_add_(0, (lower + offset).flatten(), (weight * power).flatten())
        counts.index_add_(0, (lower + offset).flatten(), weight.flatten())
    profile = sums / counts.clamp_min(1e-12)
    interpolated = profile[lower] * (1.0 - frac) + profile[lower + 1] * frac
    return interpolated.to(torch.float32)


def bandpass_filter(
    shape: tuple[int, int],
    pixel_size: float,
    settings: FilterSettings,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Cosine-edged bandpass on the rfft grid, 1 in the pass band, 0 outside.

    Each edge is a raised cosine ``bandpass_falloff`` wide (1/Angstrom), centred
    on its limit, where the filter is 0.5.

    Parameters
    ----------
    shape : tuple[int, int]
        ``(H, W)`` of the real-space image.
    pixel_size : float
        Angstrom per pixel.
    settings : FilterSettings
        The band limits (Angstrom) and the falloff.
    device : torch.device or str
        Where the filter is made.

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` float32.

    Examples
    --------
    A 20 A to 4 A band on a 100-pixel grid at 1 A per pixel (column c is
    c / 100 per Angstrom: the limits are columns 5 and 25):

    >>> settings = FilterSettings(
    ...     bandpass_low_resolution=20.0, bandpass_high_resolution=4.0
    ... )
    >>> band = bandpass_filter((100, 100), 1.0, settings)
    >>> band[0, [3, 5, 10, 25, 40]].tolist()
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    k = frequency_grid(shape, pixel_size, device)
    band = torch.ones_like(k)
    width = max(settings.bandpass_falloff, 1e-6)
    if settings.bandpass_low_resolution:
        k_low = 1.0 / settings.bandpass_low_resolution
        ramp = torch.clamp((k - k_low) / width + 0.5, 0.0, 1.0)
        band = band * (0.5 - 0.5 * torch.cos(torch.pi * ramp))
    if settings.bandpass_high_resolution:
        k_high = 1.0 / settings.bandpass_high_resolution
        ramp = torch.clamp((k - k_high) / width + 0.5, 0.0, 1.0)
        band = band * (0.5 + 0.5 * torch.cos(torch.pi * ramp))
    return band


def whitening_filter(
    image_dft: torch.Tensor,
    shape: tuple[int, int],
    pixel_size: float,
    settings: FilterSettings,
) -> torch.Tensor:
    """Whitening filter ``1 / sqrt(radial power)`` (or ones when disabled).

    The DC term is always 0, so filtered images and templates have zero mean.

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` float32 on the device of ``image_dft``.
    """
    if settings.whitening:
        power = radial_power_spectrum(image_dft, shape)
        positive = power[power > 0]
        floor = positive.min() if positive.numel() else torch.tensor(1.0)
        filt = torch.rsqrt(power.clamp_min(floor))
    else:
        filt = torch.ones(image_dft.shape, device=image_dft.device)
    if settings.whitening_high_resolution:
        k = frequency_grid(shape, pixel_size, image_dft.device)
        filt = torch.where(k <= 1.0 / settings.whitening_high_resolution, filt, 0.0)
    filt = filt.clone()
    filt[0, 0] = 0.0
    return filt
