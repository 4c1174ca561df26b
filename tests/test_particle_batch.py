"""The pieces of the particle-batched local search against direct computations:
the pruned window transform against irfft2, the gathered boxes against padding
and rolling, and the grouping of particles by box size."""

from __future__ import annotations

import pytest
import torch

from twodtm.local._boxes import box_dfts, extract_boxes, shift_phases
from twodtm.local._fit import batches_by_box
from twodtm.search._window import window_bases


@pytest.mark.parametrize("shape", [(12, 12), (15, 9), (10, 13)])
def test_window_bases_give_the_corner_of_irfft2(shape):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, *shape, generator=g)
    spectra = torch.fft.rfft2(images)
    rows, columns = window_bases(shape, 5, torch.device("cpu"))
    window = (rows @ spectra.to(torch.complex64) @ columns).real
    assert torch.allclose(window, images[:, :5, :5], atol=1e-5)


def test_extract_boxes_equal_padded_rolled_slices():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(30, 40, generator=g)
    centres = torch.tensor([[15, 20], [1, 38], [29, 0]])
    size, anchor = 10, 3
    boxes = extract_boxes(image, centres, size, anchor)
    padded = torch.nn.functional.pad(image, (size,) * 4)
    for box, (row, column) in zip(boxes, centres.tolist(), strict=True):
        top, left = row + size - size // 2, column + size - size // 2
        expected = padded[top : top + size, left : left + size]
        assert torch.equal(box, expected.roll((anchor - size // 2,) * 2, (0, 1)))
        assert box[anchor, anchor] == image[row, column]


def test_box_dfts_move_the_content_by_the_shifts():
    g = torch.Generator().manual_seed(2)
    boxes = torch.randn(2, 8, 8, generator=g)
    moved = box_dfts(boxes, torch.tensor([[2.0, -1.0], [0.0, 3.0]]))
    expected = torch.stack([boxes[0].roll((2, -1), (0, 1)), boxes[1].roll(3, 1)])
    assert torch.allclose(torch.fft.irfft2(moved, s=(8, 8)), expected, atol=1e-5)
    assert shift_phases((8, 8), torch.zeros(2)).eq(1).all()


def test_batches_hold_one_box_size_and_every_particle_once():
    sizes = [90, 100, 90, 112, 90, 90, 100]
    batches = batches_by_box(sizes, 3)
    assert batches == [[0, 2, 4], [5], [1, 6], [3]]
    assert batches_by_box([], 3) == []
