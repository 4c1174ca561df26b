"""Preprocessing (physics): outliers, whitening, bandpass, padding, templates.

What every search sees of its inputs: ``prepare_image`` turns a micrograph into
the whitened DFT the global search (``twodtm.search``) and the local search
(``twodtm.local``) correlate with, ``prepare_template`` a map into the Fourier
volume their projections are cut from.

Noise model. The search's correlation of a filtered projection ``F p`` with the
prepared image is ``<w, F p> / ||F p||``; on noise it is N(0, 1) when the whitened
image ``w`` has unit variance per frequency (spectral density 1) wherever the
template filter lets the projection through. ``prepare_image`` therefore scales
the whitened image by its mean power per frequency over that band, measured per
micrograph pixel that holds data. Its real-space variance is then the band's
share of the frequencies (0.35 for a 3 A cut at 1 A/px), not 1. The whitened
matched filter is that of Rickgauer et al. 2017 (eLife 6:e25648) and cisTEM's
``match_template`` (Lucas et al. 2021, eLife 10:e68946).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.functional import pad as zero_pad

from twodtm.ctf import frequency_grid

__all__ = [
    "FilterSettings",
    "PreparedImage",
    "bandpass_filter",
    "clipped_mean_std",
    "fft_friendly_size",
    "outlier_note",
    "prepare_image",
    "prepare_template",
    "radial_power_spectrum",
    "replace_outliers",
]

_FFT_PRIMES = (2, 3, 5, 7)
# sigma / MAD of a normal distribution: 1 / Phi^-1(3/4)
_MAD_TO_SIGMA = 1.482602218505602


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
    contrast_inverted : bool
        The micrograph was contrast-inverted upstream (protein bright, as in
        RELION's particle images); it is negated back to the microscope's
        contrast (protein dark at underfocus) before the search.
    outlier_sigma : float or None
        Pixels farther than this many standard deviations from the clipped mean
        are replaced by that mean before whitening (see ``replace_outliers``);
        None keeps every pixel.
    """

    whitening: bool = True
    whitening_high_resolution: float | None = None
    bandpass_low_resolution: float | None = None
    bandpass_high_resolution: float | None = None
    bandpass_falloff: float = 0.005
    contrast_inverted: bool = False
    outlier_sigma: float | None = 5.0


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


