"""The branches each device takes by default, run on the CPU against the reference.

CUDA's defaults (``options.default_paired``, ``default_filters_per_transform``,
``use_fused``): one batched inverse real FFT over all defocus planes, no paired
transforms, the compiled statistics kernel. The CPU's: two planes per complex
transform, one plane per inverse FFT, eager statistics on small searches. Both
layouts are checked here against the plain reference of ``test_engine`` on the
CPU, so that a GPU-only branch is never first run on a GPU.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from test_engine import OPTICS, masked_blob, noisy_image, reference_search, small_space
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search._filters import pair_filters
from twodtm.search.executors import SearchTask, run_chunk
from twodtm.search.inputs import build_search_inputs
from twodtm.search.options import (
    default_filters_per_transform,
    default_paired,
    use_fused,
)

OPTICS_SHAPE = (96, 80)


def _search(inputs, space, shape, chunks, batch):
    task = SearchTask(inputs, space.euler_angles, shape, batch)
    parts = [run_chunk(task, c) for c in chunks]
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


def _inputs(blob, space, settings, slice_size=0):
    image = prepare_image(noisy_image(OPTICS_SHAPE), 1.0, settings, False)
    template = prepare_template(masked_blob(blob))
    built = build_search_inputs(
        template, 32, image, OPTICS, space, slice_size=slice_size
    )
    return built, image.shape


def test_cuda_defaults_are_what_this_file_runs():
    cuda = torch.device("cuda")
    assert not default_paired(cuda) and default_filters_per_transform(cuda) == 0
    assert use_fused(cuda, 1, (8, 8))
    cpu = torch.device("cpu")
    assert default_paired(cpu) and default_filters_per_transform(cpu) == 1
    assert not use_fused(cpu, 10, (96, 80))


def test_cuda_layout_on_the_cpu_agrees_with_reference(blob):
    """All planes in one irfft2, unpaired, compiled statistics: the GPU's path."""
    slice_size = 32  # slices at the t box's frequencies, as match runs them
    space = small_space(8, pixel_sizes=(0.98, 1.0))
    settings = FilterSettings(bandpass_high_resolution=3.0)
    inputs, shape = _inputs(blob, space, settings, slice_size)
    gpu_like = replace(
        inputs, filters_per_transform=0, fused=True, compiled_slices=True
    )
    assert gpu_like.transform_group == 3 and gpu_like.n_pairs == 0
    # chunks of 5 and 3 with batches of 3: ragged batches and chunks
    chunks = list(space.chunks(5))
    stats = _search(gpu_like, space, shape, chunks, 3)
    reference = reference_search(
        masked_blob(blob), noisy_image(OPTICS_SHAPE), space, settings, folded=True
    )
    mip_ref = reference.max(0)
    np.testing.assert_allclose(
        stats.mip.numpy(), mip_ref, rtol=1e-4, atol=1e-4 * np.abs(mip_ref).max()
    )
    z_ref = (mip_ref - reference.mean(0)) / reference.std(0)
    np.testing.assert_allclose(stats.zscore().numpy(), z_ref, rtol=1e-4, atol=1e-3)
    # the compiled kernel folds exactly what the eager update folds
    eager = _search(replace(gpu_like, fused=False), space, shape, chunks, 4)
    for name in ("mip", "best_index", "sum", "sum_sq"):
        assert torch.equal(getattr(stats, name), getattr(eager, name)), name


def test_cpu_and_cuda_layouts_find_the_same_maxima(blob):
    """Paired, one plane per transform (CPU) against batched, unpaired (CUDA)."""
    space = small_space(10)
    inputs, shape = _inputs(blob, space, FilterSettings())
    cpu = pair_filters(replace(inputs, filters_per_transform=1))
    gpu = replace(inputs, filters_per_transform=0)
    a = _search(cpu, space, shape, space.chunks(10), 4)
    b = _search(gpu, space, shape, space.chunks(4), 3)
    torch.testing.assert_close(a.mip, b.mip, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.zscore(), b.zscore(), rtol=1e-4, atol=1e-3)
    assert float((a.best_index == b.best_index).double().mean()) > 0.95
