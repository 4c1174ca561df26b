"""prepare_template's slab-wise transform against the plain padded rfftn."""

import pytest
import torch

from twodtm.preprocess import prepare_template
from twodtm.search.projection import compact_template


def _reference(volume: torch.Tensor, pad_factor: float) -> torch.Tensor:
    """Written out: faces to zero, sinc^2-corrected, padded, centred, rfftn, shifted."""
    t = volume.shape[-1]
    pad = int(t * (pad_factor - 1.0)) // 2
    p = t + 2 * pad
    faces = torch.cat(
        [volume[[0, -1]].flatten(), volume[:, [0, -1]].flatten()]
        + [volume[..., [0, -1]].flatten()]
    )
    centred = torch.arange(p, dtype=torch.float64) - p // 2
    sinc2 = torch.sinc(centred / p) ** 2
    corr = sinc2[pad : pad + t]
    vol = (volume.double() - faces.double().mean()) / (
        corr[:, None, None] * corr[:, None] * corr
    )
    padded = torch.nn.functional.pad(vol, [pad] * 6)
    # voxel p // 2 to the origin, then the two full axes shifted to the centre
    dft = torch.fft.rfftn(torch.fft.ifftshift(padded), dim=(-3, -2, -1))
    return torch.fft.fftshift(dft, dim=(0, 1))


@pytest.mark.parametrize(("t", "padding"), [(16, 2.0), (24, 1.5), (20, 1.0), (15, 2.0)])
def test_transform_is_the_padded_rfftn(t, padding):
    volume = torch.randn((t, t, t), generator=torch.Generator().manual_seed(t))
    made = prepare_template(volume, padding)
    expected = _reference(volume, padding)
    assert made.shape == expected.shape
    assert made.dtype == torch.complex64
    error = (made.cdouble() - expected).abs().max() / expected.abs().max()
    assert error < 2e-6


@pytest.mark.parametrize(("t", "padding"), [(16, 2.0), (24, 1.5), (15, 2.0)])
def test_compact_transform_is_the_compacted_one(t, padding):
    """Made slab by slab, the bfloat16 parts are those of the complex64 result."""
    volume = torch.randn((t, t, t), generator=torch.Generator().manual_seed(1))
    compact = prepare_template(volume, padding, compact=True)
    assert torch.equal(compact, compact_template(prepare_template(volume, padding)))
