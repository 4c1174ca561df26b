import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from scipy import stats

from twodtm.config import Preprocessing
from twodtm.errors import ConfigError
from twodtm.preprocess import (
    FilterSettings,
    fft_friendly_size,
    prepare_image,
    replace_outliers,
)
from twodtm.preprocess._outliers import clipped_mean_std
from twodtm.preprocess._spectrum import bandpass_filter, radial_power_spectrum

DATA = Path(
    os.environ.get(
        "TWODTM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(4092, 4096), (5760, 5760), (927, 960), (3838, 3840), (1021, 1024), (11, 12)],
)
def test_fft_friendly_sizes(n, expected):
    m = fft_friendly_size(n)
    assert m == expected
    rest = m
    for p in (2, 3, 5, 7):
        while rest % p == 0:
            rest //= p
    assert rest == 1


def _coloured_noise(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(shape, generator=g)
    ky = torch.fft.fftfreq(shape[0])[:, None]
    kx = torch.fft.rfftfreq(shape[1])[None, :]
    k = torch.sqrt(ky**2 + kx**2)
    return torch.fft.irfft2(torch.fft.rfft2(white) / (0.02 + k), s=shape) + 100.0


def test_whitening_flattens_a_coloured_spectrum():
    image = _coloured_noise((256, 256))
    prepared = prepare_image(image, 1.0, FilterSettings(), pad_to_fft_friendly=False)
    power = radial_power_spectrum(prepared.whitened_dft, (256, 256))
    profile = power[0, 5:120].numpy()
    assert profile.max() / profile.min() < 1.5
    raw = radial_power_spectrum(torch.fft.rfft2(image - image.mean()), (256, 256))[
        0, 5:120
    ]
    assert float(raw.max() / raw.min()) > 50
    # no cut: unit density at every frequency is unit variance in real space
    real = torch.fft.irfft2(prepared.whitened_dft, s=(256, 256))
    assert abs(float(real.std()) - 1.0) < 1e-3
    assert abs(float(real.mean())) < 1e-3


def test_padding_keeps_original_shape_and_pads_to_friendly_size():
    image = _coloured_noise((101, 67))
    prepared = prepare_image(image, 1.0, FilterSettings())
    assert prepared.shape == (101, 67)
    assert prepared.padded_shape == (fft_friendly_size(101), fft_friendly_size(67))
    assert prepared.whitened_dft.shape == (
        prepared.padded_shape[0],
        prepared.padded_shape[1] // 2 + 1,
    )


def test_bandpass_edges_at_requested_resolutions():
    settings = FilterSettings(
        bandpass_low_resolution=50.0,
        bandpass_high_resolution=5.0,
        bandpass_falloff=0.002,
    )
    band = bandpass_filter((200, 200), 1.0, settings)[
        0
    ].numpy()  # along ky = 0, k = x / 200
    k = np.arange(band.size) / 200.0
    assert np.all(band[k < 1 / 50 - 0.002] < 1e-6)
    assert np.all(band[(k > 1 / 50 + 0.002) & (k < 1 / 5 - 0.002)] > 1 - 1e-6)
    assert np.all(band[k > 1 / 5 + 0.002] < 1e-6)


def test_prepare_image_leaves_input_untouched():
    image = _coloured_noise((64, 64))
    before = image.clone()
    prepare_image(image, 1.0, FilterSettings())
    assert torch.equal(image, before)


def _gaussian(shape, seed, sigma=3.0, mean=50.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * sigma + mean


def _poisson(shape, mean, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full(shape, mean), generator=g).to(torch.int32)


def test_clipped_moments_of_gaussian_noise_ignore_hot_pixels_and_a_blob():
    clean = _gaussian((1024, 1024), seed=1)
    image = clean.clone()
    g = torch.Generator().manual_seed(9)
    image.view(-1)[torch.randperm(image.numel(), generator=g)[:20]] += 3000.0
    rows, columns = torch.meshgrid(
        torch.arange(1024), torch.arange(1024), indexing="ij"
    )
    image[(rows - 500) ** 2 + (columns - 300) ** 2 <= 64] += 150.0  # 50 sigma
    mean, sigma = clipped_mean_std(image, 5.0)
    assert mean == pytest.approx(50.0, abs=0.01)
    assert sigma == pytest.approx(3.0, rel=0.003)  # 0.07 % statistical error
    # the plain sigma, which cisTEM's 5 sigma rule uses, is 4.5 times too large
    assert float(image.std()) > 4 * 3.0


def test_replaces_exactly_the_planted_hot_pixels_and_blob():
    clean = _gaussian((512, 512), seed=2)
    g = torch.Generator().manual_seed(3)
    hot = torch.zeros(512 * 512, dtype=torch.bool)
    hot[torch.randperm(512 * 512, generator=g)[:20]] = True
    hot = hot.view(512, 512)
    rows, columns = torch.meshgrid(torch.arange(512), torch.arange(512), indexing="ij")
    blob = (rows - 200) ** 2 + (columns - 330) ** 2 <= 64
    image = clean + 3000.0 * hot - 150.0 * blob  # a dark blob (gold, ice)
    before = image.clone()
    cleaned, count = replace_outliers(image, 5.0)
    assert torch.equal(image, before)
    changed = cleaned != image
    # Pure noise beyond 5 sigma: 2 * 2.9e-7 * 262144 = 0.15 pixels expected.
    assert torch.equal(changed, hot | blob)
    assert count == 20 + 197
    assert float(cleaned[changed].unique().numel()) == 1  # all set to one value
    assert float(cleaned[changed][0]) == pytest.approx(50.0, abs=0.02)
    prepared = prepare_image(image, 1.0, FilterSettings(), pad_to_fft_friendly=False)
    assert prepared.replaced_pixels == 20 + 197
    off = prepare_image(image, 1.0, FilterSettings(outlier_sigma=None), False)
    assert off.replaced_pixels == 0


@pytest.mark.parametrize("n_sigma", [3.5, 4.0, 5.0])
def test_pure_gaussian_noise_loses_only_its_tail(n_sigma):
    image = _gaussian((1024, 1024), seed=4)
    _, count = replace_outliers(image, n_sigma)
    expected = image.numel() * 2 * stats.norm.sf(n_sigma)  # 489, 66, 0.6
    assert abs(count - expected) <= 4 * np.sqrt(expected) + 2


@pytest.mark.parametrize(("mean", "seed"), [(1.0, 5), (0.3, 6), (4.0, 7)])
def test_low_dose_counts_keep_their_poisson_spread(mean, seed):
    """Counts of mean 1 have a MAD of 1 (a "sigma" of 1.48), of mean 0.3 a MAD of 0.

    Only counts beyond the Poisson distribution's own mean + 5 sigma may go, and
    the count must match its tail (scipy's Poisson distribution).
    """
    counts = _poisson((512, 512), mean, seed)
    assert counts.min() >= 0
    if mean < 0.5:
        median = counts.flatten().median()
        assert float((counts - median).abs().flatten().median()) == 0.0
    centre, sigma = clipped_mean_std(counts, 5.0)
    assert centre == pytest.approx(mean, rel=0.02)
    assert sigma == pytest.approx(np.sqrt(mean), rel=0.02)
    cleaned, count = replace_outliers(counts, 5.0)
    changed = cleaned != counts.to(torch.float32)
    limit = mean + 5.0 * np.sqrt(mean)
    margin = 0.02 * 5.0 * np.sqrt(mean)  # the sigma estimate's tolerance
    assert bool(torch.all(counts[changed] >= limit - margin))
    assert bool(torch.all(changed[counts > limit + margin]))
    tail = counts.numel() * stats.poisson.sf(np.floor(limit - margin), mean)
    assert count <= tail + 4 * np.sqrt(tail) + 2
    assert count < 1e-3 * counts.numel()


def test_sparse_counts_with_hot_pixels():
    counts = _poisson((512, 512), 0.3, seed=8)
    counts.view(-1)[:: 512 * 512 // 20][:20] = 1000
    cleaned, count = replace_outliers(counts, 5.0)
    assert bool(torch.all(cleaned.view(-1)[:: 512 * 512 // 20][:20] < 1))
    tail = counts.numel() * stats.poisson.sf(3, 0.3)  # counts >= 4 (mean + 5 sigma)
    assert 20 <= count <= 20 + tail + 4 * np.sqrt(tail)


def test_ice_contaminant_of_a_real_micrograph_is_replaced():
    """The UCSF micrograph: an ice blob ~30 MAD-sigma dark in its top-right corner."""
    file = DATA / "real_micrograph_small_Ucsf_stack_1142_DW.mrc"
    if not file.is_file():
        pytest.skip(f"{file} not present")
    with mrcfile.open(file, permissive=True) as mrc:
        image = torch.from_numpy(np.array(mrc.data, dtype=np.float32))
    cleaned, count = replace_outliers(image, 5.0)
    changed = cleaned != image
    h, w = image.shape
    corner = torch.zeros_like(changed)
    corner[: int(0.4 * h), int(0.45 * w) :] = True
    assert 0.10 < count / image.numel() < 0.16  # measured 12.9 %
    assert float((changed & corner).sum()) / count > 0.99
    assert float((image[changed] < image.median()).double().mean()) > 0.99
    # everywhere else the micrograph keeps its pixels
    assert float(changed[~corner].double().mean()) < 1e-4


def test_outlier_sigma_setting_reaches_the_filter_settings():
    assert Preprocessing().filter_settings().outlier_sigma == 5.0
    assert FilterSettings().outlier_sigma == 5.0
    off = Preprocessing(outlier_sigma=None).filter_settings()
    assert off.outlier_sigma is None
    assert Preprocessing(outlier_sigma=6.0).filter_settings().outlier_sigma == 6.0
    with pytest.raises((ValueError, ConfigError)):
        Preprocessing(outlier_sigma=1.0)
