"""Preprocessing of micrographs and templates: whitening, bandpass, padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.functional import pad as zero_pad
from torch_fourier_slice.volume_utils import separable_sinc2_correction

from twodtm.ctf import frequency_grid

_FFT_PRIMES = (2, 3, 5, 7)


@dataclass(frozen=True)
class FilterSettings:
    """Whitening and bandpass settings, in Angstrom of resolution.

    Attributes
    ----------
    whitening : bool
        Flatten the noise spectrum by the micrograph's radially averaged power.
    whitening_high_resolution : float or None
        Frequencies finer than this are left out of the search (filter set to 0).
    bandpass_low_resolution, bandpass_high_resolution : float or None
        Cosine-edged band limits; None leaves that side open.
    bandpass_falloff : float
        Width of each cosine edge in 1/Angstrom.
    """

    whitening: bool = True
    whitening_high_resolution: float | None = None
    bandpass_low_resolution: float | None = None
    bandpass_high_resolution: float | None = None
    bandpass_falloff: float = 0.005


def fft_friendly_size(n: int) -> int:
    """Smallest even ``m >= n`` whose prime factors are all in {2, 3, 5, 7}."""
    m = max(n + n % 2, 2)
    while True:
        rest = m
        for p in _FFT_PRIMES:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 2


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

    Returns
    -------
    torch.Tensor
        ``(H, W // 2 + 1)`` float32.
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


@dataclass(frozen=True)
class PreparedImage:
    """A micrograph ready for the search.

    Attributes
    ----------
    whitened_dft : torch.Tensor
        ``(H, W // 2 + 1)`` complex64 rfft2 of the zero-mean, whitened, padded
        image scaled so its real-space pixels have unit variance.
    template_filter : torch.Tensor
        ``(H, W // 2 + 1)`` float32 filter every template projection receives on
        top of its CTF: the whitening filter times the bandpass.
    padded_shape : tuple[int, int]
        ``(H, W)`` searched (possibly FFT-friendly padded).
    shape : tuple[int, int]
        Original micrograph shape; results are cropped back to it.
    """

    whitened_dft: torch.Tensor
    template_filter: torch.Tensor
    padded_shape: tuple[int, int]
    shape: tuple[int, int]


def prepare_image(
    image: torch.Tensor,
    pixel_size: float,
    settings: FilterSettings,
    pad_to_fft_friendly: bool = True,
) -> PreparedImage:
    """Normalise, pad, whiten and transform a micrograph.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` real micrograph on the target device (not modified).
    pixel_size : float
        Angstrom per pixel.
    settings : FilterSettings
        Whitening and bandpass.
    pad_to_fft_friendly : bool
        Zero-pad (after mean subtraction) to sizes with small prime factors.

    Returns
    -------
    PreparedImage
    """
    shape = (int(image.shape[-2]), int(image.shape[-1]))
    centred = image.to(torch.float32) - image.to(torch.float64).mean().to(torch.float32)
    padded_shape = shape
    if pad_to_fft_friendly:
        padded_shape = (fft_friendly_size(shape[0]), fft_friendly_size(shape[1]))
        pad = (0, padded_shape[1] - shape[1], 0, padded_shape[0] - shape[0])
        centred = zero_pad(centred, pad)
    dft = torch.fft.rfft2(centred)
    whitening = whitening_filter(dft, padded_shape, pixel_size, settings)
    whitened = dft * whitening
    real = torch.fft.irfft2(whitened, s=padded_shape)[: shape[0], : shape[1]]
    scale = real.to(torch.float64).std().clamp_min(1e-30).to(torch.float32)
    band = bandpass_filter(padded_shape, pixel_size, settings, image.device)
    return PreparedImage(
        whitened_dft=(whitened / scale).to(torch.complex64),
        template_filter=whitening * band,
        padded_shape=padded_shape,
        shape=shape,
    )


def prepare_template(volume: torch.Tensor, pad_factor: float = 2.0) -> torch.Tensor:
    """Fourier transform of a cubic template laid out for central-slice extraction.

    The volume is made zero at its faces, zero-padded by ``pad_factor``, divided by
    the sinc^2 of trilinear interpolation, and transformed with its centre at the
    origin. The result is rfftn with the two full axes fftshifted, as
    torch-fourier-slice's ``extract_central_slices_rfft_3d`` expects.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` real map, centre at voxel ``t // 2`` (not modified).
    pad_factor : float
        Real-space oversampling before the transform (>= 1).

    Returns
    -------
    torch.Tensor
        ``(p, p, p // 2 + 1)`` complex64 with ``p = t + 2 * floor(t (pad - 1) / 2)``.
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
    if pad:
        vol = zero_pad(vol, [pad] * 6)
    vol = vol / separable_sinc2_correction(tuple(vol.shape), device=vol.device)
    dft = torch.fft.rfftn(torch.fft.ifftshift(vol, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    return torch.fft.fftshift(dft, dim=(-3, -2)).to(torch.complex64)
