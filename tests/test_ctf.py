import math

import torch

from twodtm.ctf import Optics, ctf_stack, frequency_grid


def _analytic(optics: Optics, defocus: float, k: torch.Tensor) -> torch.Tensor:
    volts = optics.voltage * 1e3
    wavelength = 12.2643 / math.sqrt(volts * (1 + 0.978466e-6 * volts))
    cs = optics.spherical_aberration * 1e7
    chi = (
        math.pi * wavelength * defocus * k**2
        - 0.5 * math.pi * cs * wavelength**3 * k**4
    )
    # cisTEM's sign: negative at low frequency for underfocus (protein dark)
    return -torch.sin(chi + math.asin(optics.amplitude_contrast))


def test_isotropic_ctf_matches_textbook_formula():
    optics = Optics(pixel_size=1.2, defocus_u=15000.0, defocus_v=15000.0, b_factor=0.0)
    offsets = torch.tensor([-500.0, 0.0, 700.0])
    stack = ctf_stack(optics, offsets, (64, 80))
    k = frequency_grid((64, 80), 1.2)
    for ctf, offset in zip(stack, offsets.tolist(), strict=True):
        torch.testing.assert_close(
            ctf, _analytic(optics, 15000.0 + offset, k), atol=3e-3, rtol=0
        )


def test_astigmatism_angle_is_measured_from_x():
    optics = Optics(
        pixel_size=1.0, defocus_u=20000.0, defocus_v=10000.0, astigmatism_angle=0.0
    )
    ctf = ctf_stack(optics, torch.zeros(1), (128, 128))[0]
    k = frequency_grid((128, 128), 1.0)
    along_x, along_y = ctf[0, 10], ctf[10, 0]
    torch.testing.assert_close(
        along_x, _analytic(optics, 20000.0, k[0, 10]), atol=3e-3, rtol=0
    )
    torch.testing.assert_close(
        along_y, _analytic(optics, 10000.0, k[10, 0]), atol=3e-3, rtol=0
    )
    # defocus_u < defocus_v is the same CTF as the swapped pair turned by 90 degrees
    swapped = Optics(
        pixel_size=1.0, defocus_u=10000.0, defocus_v=20000.0, astigmatism_angle=90.0
    )
    torch.testing.assert_close(
        ctf_stack(swapped, torch.zeros(1), (128, 128))[0], ctf, atol=5e-4, rtol=0
    )


def test_b_factor_envelope_and_inputs_untouched():
    optics = Optics(
        pixel_size=1.0, defocus_u=12000.0, defocus_v=12000.0, b_factor=100.0
    )
    plain = Optics(pixel_size=1.0, defocus_u=12000.0, defocus_v=12000.0)
    offsets = torch.tensor([0.0, 100.0])
    before = offsets.clone()
    k = frequency_grid((32, 32), 1.0)
    ratio = ctf_stack(optics, offsets, (32, 32)) / ctf_stack(plain, offsets, (32, 32))
    mask = ctf_stack(plain, offsets, (32, 32)).abs() > 0.1
    torch.testing.assert_close(
        ratio[mask],
        torch.exp(-25.0 * k**2).expand(2, -1, -1)[mask],
        rtol=1e-4,
        atol=1e-5,
    )
    assert torch.equal(offsets, before)