def _robust_start(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and MAD-based sigma of all pixels: a start that outliers barely move.

    Where more than half the pixels share one value (sparse counts, below about
    0.7 counts per pixel) the MAD is 0; the plain mean and standard deviation
    are used then. Outliers inflate that sigma, so the start keeps more pixels
    than it should, never fewer: they are left out of the moments only if they
    lie beyond ``n_sigma`` of it (1000-sigma hot pixels do).
    """
    values = image.flatten()
    centre = values.median()
    scale = _MAD_TO_SIGMA * (values - centre).abs().median()
    if float(scale) == 0.0:
        wide = values.to(torch.float64)
        centre, scale = wide.mean().to(values.dtype), wide.std().to(values.dtype)
    return centre, scale


def clipped_mean_std(image: torch.Tensor, n_sigma: float) -> tuple[float, float]:
    """Mean and standard deviation of the pixels near the median.

    One round of sigma clipping from a robust start: the moments of the pixels
    within ``n_sigma`` MAD-based sigmas of the median (``_robust_start``). The
    median and MAD keep a large outlier population (an ice contaminant over 10 %
    of the image) out of the moments; the moments make the result continuous
    where the MAD of integer counts is not (Poisson counts of mean 1 to 4 have a
    MAD of 1 count, a "sigma" of 1.48, for true sigmas of 1 to 2). Clipping is
    not iterated: on skewed data (Poisson counts) each round cuts the tail
    further and the set shrinks well inside the distribution's own 5 sigma.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` real image (not modified).
    n_sigma : float
        Clipping distance in standard deviations.

    Returns
    -------
    tuple of float
        Mean and population standard deviation of the inliers (the latter low
        by under 0.1 % for ``n_sigma >= 4`` on Gaussian noise).

    Examples
    --------
    Values 0, 1, 2, 3 (16 of each) and one hot pixel: the hot pixel is left out,
    the moments are those of the other 63 values.

    >>> image = torch.arange(64.0).reshape(8, 8) % 4
    >>> image[3, 5] = 1000.0
    >>> mean, sigma = clipped_mean_std(image, 5.0)
    >>> rest = torch.cat([image.flatten()[:29], image.flatten()[30:]]).double()
    >>> round(mean, 6) == round(float(rest.mean()), 6) == round(95 / 63, 6)
    True
    >>> round(sigma, 6) == round(float(rest.std(correction=0)), 6)
    True
    """
    values = image.to(torch.float32).flatten()
    centre, scale = _robust_start(values)
    deviation = values - centre
    inliers = deviation.abs() <= n_sigma * scale
    count = max(int(inliers.sum()), 1)
    inside = torch.where(inliers, deviation, 0.0).to(torch.float64)
    shift = float(inside.sum()) / count
    variance = float(inside.square().sum()) / count - shift * shift
    return float(centre) + shift, math.sqrt(max(variance, 0.0))


def replace_outliers(image: torch.Tensor, n_sigma: float) -> tuple[torch.Tensor, int]:
    """Replace pixels beyond ``n_sigma`` standard deviations by the clipped mean.

    Hot pixels, gold and ice contaminants would otherwise set the power spectrum
    (and so the whitening filter) and correlate strongly with any template.
    Pixels farther than ``n_sigma`` sigma from the mean on either side (hot
    pixels are bright, gold and ice dark) are replaced, with mean and sigma
    from ``clipped_mean_std`` (cisTEM replaces beyond 5 sigma of the plain mean
    and sigma, which a few hot pixels inflate). The replacement is that mean
    rather than a local value: a local median over a contaminant larger than its
    window is the contaminant itself, while the mean becomes about 0 after mean
    subtraction, so replaced pixels add no power to the whitening spectrum and
    no correlation with any template. Poisson counts keep their own sigma: at a
    mean of 1 count per pixel the counts of 6 and more (6e-4 of the pixels) are
    replaced, at 40 counts 2e-6 of them.

    Parameters
    ----------
    image : torch.Tensor
        ``(H, W)`` real image, any dtype (not modified).
    n_sigma : float
        Replacement distance in standard deviations (cisTEM: 5).

    Returns
    -------
    tuple
        The float32 ``(H, W)`` image with outliers replaced, and how many
        pixels were replaced.

    Examples
    --------
    >>> image = torch.arange(64.0).reshape(8, 8) % 4
    >>> image[3, 5] = 1000.0
    >>> cleaned, replaced = replace_outliers(image, 5.0)
    >>> replaced, round(float(cleaned[3, 5]), 4), float(image[3, 5])
    (1, 1.5079, 1000.0)
    """
    values = image.to(torch.float32)
    mean, sigma = clipped_mean_std(values, n_sigma)
    outliers = (values - mean).abs() > n_sigma * sigma
    replaced = torch.where(outliers, torch.full_like(values, mean), values)
    return replaced, int(outliers.sum())


def outlier_note(
    label: str, replaced: int, n_pixels: int, n_sigma: float | None
) -> str:
    """One log line saying how many pixels ``replace_outliers`` replaced.

    Examples
    --------
    >>> outlier_note("mic.mrc", 12, 4096 * 4096, 5.0)  # doctest: +ELLIPSIS
    'mic.mrc: replaced 12 of 16,777,216 pixels (0.00%) beyond 5 sigma ...'
    """
    return (
        f"{label}: replaced {replaced:,} of {n_pixels:,} pixels "
        f"({replaced / max(n_pixels, 1):.2%}) beyond {n_sigma:g} sigma (hot pixels, "
        "gold, ice) with the mean before whitening"
    )


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


def _whitening_filter(
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


def prepare_image(
    image: torch.Tensor,
    pixel_size: float,
    settings: FilterSettings,
    pad_to_fft_friendly: bool = True,
) -> PreparedImage:
    """Replace outliers, normalise, pad, whiten and transform a micrograph.

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

    Returns
    -------
    PreparedImage
        The whitened DFT, the template filter and the shapes.

    Examples
    --------
    Noise coloured by ``1 / (|k| + 0.02)`` (power 80 times higher at low
    frequency than near Nyquist) comes out white, with unit variance:

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
    centred = values - values.to(torch.float64).mean().to(torch.float32)
    if settings.contrast_inverted:
        centred = -centred
    padded_shape = shape
    if pad_to_fft_friendly:
        padded_shape = (fft_friendly_size(shape[0]), fft_friendly_size(shape[1]))
        pad = (0, padded_shape[1] - shape[1], 0, padded_shape[0] - shape[0])
        centred = zero_pad(centred, pad)
    dft = torch.fft.rfft2(centred)
    whitening = _whitening_filter(dft, padded_shape, pixel_size, settings)
    whitened = dft * whitening
    band = bandpass_filter(padded_shape, pixel_size, settings, image.device)
    # Unit density where templates pass (a cut or bandpass leaves the rest out of
    # every correlation); replaced pixels are flat and carry no noise.
    in_band = (whitening > 0) * band.square()
    density = _noise_density(
        whitened, in_band, padded_shape, shape[0] * shape[1] - replaced
    )
    scale = density.sqrt().clamp_min(1e-30).to(torch.float32)
    return PreparedImage(
        whitened_dft=(whitened / scale).to(torch.complex64),
        template_filter=whitening * band,
        padded_shape=padded_shape,
        shape=shape,
        replaced_pixels=replaced,
    )


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
