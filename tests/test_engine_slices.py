"""The engine's slicer against torch-fourier-slice and against real-space projections.

``central_slices`` samples the padded template DFT with the sampler
torch-fourier-slice uses; ``project`` transforms slices taken at the
frequencies of an m box (``slice_size``). References: torch-fourier-slice 0.6.0's
``extract_central_slices_rfft_3d`` / ``project_3d_to_2d`` and the forward model's
real-space projection (``forward_model.project_map``, scipy, no Fourier slicing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fourier_slice import extract_central_slices_rfft_3d, project_3d_to_2d
from torch_image_interpolation import sample_image_3d

import forward_model as fm
from conftest import blob_volume
from twodtm.orientations import euler_to_matrix
from twodtm.preprocess import prepare_template
from twodtm.search import projection
from twodtm.search.projection import (
    Projector,
    _gathered_slices,
    _planar_template,
    _slice_frequencies,
    _trilinear,
    central_slices,
    compact_template,
    compiled_slices,
    project,
    projection_box,
)

ANGLES = torch.tensor(
    [
        [0.0, 0.0, 0.0],  # identity: the slice lies on the kx = 0 edge
        [90.0, 90.0, 0.0],  # axis swaps: more edge points
        [10.0, 50.0, 70.0],
        [200.0, 120.0, 300.0],
        [33.0, 80.0, 150.0],
    ],
    dtype=torch.float64,
)


def inside_sphere(volume: torch.Tensor, margin: int = 4) -> torch.Tensor:
    """Zero the map outside the sphere of radius ``t // 2 - margin``."""
    t = volume.shape[0]
    axis = torch.arange(t) - t // 2
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis**2
    return volume * (r2 < (t // 2 - margin) ** 2)


def inputs_for(volume: torch.Tensor, padding: float, slice_size: int) -> Projector:
    """What ``project`` needs, at this padding and slice box."""
    return Projector(
        template_dft=prepare_template(volume, padding),
        template_size=int(volume.shape[0]),
        slice_size=slice_size,
    )


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("scale", [1.0, 1.03])
def test_slices_at_the_padded_size_are_torch_fourier_slices(scale):
    template = prepare_template(blob_volume(24))
    matrices = euler_to_matrix(ANGLES).float() * scale
    before = matrices.clone()
    expected = extract_central_slices_rfft_3d(template, matrices.clone())
    expected = torch.fft.ifftshift(expected, dim=-2)  # unshifted rows, as ours
    got = central_slices(template, matrices, 48)
    assert got.shape == expected.shape == (5, 48, 25)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)
    # separate real and imaginary volumes give the same slices
    planes = _planar_template(template).contiguous()
    assert torch.equal(central_slices(planes, matrices, 48), got)
    assert torch.equal(matrices, before)  # the matrices are untouched


def test_sampler_is_torch_image_interpolations():
    """The engine's batched ``grid_sample`` call gives ``sample_image_3d``'s values."""
    g = torch.Generator().manual_seed(2)
    volume = torch.randn((2, 9, 10, 6), generator=g)
    # inside, on the edges, and outside (zeroed) the array
    coordinates = torch.rand((3, 50, 3), generator=g) * 12.0 - 1.5
    coordinates[0, :3] = torch.tensor([[0.0, 0.0, 0.0], [8.0, 9.0, 5.0], [8.5, 1, 1]])
    expected = sample_image_3d(volume, coordinates, interpolation="trilinear")
    got = _trilinear(volume, coordinates)
    assert torch.equal(got, expected)
    assert (expected == 0).all(-1).sum() > 10  # some points were outside


def test_slices_do_not_depend_on_the_batch():
    template = prepare_template(blob_volume(24))
    matrices = euler_to_matrix(ANGLES).float()
    batch = central_slices(template, matrices, 24)
    one_by_one = torch.cat([central_slices(template, m[None], 24) for m in matrices])
    assert torch.equal(batch, one_by_one)


@pytest.mark.parametrize("scale", [1.0, 1.4])
def test_compiled_sampler_gives_the_eager_samplers_slices(scale):
    """The compiled gathers against ``grid_sample``: same points, same weights.

    At scale 1.4 the slice corners leave the array (zeros); the identity and the
    axis swaps put points on the kx = 0 plane, where the half-grid rule decides.
    """
    template = prepare_template(blob_volume(24))
    matrices = euler_to_matrix(ANGLES).float() * scale
    expected = central_slices(template, matrices, 48)
    got = compiled_slices(template, matrices, 48)
    peak = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6 * peak)
    assert int((expected == 0).sum()) == int((got == 0).sum())
    # eager calls of the same function give the same bits (CPU), so a run's
    # slices do not depend on whether the kernel was compiled
    voxels = torch.view_as_real(template).view(-1)
    frequencies = _slice_frequencies(48, template.device).reshape(-1, 2)
    p, q = int(template.shape[0]), int(template.shape[-1])
    eager = _gathered_slices(voxels, matrices, frequencies, p, q)
    assert torch.equal(torch.view_as_complex(eager).reshape(got.shape), got)
    # and no slice depends on the others of its batch
    one_by_one = torch.cat([compiled_slices(template, m[None], 48) for m in matrices])
    assert torch.equal(one_by_one, got)


