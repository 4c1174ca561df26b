"""An odd-shaped micrograph padded to FFT-friendly sizes gives the same peaks."""

import pytest
import torch

from twodtm.ctf import Optics, ctf_stack
from twodtm.orientations import euler_to_matrix
from twodtm.preprocess import (
    FilterSettings,
    fft_friendly_size,
    prepare_image,
    prepare_template,
)
from twodtm.search._filters import pair_filters
from twodtm.search.engine import search_orientations
from twodtm.search.inputs import build_search_inputs
from twodtm.search.projection import project
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics

SHAPE = (101, 87)  # 101 = prime, 87 = 3 * 29: both padded
PEAKS = ((30, 25), (70, 60))
OPTICS = Optics(pixel_size=1.0, defocus_u=5000.0, defocus_v=5000.0)


def _search(image, volume, angles, pad, defocus):
    space = SearchSpace(
        euler_angles=angles,
        defocus_offsets=torch.tensor(defocus, dtype=torch.float64),
        pixel_sizes=torch.tensor([1.0], dtype=torch.float64),
    )
    prepared = prepare_image(image, 1.0, FilterSettings(), pad_to_fft_friendly=pad)
    inputs = build_search_inputs(prepare_template(volume), 32, prepared, OPTICS, space)
    inputs = pair_filters(inputs)  # a no-op for one defocus value
    stats = SearchStatistics.empty(prepared.shape)
    with torch.inference_mode():
        search_orientations(
            inputs, euler_to_matrix(angles), 0, stats, crop=prepared.shape
        )
    return stats, inputs


def _planted_image(volume, angles):
    space = SearchSpace(angles, torch.zeros(1, dtype=torch.float64), torch.ones(1))
    image = prepare_image(torch.randn(64, 64), 1.0, FilterSettings(whitening=False))
    inputs = build_search_inputs(
        prepare_template(volume), 32, image, Optics(pixel_size=1.0), space
    )
    clean = torch.zeros(SHAPE)
    for k, (y, x) in enumerate(PEAKS):
        box = project(inputs.projector, euler_to_matrix(angles[k : k + 1]), 1.0)[0]
        clean[y - 16 : y + 16, x - 16 : x + 16] += box / box.std()
    ctf = ctf_stack(OPTICS, torch.zeros(1), SHAPE)[0]
    imaged = torch.fft.irfft2(torch.fft.rfft2(clean) * ctf, s=SHAPE)
    g = torch.Generator().manual_seed(2)
    return imaged / imaged.std() + 0.2 * torch.randn(SHAPE, generator=g)


@pytest.mark.parametrize("defocus", [[0.0], [-300.0, 0.0, 300.0]])
def test_padded_search_finds_the_same_peaks(blob, defocus):
    """One defocus (real transforms), three (a pair cropped + one real map)."""
    angles = torch.tensor(
        [[0.0, 0.0, 0.0], [40.0, 60.0, 10.0], [120.0, 90.0, 200.0]], dtype=torch.float64
    )
    image = _planted_image(blob, angles)
    padded, padded_inputs = _search(image, blob, angles, True, defocus)
    plain, plain_inputs = _search(image, blob, angles, False, defocus)
    assert padded_inputs.n_pairs == len(defocus) // 2
    assert padded_inputs.image_shape == (fft_friendly_size(101), fft_friendly_size(87))
    assert padded_inputs.image_shape != SHAPE and plain_inputs.image_shape == SHAPE
    assert padded.shape == plain.shape == SHAPE
    for k, (y, x) in enumerate(PEAKS):
        for stats in (padded, plain):
            window = stats.mip[y - 8 : y + 9, x - 8 : x + 9]
            flat = int(window.argmax())
            assert (flat // 17, flat % 17) == (8, 8)  # the peak is at the particle
            # with its orientation, at the true defocus (offset 0)
            assert int(stats.best_index[y, x]) == k * len(defocus) + len(defocus) // 2
        ratio = float(padded.mip[y, x] / plain.mip[y, x])
        assert abs(ratio - 1.0) < 0.1
