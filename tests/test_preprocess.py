import numpy as np
import pytest
import torch

from twodtm.preprocess import (
    FilterSettings,
    bandpass_filter,
    fft_friendly_size,
    prepare_image,
    radial_power_spectrum,
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