def test_a_failed_compile_falls_back_to_the_same_gathers(monkeypatch):
    def broken():
        def fail(*args):
            raise torch._dynamo.exc.TorchDynamoException("no compiler here")

        return fail

    template = prepare_template(blob_volume(24))
    matrices = euler_to_matrix(ANGLES).float()
    expected = compiled_slices(template, matrices, 24)
    monkeypatch.setattr(projection, "_compiled_gather", broken)
    monkeypatch.setattr(projection, "_UNCOMPILED", set())
    with pytest.warns(RuntimeWarning, match="uncompiled"):
        got = compiled_slices(template, matrices, 24)
    assert torch.equal(got, expected)
    assert "cpu" in projection._UNCOMPILED
    assert torch.equal(compiled_slices(template, matrices, 24), expected)


def test_compact_template_slices_are_bfloat16_close():
    """Half the bytes; the slices within bfloat16's 2^-9 rounding of the voxels."""
    template = prepare_template(blob_volume(24))
    compact = compact_template(template)
    assert compact.dtype == torch.bfloat16 and compact.shape == (*template.shape, 2)
    assert compact.nbytes * 2 == template.nbytes
    matrices = euler_to_matrix(ANGLES).float()
    exact = compiled_slices(template, matrices, 24)
    got = compiled_slices(compact, matrices, 24)
    error = float((got - exact).norm() / exact.norm())
    assert 1e-5 < error < 2**-8  # rounded, but no more than bfloat16 rounds
    # the projections correlate with the exact ones to 1 - 1e-5
    projector = Projector(template, 24, 24, compiled=True)
    exact_boxes = project(projector, matrices, 1.0)
    boxes = project(Projector(compact, 24, 24, compiled=True), matrices, 1.0)
    cc = (boxes * exact_boxes).sum((1, 2)) / boxes.norm(dim=(1, 2))
    cc = cc / exact_boxes.norm(dim=(1, 2))
    assert float(cc.min()) > 1 - 1e-5
    with pytest.raises(ValueError, match="compiled sampler"):
        project(Projector(compact, 24, 24), matrices, 1.0)


