"""A pixel-size trial rescales the template, never the data's Thon rings.

CTFFIND fits the CTF in the micrograph's pixel units; cisTEM keeps it there when it
tries another pixel size. Evaluating the CTF in Angstrom at the trial pixel size
instead moves every ring: at +2 % and 15,000 A defocus the trial's CTF correlates
0.03 with the data's (written out below), so the pixel-size search compared the
template with a CTF the data does not have.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from twodtm.ctf import Optics
from twodtm.local._batch import particle_ctfs
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search.inputs import build_search_inputs
from twodtm.search.space import SearchSpace

OPTICS = Optics(pixel_size=1.0, defocus_u=15200.0, defocus_v=14800.0)


def _ctf_in_angstrom(shape, pixel_size, defocus):
    """cisTEM's CTF (isotropic), evaluated in physical frequency at ``pixel_size``."""
    volts = OPTICS.voltage * 1e3
    wavelength = 12.2643 / math.sqrt(volts * (1 + 0.978466e-6 * volts))
    ky = np.fft.fftfreq(shape[0], d=pixel_size)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size)[None, :]
    k2 = ky**2 + kx**2
    cs = OPTICS.spherical_aberration * 1e7
    chi = math.pi * wavelength * defocus * k2
    chi = chi - 0.5 * math.pi * cs * wavelength**3 * k2**2
    return -np.sin(chi + math.asin(OPTICS.amplitude_contrast))


def _correlation(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_moving_the_rings_with_the_pixel_size_loses_the_data():
    # The defect's size, so that the test below is known to matter.
    shape = (256, 256)
    data = _ctf_in_angstrom(shape, 1.0, 15000.0)
    moved = _ctf_in_angstrom(shape, 1.02, 15000.0)
    assert abs(_correlation(data, moved)) < 0.1


def test_search_filters_are_the_same_at_every_trial_pixel_size():
    g = torch.Generator().manual_seed(0)
    image = prepare_image(torch.randn(96, 96, generator=g), 1.0, FilterSettings())
    template = prepare_template(torch.randn(24, 24, 24, generator=g))
    space = SearchSpace(
        euler_angles=torch.zeros(1, 3),
        defocus_offsets=torch.tensor([-200.0, 0.0, 200.0], dtype=torch.float64),
        pixel_sizes=torch.tensor([0.98, 1.0, 1.02], dtype=torch.float64),
    )
    inputs = build_search_inputs(template, 24, image, OPTICS, space)
    for p in (0, 2):
        assert torch.equal(inputs.filtered_image[p], inputs.filtered_image[1])
        assert inputs.norm_kernels is not None or inputs.norm_weights is not None
    # ... while the template is sampled at the trial scale
    assert inputs.pixel_scales == (1.0 / 0.98, 1.0, 1.0 / 1.02)


def test_refine_filters_are_the_same_at_every_trial_pixel_size():
    defocus = torch.tensor([[14800.0, 15000.0], [16000.0, 16200.0]])
    ctfs = particle_ctfs(OPTICS, defocus, 3, (48, 48))
    assert ctfs.shape == (2, 3, 2, 48, 25)
    for s in (1, 2):
        assert torch.equal(ctfs[:, s], ctfs[:, 0])
    # and each particle keeps its own defocus
    assert not torch.allclose(ctfs[0, 0, 0], ctfs[1, 0, 0])
