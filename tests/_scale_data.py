"""Small on-disk searches for the executor, checkpoint and batch tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from twodtm.config import MatchConfig, parse_config
from twodtm.io.mrc import write_mrc


def blob_template(size: int = 16, seed: int = 3) -> np.ndarray:
    """An asymmetric cube of Gaussian blobs, float32 ``(size,) * 3``."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(6, 3, generator=g) - 0.5) * (size / 2)
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    volume = torch.zeros(size, size, size)
    for c in centres:
        r2 = (xx - c[2]) ** 2 + (yy - c[1]) ** 2 + (zz - c[0]) ** 2
        volume += torch.exp(-r2 / (2 * 1.5**2))
    return volume.numpy()


def write_inputs(
    directory: Path, name: str = "micrograph", size: int = 64, seed: int = 0
) -> tuple[Path, Path]:
    """A noise micrograph and a blob template as MRC files; returns their paths."""
    rng = np.random.default_rng(seed)
    micrograph = directory / f"{name}.mrc"
    write_mrc(micrograph, rng.normal(size=(size, size)).astype(np.float32), 1.0)
    template = directory / "template.mrc"
    if not template.exists():
        write_mrc(template, blob_template(), 1.0)
    return micrograph, template


def small_config(
    directory: Path, out_of_plane_step: float = 30.0, **compute: object
) -> MatchConfig:
    """A config of a fast search (about 100-300 orientations x 3 defoci)."""
    micrograph, template = write_inputs(directory)
    data = {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": {"pixel_size": 1.0, "defocus_u": 8000.0, "defocus_v": 7800.0},
        "defocus_search": {"min": -400.0, "max": 400.0, "step": 400.0},
        "orientation_search": {
            "in_plane_step": 20.0,
            "out_of_plane_step": out_of_plane_step,
        },
        "compute": {"batch_size": 4, "chunk_size": 8, **compute},
        "output": {"directory": str(directory / "out")},
    }
    return parse_config(MatchConfig, data)
