"""The engine against a plain reference: template-size projection, padding, one
full FFT per correlation, real-space norms, and an unfused float64 reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fourier_slice import project_3d_to_2d

from twodtm.ctf import Optics, ctf_stack
from twodtm.orientations import euler_to_matrix, orientation_grid
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search._filters import full_grid, pair_filters
from twodtm.search.engine import correlate
from twodtm.search.executors import SearchTask, run_chunk
from twodtm.search.inputs import build_search_inputs
from twodtm.search.norms import has_lag_room, orientation_norms, projection_norms
from twodtm.search.projection import padded_dft, project
from twodtm.search.space import SearchSpace

OPTICS = Optics(
    pixel_size=1.0, defocus_u=9000.0, defocus_v=8000.0, astigmatism_angle=20.0
)


def masked_blob(blob: torch.Tensor) -> torch.Tensor:
    """Zero outside a sphere so every edge-value convention subtracts exactly 0."""
    t = blob.shape[0]
    axis = torch.arange(t) - t // 2
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    return blob * ((xx**2 + yy**2 + zz**2) < (t // 2 - 4) ** 2)


def small_space(n: int = 20, pixel_sizes: tuple[float, ...] = (1.0,)) -> SearchSpace:
    angles = orientation_grid(30.0, 30.0)[::7][:n]
    return SearchSpace(
        euler_angles=angles,
        defocus_offsets=torch.tensor([-400.0, 0.0, 400.0], dtype=torch.float64),
        pixel_sizes=torch.tensor(pixel_sizes, dtype=torch.float64),
    )


def noisy_image(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2.0 + 10.0


def folded_projection(volume: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """torch-fourier-slice's projection of the 2x zero-padded map, folded onto t.

    The whole ``(2t, 2t)`` projection of the padded map, periodised onto the t box:
    what the engine's slices, sampled at the t box's frequencies, transform to.
    """
    t = volume.shape[0]
    padded = torch.nn.functional.pad(volume, [t // 2] * 6)
    full = project_3d_to_2d(padded, rotation, pad_factor=1.0)[0]  # centre at t
    wrapped = torch.fft.ifftshift(full)  # centre at pixel 0
    return torch.fft.fftshift(wrapped.reshape(2, t, 2, t).sum((0, 2)))


def reference_search(volume, image, space, settings, folded=False):
    """Every correlation computed on its own, reduced in float64 numpy.

    Projections: torch-fourier-slice's (2x padding, cropped), or with ``folded``
    the padded box's projection folded onto t (the engine with slice_size t).
    """
    prepared = prepare_image(
        image, OPTICS.pixel_size, settings, pad_to_fft_friendly=False
    )
    h, w = prepared.padded_shape
    t = volume.shape[0]
    maps = []
    for angles in space.euler_angles:
        for pixel_size in space.pixel_sizes.tolist():
            rotation = euler_to_matrix(angles[None]).float() * (
                OPTICS.pixel_size / pixel_size
            )
            if folded:
                proj = folded_projection(volume, rotation)
            else:
                proj = project_3d_to_2d(volume, rotation, pad_factor=2.0)[0]
            canvas = torch.zeros(h, w)
            canvas[:t, :t] = proj
            canvas = torch.roll(canvas, (-(t // 2), -(t // 2)), (0, 1))
            ctfs = ctf_stack(OPTICS, space.defocus_offsets.float(), (h, w))
            for ctf in ctfs:
                filtered = torch.fft.irfft2(
                    torch.fft.rfft2(canvas) * ctf * prepared.template_filter, s=(h, w)
                )
                filtered = filtered / filtered.double().square().sum().sqrt().float()
                corr = torch.fft.irfft2(
                    prepared.whitened_dft * torch.fft.rfft2(filtered).conj(), s=(h, w)
                )
                maps.append(corr.double().numpy())
    return np.stack(maps)


def engine_search(
    volume, image, space, settings, chunks, batch_size, device, *, paired=False, m=0
):
    prepared = prepare_image(
        image.to(device), OPTICS.pixel_size, settings, pad_to_fft_friendly=False
    )
    inputs = build_search_inputs(
        prepare_template(volume.to(device)),
        volume.shape[0],
        prepared,
        OPTICS,
        space,
        slice_size=m,
    )
    if paired:
        inputs = pair_filters(inputs)
    task = SearchTask(inputs, space.euler_angles, prepared.shape, batch_size)
    parts = [run_chunk(task, c).to("cpu") for c in chunks]
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    return total


@pytest.mark.parametrize(
    ("pixel_sizes", "paired", "folded"),
    [
        ((1.0,), False, False),
        ((0.98, 1.0), False, False),
        ((1.0,), True, False),
        ((0.98, 1.0), True, True),
    ],
)
def test_engine_agrees_with_reference(blob, device, pixel_sizes, paired, folded):
    volume = masked_blob(blob)
    image = noisy_image((96, 80))
    space = small_space(pixel_sizes=pixel_sizes)
    settings = FilterSettings(bandpass_high_resolution=3.0)
    reference = reference_search(volume, image, space, settings, folded)
    # batch of 3 over 20 orientations: the last batch is partial, with 3 defocus planes
    # (paired: defocus 0 and 1 share one complex transform, 2 has a real one)
    m = volume.shape[0] if folded else 0  # slices at the t box's frequencies
    stats = engine_search(
        volume, image, space, settings, space.chunks(20), 3, device, paired=paired, m=m
    )
    mip_ref = reference.max(0)
    np.testing.assert_allclose(
        stats.mip.numpy(), mip_ref, rtol=1e-4, atol=1e-4 * np.abs(mip_ref).max()
    )
    mean, std = stats.mean_std()
    np.testing.assert_allclose(mean.numpy(), reference.mean(0), atol=2e-3)
    np.testing.assert_allclose(std.numpy(), reference.std(0), rtol=1e-3)
    z_ref = (mip_ref - reference.mean(0)) / reference.std(0)
    np.testing.assert_allclose(stats.zscore().numpy(), z_ref, rtol=1e-4, atol=1e-3)
    top2 = np.sort(reference, axis=0)[-2:]
    unique = (top2[1] - top2[0]) > 1e-3 * np.abs(top2[1])
    assert unique.mean() > 0.9
    assert np.array_equal(stats.best_index.numpy()[unique], reference.argmax(0)[unique])
    assert stats.count == space.size


def test_std_map_is_standard_deviation_not_variance(blob):
    volume = masked_blob(blob)
    image = noisy_image((64, 64), seed=3)
    space = small_space(8)
    stats = engine_search(
        volume, image, space, FilterSettings(), space.chunks(8), 4, "cpu"
    )
    reference = reference_search(volume, image, space, FilterSettings())
    _, std = stats.mean_std()
    np.testing.assert_allclose(std.numpy(), reference.std(0), rtol=1e-3)
    assert not np.allclose(std.numpy(), reference.var(0), rtol=1e-2)


def test_padded_dft_matches_full_fft(blob):
    rotations = euler_to_matrix(
        torch.tensor([[10.0, 50.0, 80.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    )
    inputs = build_search_inputs(
        prepare_template(blob),
        blob.shape[0],
        prepare_image(
            noisy_image((70, 90)), 1.0, FilterSettings(), pad_to_fft_friendly=False
        ),
        OPTICS,
        small_space(2),
    )
    boxes = project(inputs.projector, rotations, 1.0)
    t = boxes.shape[-1]
    canvas = torch.zeros(2, 70, 90)
    canvas[:, :t, :t] = boxes
    canvas = torch.roll(canvas, (-(t // 2), -(t // 2)), (1, 2))
    expected = torch.fft.rfft2(canvas)
    got = padded_dft(boxes, (70, 90))
    torch.testing.assert_close(
        got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()
    )


def test_engine_leaves_inputs_unchanged(blob):
    volume = blob.clone()
    image = noisy_image((64, 64))
    space = small_space(4)
    angles_before = space.euler_angles.clone()
    prepared = prepare_image(image, 1.0, FilterSettings())
    template_dft = prepare_template(volume)
    dft_before = template_dft.clone()
    inputs = build_search_inputs(template_dft, 32, prepared, OPTICS, space)
    rotations = euler_to_matrix(space.euler_angles)
    rotations_before = rotations.clone()
    project(inputs.projector, rotations, 1.02)
    assert torch.equal(rotations, rotations_before)
    assert torch.equal(template_dft, dft_before)
    assert torch.equal(space.euler_angles, angles_before)
    assert torch.equal(volume, blob)


@pytest.mark.parametrize("shape", [(64, 80), (63, 81), (50, 49)])
def test_full_grid_is_the_complex_dft(shape):
    real = noisy_image(shape, seed=5)
    torch.testing.assert_close(
        full_grid(torch.fft.rfft2(real), shape[1]),
        torch.fft.fft2(real.to(torch.complex64)),
        rtol=1e-4,
        atol=1e-3,
    )


@pytest.mark.parametrize("n_defocus", [1, 2, 4, 5])
def test_paired_correlations_equal_real_ones(blob, n_defocus):
    """One complex transform per defocus pair gives each map of its own irfft2."""
    image = prepare_image(noisy_image((60, 70), seed=2), 1.0, FilterSettings(), False)
    space = SearchSpace(
        euler_angles=torch.zeros((1, 3), dtype=torch.float64),
        defocus_offsets=300.0 * torch.arange(n_defocus, dtype=torch.float64),
        pixel_sizes=torch.ones(1, dtype=torch.float64),
    )
    inputs = build_search_inputs(prepare_template(blob), 32, image, OPTICS, space)
    paired = pair_filters(inputs)
    assert paired.n_pairs == n_defocus // 2 and paired.n_defocus == n_defocus
    rotation = euler_to_matrix(torch.tensor([[30.0, 60.0, 10.0]], dtype=torch.float64))
    box = project(inputs.projector, rotation, 1.0)
    dft = padded_dft(box, (60, 70))
    norms = orientation_norms(inputs, box[0], dft, 0)
    expected = torch.stack(
        [
            torch.fft.irfft2(f * dft[0].conj(), s=(60, 70)) / n
            for f, n in zip(inputs.filtered_image[0], norms, strict=True)
        ]
    )
    for layout in (inputs, paired):
        got = correlate(layout, dft[0], norms, 0)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# Odd widths: an even width's Nyquist column holds an astigmatic CTF that is not
# Hermitian, where "the filtered projection" depends on the convention used.
@pytest.mark.parametrize(("shape", "size"), [((70, 81), 32), ((49, 65), 25)])
def test_norms_from_lag_kernels_equal_real_space_norms(shape, size):
    """Autocorrelation x lag kernel norms against filtered projections' norms."""
    g = torch.Generator().manual_seed(11)
    volume = masked_blob(torch.randn((size,) * 3, generator=g))
    image = prepare_image(noisy_image(shape, seed=4), 1.0, FilterSettings(), False)
    inputs = build_search_inputs(
        prepare_template(volume), size, image, OPTICS, small_space()
    )
    assert inputs.norm_kernels is not None
    rotations = euler_to_matrix(small_space().euler_angles[:4])
    boxes = project(inputs.projector, rotations, 1.0)
    dfts = padded_dft(boxes, shape)
    filters = ctf_stack(OPTICS, small_space().defocus_offsets.float(), shape)
    filtered = torch.fft.irfft2(
        dfts[:, None] * filters * image.template_filter, s=shape
    )  # (B, D, H, W): each filtered projection in real space
    expected = filtered.double().square().sum((-2, -1)).sqrt().float()
    got = torch.stack([projection_norms(inputs, box, 0) for box in boxes])
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=0.0)


def test_small_images_get_norms_from_the_image_grid(blob):
    """Below 2t - 1 pixels the lag kernels would wrap: Parseval weights instead."""
    image = prepare_image(noisy_image((50, 71), seed=4), 1.0, FilterSettings(), False)
    inputs = build_search_inputs(
        prepare_template(blob), 32, image, OPTICS, small_space()
    )
    assert inputs.norm_kernels is None and inputs.norm_weights is not None
    rotation = euler_to_matrix(small_space().euler_angles[:1])
    box = project(inputs.projector, rotation, 1.0)
    dft = padded_dft(box, (50, 71))
    filters = ctf_stack(OPTICS, small_space().defocus_offsets.float(), (50, 71))
    filtered = torch.fft.irfft2(dft * filters * image.template_filter, s=(50, 71))
    expected = filtered.double().square().sum((-2, -1)).sqrt().float()
    got = orientation_norms(inputs, box[0], dft, 0)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=0.0)


def test_lag_kernels_need_room_for_every_lag():
    assert not has_lag_room((40, 40), 21)  # lags up to 20 would wrap
    assert has_lag_room((40, 40), 20) and not has_lag_room((38, 80), 20)