def test_projection_without_padding_is_torch_fourier_slices():
    volume = inside_sphere(blob_volume(32))
    rotations = euler_to_matrix(ANGLES)
    expected = project_3d_to_2d(volume, rotations.float(), pad_factor=1.0)
    got = project(inputs_for(volume, 1.0, 0), rotations, 1.0)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_folded_projection_is_the_padded_box_periodised_onto_t():
    """m = t gives the whole 2t projection of the padded map folded onto t."""
    volume = inside_sphere(blob_volume(32))
    t = 32
    rotations = euler_to_matrix(ANGLES)
    padded = torch.nn.functional.pad(volume, [t // 2] * 6)
    full = project_3d_to_2d(padded, rotations.float(), pad_factor=1.0)  # (5, 2t, 2t)
    wrapped = torch.fft.ifftshift(full, dim=(-2, -1))  # projection centre at 0
    folded = torch.fft.fftshift(
        wrapped.reshape(-1, 2, t, 2, t).sum((1, 3)), dim=(-2, -1)
    )
    got = project(inputs_for(volume, 2.0, t), rotations, 1.0)
    scale = float(folded.abs().max())
    torch.testing.assert_close(got, folded, rtol=1e-5, atol=1e-5 * scale)
    # ... which is not the p-box crop: the interpolation ghosts outside t fold in
    cropped = project(inputs_for(volume, 2.0, 0), rotations, 1.0)
    difference = relative(got[2:], cropped[2:])
    print(f"map inside its sphere: folded vs cropped {difference:.4f} of the norm")
    assert 1e-3 < difference < 0.05


@pytest.mark.parametrize("size", [32, 25])
def test_projections_match_real_space_projections(size):
    """Against scipy's real-space projection, for even and odd boxes.

    torch-fourier-slice 0.6.0 maps frequencies of an odd box half a voxel off
    (its DC index is ``(f + 0.5) * p`` instead of ``p // 2``): its odd-box
    projections are 6x further from the real-space ones; the engine's are not.
    """
    volume = inside_sphere(blob_volume(size))
    truth = torch.from_numpy(
        np.stack([fm.project_map(volume.double().numpy(), *a) for a in ANGLES.tolist()])
    ).float()
    rotations = euler_to_matrix(ANGLES)
    cropped = project(inputs_for(volume, 2.0, 0), rotations, 1.0)
    folded = project(inputs_for(volume, 2.0, size), rotations, 1.0)
    upstream = project_3d_to_2d(volume, rotations.float(), pad_factor=2.0)
    errors = [relative(x, truth) for x in (cropped, folded, upstream)]
    print(f"t={size}: error vs real space cropped/folded/torch-fourier-slice", errors)
    assert errors[0] < 0.04 and errors[1] < 0.04
    if size % 2:
        assert errors[2] > 0.1
    else:
        assert errors[2] == pytest.approx(errors[0], rel=1e-3)


def test_projection_box_holds_the_map():
    t = 32
    assert projection_box(inside_sphere(blob_volume(t)), 64) == t
    # a map reaching the faces needs a larger box, at most the padded one
    filling = blob_volume(t, spread=1.0)
    box = projection_box(filling, 64)
    assert t < box <= 64 and box % 2 == 0
    assert projection_box(torch.ones((t, t, t)), 64) == t  # constant: nothing left
    cube = torch.zeros((t, t, t))
    cube[1:-1, 1:-1, 1:-1] = 1.0  # to the corners: radius 15 sqrt(3) = 25.98
    # all voxels weigh the same: r is the smallest integer with at most 1e-3 of
    # the cube's voxels farther out
    axis = np.arange(1, t - 1) - t // 2
    r = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis**2)
    k = next(k for k in range(40) if (r > k).sum() <= 1e-3 * r.size)
    assert k == 25
    assert projection_box(cube, 64) == 2 * k + 2
    assert projection_box(cube, 64, tolerance=0.0) == 2 * 26 + 2  # every voxel
    sphere = inside_sphere(torch.ones((t, t, t)) + 1.0, margin=1)  # radius < 15
    assert projection_box(sphere, 64) == t


def test_box_filling_maps_need_their_projection_box():
    """Folding onto t wraps a box-filling map's projections; its box does not."""
    t = 32
    volume = blob_volume(t, spread=1.0)
    rotations = euler_to_matrix(ANGLES[2:])
    cropped = project(inputs_for(volume, 2.0, 0), rotations, 1.0)
    folded = project(inputs_for(volume, 2.0, t), rotations, 1.0)
    boxed = project(inputs_for(volume, 2.0, projection_box(volume, 64)), rotations, 1.0)
    wrapped, held = relative(folded, cropped), relative(boxed, cropped)
    print(f"box-filling map vs the p crop: folded {wrapped:.3f}, boxed {held:.4f}")
    assert wrapped > 0.2
    assert held < 0.06
