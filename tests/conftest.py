"""Shared fixtures: a small asymmetric blob molecule and devices to test on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def blob_volume(
    size: int = 32,
    n_blobs: int = 12,
    seed: int = 1,
    sigma: float = 1.8,
    spread: float = 0.5,
) -> torch.Tensor:
    """An asymmetric 'molecule' of Gaussian blobs centred in a cube (float32).

    Blob centres are uniform in a cube of edge ``spread * size`` about the centre.
    """
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n_blobs, 3, generator=g) - 0.5) * (size * spread)
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.zeros(size, size, size)
    for c in centres:
        r2 = (xx - c[2]) ** 2 + (yy - c[1]) ** 2 + (zz - c[0]) ** 2
        volume += torch.exp(-r2 / (2 * sigma**2))
    return volume


@pytest.fixture(scope="session")
def blob() -> torch.Tensor:
    """A 32^3 asymmetric test template."""
    return blob_volume()


@pytest.fixture(scope="session")
def sharp_blob() -> torch.Tensor:
    """A 32^3 template with finer detail (more, narrower blobs)."""
    return blob_volume(n_blobs=40, seed=4, sigma=1.0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module on one torch thread, restoring the count afterwards.

    CPU FFT results depend on the thread count in their last bits, so tests that
    compare runs across processes fix it; small FFTs are also fastest this way.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every available device: the CPU always, CUDA when present."""
    return torch.device(request.param)
