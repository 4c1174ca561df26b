"""A micrograph made ready for the search: padded, whitened, unit noise density.

See the package notes (``twodtm.preprocess``) for the noise model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.functional import pad as zero_pad

from twodtm.preprocess._outliers import replace_outliers
from twodtm.preprocess._settings import FilterSettings
from twodtm.preprocess._spectrum import bandpass_filter, whitening_filter

__all__ = ["PreparedImage", "fft_friendly_size", "prepare_image"]

_FFT_PRIMES = (2, 3, 5, 7)


def fft_friendly_size(n: int) -> int:
    """Smallest even ``m >= n`` whose prime factors are all in {2, 3, 5, 7}.

    Parameters
    ----------
    n : int
        Size to pad, pixels.

    Returns
    -------
    int
        The padded size.

    Examples
    --------
    >>> [fft_friendly_size(n) for n in (11, 927, 4092, 5760)]
    [12, 960, 4096, 5760]
    """
    m = max(n + n % 2, 2)
    while True:
        rest = m
        for p in _FFT_PRIMES:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 2


@dataclass(frozen=True)
class PreparedImage:
    """A micrograph ready for the search.

    Attributes
    ----------
    whitened_dft : torch.Tensor
        ``(H, W // 2 + 1)`` complex64 rfft2 of the zero-mean, whitened, padded
        image, scaled to unit power per frequency over the template filter's band
        (see the module notes): the correlation with any unit-norm filtered
        projection is N(0, 1) on noise. Its real-space variance is the band's
        share of the frequencies, 1 only without a whitening cut.
    template_filter : torch.Tensor
        ``(H, W // 2 + 1)`` float32 filter every template projection receives on
        top of its CTF: the whitening filter times the bandpass.
    padded_shape : tuple[int, int]
        ``(H, W)`` searched (possibly FFT-friendly padded).
    shape : tuple[int, int]
        Original micrograph shape; results are cropped back to it.
    replaced_pixels : int
        Outlier pixels replaced before whitening (0 when disabled).
    """

    whitened_dft: torch.Tensor
    template_filter: torch.Tensor
    padded_shape: tuple[int, int]
    shape: tuple[int, int]
    replaced_pixels: int = 0


def _rfft_multiplicity(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``(H, W // 2 + 1)``: how many frequencies of the full grid each rfft entry is.

    Columns 0 and (for even W) W / 2 stand for themselves, the others also for
    their mirror images.
    """
    h, w = shape
    counts = torch.full((h, w // 2 + 1), 2.0, dtype=torch.float64, device=device)
    counts[:, 0] = 1.0
    if w % 2 == 0:
        counts[:, -1] = 1.0
    return counts


def _noise_density(
    image_dft: torch.Tensor,
    weights: torch.Tensor,
    shape: tuple[int, int],
    data_pixels: int,
) -> torch.Tensor:
    """Mean power per frequency of an image's noise, over a weighted band.

    A stationary noise image of unit variance per frequency (white noise of
    variance 1) has ``E |X(k)|^2 = n`` for n pixels of data, whether or not it
    was zero-padded to ``shape``; this returns the weighted mean of
    ``|X(k)|^2 / n``.

    Parameters
    ----------
    image_dft : torch.Tensor
        ``(H, W // 2 + 1)`` rfft2 (unshifted) of the padded image.
    weights : torch.Tensor
        ``(H, W // 2 + 1)`` non-negative weights of the band (0 outside it).
    shape : tuple[int, int]
        ``(H, W)`` of the padded image.
    data_pixels : int
        Pixels that hold noise (the unpadded image's, less replaced ones).

    Returns
    -------
    torch.Tensor
        float64 scalar.
    """
    w = weights.to(torch.float64) * _rfft_multiplicity(shape, image_dft.device)
    power = image_dft.abs().to(torch.float64).square()
    return (w * power).sum() / w.sum().clamp_min(1e-30) / max(data_pixels, 1)


def _flatten_excluded(
    values: torch.Tensor, searched: torch.Tensor, replaced: int
) -> tuple[torch.Tensor, int]:
    """Set excluded pixels to the searched ones' mean; count the noisy pixels.

    ``replaced`` outliers (flat too) are taken as lying in the searched region;
    they are a few pixels in millions.

    Examples
    --------
    >>> values = torch.tensor([[1.0, 3.0, 50.0]])
    >>> filled, noisy = _flatten_excluded(values, torch.tensor([[1, 1, 0]]) > 0, 0)
    >>> filled.tolist(), noisy
    ([[1.0, 3.0, 2.0]], 2)
    """
    inside = searched.to(torch.bool)
    count = int(inside.sum())
    mean = 0.0
    if count:
        mean = float(values[inside].to(torch.float64).mean())
    filled = torch.where(inside, values, values.new_tensor(mean))
    return filled, max(count - replaced, 1)


def prepare_image(
    image: torch.Tensor,
    pixel_size: float,
    settings: FilterSettings,
    pad_to_fft_friendly: bool = True,
    searched: torch.Tensor | None = None,
) -> PreparedImage:
    """Replace outliers, flatten excluded pixels, normalise, pad, whiten, transform.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` real micrograph on the target device (not modified).
    pixel_size : float
        Angstrom per pixel.
    settings : FilterSettings
        Outliers, contrast, whitening and bandpass.
    pad_to_fft_friendly : bool
        Zero-pad (after mean subtraction) to sizes with small prime factors.
    searched : torch.Tensor, optional
        ``(H, W)`` bool search mask (``twodtm.masking``), True where searched.
        Excluded pixels are set to the searched pixels' mean (after the outliers
        are replaced), so that carbon or ice leaves no edge and no power in the
        whitening filter, and the noise density is that of the searched pixels
        alone: every program that whitens a masked micrograph (the search and
        the local searches after it) gets the same image.

    Returns
    -------
    PreparedImage
        The whitened DFT, the template filter and the shapes.

    Examples
    --------
    Noise coloured by ``1 / (|k| + 0.02)`` (power 80 times higher at low
    frequency than near Nyquist) comes out white, with unit variance:

    >>> from twodtm.preprocess._spectrum import radial_power_spectrum
    >>> g = torch.Generator().manual_seed(0)
    >>> ky, kx = torch.fft.fftfreq(128)[:, None], torch.fft.rfftfreq(128)[None, :]
    >>> colour = 1.0 / (torch.hypot(ky, kx) + 0.02)
    >>> image = torch.fft.irfft2(
    ...     torch.fft.rfft2(torch.randn(128, 128, generator=g)) * colour, s=(128, 128)
    ... )
    >>> settings = FilterSettings(outlier_sigma=None)
    >>> prepared = prepare_image(image, 1.0, settings, pad_to_fft_friendly=False)
    >>> def low_over_high(dft):
    ...     power = radial_power_spectrum(dft, (128, 128))[0]
    ...     return float(power[2:10].mean() / power[50:60].mean())
    >>> low_over_high(torch.fft.rfft2(image)) > 50
    True
    >>> round(low_over_high(prepared.whitened_dft), 1)
    1.0
    >>> whitened = torch.fft.irfft2(prepared.whitened_dft, s=(128, 128))
    >>> round(float(whitened.var()), 3), float(whitened.mean().abs()) < 1e-6
    (1.0, True)
    """
    shape = (int(image.shape[-2]), int(image.shape[-1]))
    values, replaced = image.to(torch.float32), 0
    if settings.outlier_sigma is not None:
        values, replaced = replace_outliers(values, settings.outlier_sigma)
    # replaced and excluded pixels are flat: they carry no noise
    noisy = shape[0] * shape[1] - replaced
    if searched is not None:
        values, noisy = _flatten_excluded(values, searched.to(values.device), replaced)
    centred = values - values.to(torch.float64).mean().to(torch.float32)
    if settings.contrast_inverted:
        centred = -centred
    padded_shape = shape
    if pad_to_fft_friendly:
        padded_shape = (fft_friendly_size(shape[0]), fft_friendly_size(shape[1]))
        pad = (0, padded_shape[1] - shape[1], 0, padded_shape[0] - shape[0])
        centred = zero_pad(centred, pad)
    dft = torch.fft.rfft2(centred)
    whitening = whitening_filter(dft, padded_shape, pixel_size, settings)
    whitened = dft * whitening
    band = bandpass_filter(padded_shape, pixel_size, settings, image.device)
    # Unit density where templates pass (a cut or bandpass leaves the rest out of
    # every correlation); replaced pixels are flat and carry no noise.
    in_band = (whitening > 0) * band.square()
    density = _noise_density(whitened, in_band, padded_shape, noisy)
    scale = density.sqrt().clamp_min(1e-30).to(torch.float32)
    return PreparedImage(
        whitened_dft=(whitened / scale).to(torch.complex64),
        template_filter=whitening * band,
        padded_shape=padded_shape,
        shape=shape,
        replaced_pixels=replaced,
    )
