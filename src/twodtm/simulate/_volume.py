"""The 3D maps the simulator images: ttsim3d potentials, binning and blurring.

Maps are in ttsim3d's units (the z-sum of a map is the projected phase shift in
radians, see ``twodtm.simulate``), indexed ``[z, y, x]``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from ttsim3d.models import Simulator, SimulatorConfig

from twodtm.errors import InputFileError


def fourier_bin(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Reduce a ``(t k)^3`` map to ``t^3`` by Fourier cropping (pixel size x ``k``).

    Values are scaled by ``1 / k**2`` so that sums along z (projected phase per
    pixel, see the module doc) are unchanged.

    Returns
    -------
    torch.Tensor
        ``(t, t, t)`` float32 (the input is not modified).
    """
    big = int(volume.shape[-1])
    small = big // factor
    dims = (-3, -2, -1)
    dft = torch.fft.fftshift(torch.fft.fftn(volume.to(torch.float64)), dim=dims)
    start = big // 2 - small // 2
    cropped = dft[start : start + small, start : start + small, start : start + small]
    real = torch.fft.ifftn(torch.fft.ifftshift(cropped, dim=dims)).real
    return (real * (small**3 / big**3) * factor).to(torch.float32)


def map_from_model(
    path: str | os.PathLike[str],
    pixel_size: float,
    box_size: int,
    b_factor: float = 0.0,
    voltage: float = 300.0,
    *,
    filters: SimulatorConfig | None = None,
) -> torch.Tensor:
    """Simulate the 3D potential of an atomic model (PDB/mmCIF) with ttsim3d.

    ttsim3d's scale is calibrated at voxel sizes of at most 1 A (where the z-sum
    of a map is the phase shift in radians, e.g. 0.26 rad through apoferritin), so
    the map is simulated at ``pixel_size / k`` with ``k = ceil(pixel_size)`` and
    Fourier-binned by ``k``.

    Parameters
    ----------
    path : str or PathLike
        PDB or mmCIF file; atoms are centred on their mean position.
    pixel_size : float
        Voxel size, Angstrom.
    box_size : int
        Edge of the cubic box, voxels.
    b_factor : float
        Extra B-factor added to every atom, A^2.
    voltage : float
        Acceleration voltage, kV.
    filters : ttsim3d.models.SimulatorConfig, optional
        ttsim3d's dose-weighting and detector filters (its voltage is replaced by
        ``voltage``); default: a K2 MTF/DQE and 0-30 e/A^2 dose weighting. The MTF
        acts in inverse voxels of the simulation, at ``pixel_size / k``.

    Returns
    -------
    torch.Tensor
        ``(box_size,) * 3`` float32 potential (ttsim3d units, see module doc),
        with the filters applied.
    """
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"{file}: atomic model not found; check the path.")
    factor = max(1, math.ceil(pixel_size - 1e-9))
    size = box_size * factor
    simulator = Simulator(
        pdb_filepath=file,
        pixel_spacing=pixel_size / factor,
        volume_shape=(size, size, size),
        additional_b_factor=b_factor,
        simulator_config=(
            filters or SimulatorConfig(mtf_reference="k2_300kv")
        ).model_copy(update={"voltage": voltage}),
    )
    with torch.inference_mode():
        volume = simulator.run(device="cpu").detach().clone()
    return fourier_bin(volume, factor) if factor > 1 else volume.to(torch.float32)


def _frequency_3d(size: int, pixel_size: float) -> torch.Tensor:
    k = torch.fft.fftfreq(size, d=pixel_size)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kz**2 + ky**2 + kx**2)


def degrade_volume(
    volume: torch.Tensor,
    pixel_size: float,
    b_factor: float = 0.0,
    resolution: float | None = None,
) -> torch.Tensor:
    """Return a copy of a map blurred by a B-factor and/or low-pass filtered.

    Used to give the search a template that differs from the simulated particles,
    as real templates do.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` map (not modified).
    pixel_size : float
        Voxel size, Angstrom.
    b_factor : float
        Envelope ``exp(-B k^2 / 4)``, A^2 (0: none).
    resolution : float or None
        Frequencies finer than ``1 / resolution`` (Angstrom) are set to zero.

    Returns
    -------
    torch.Tensor
        ``(t, t, t)`` float32.
    """
    if not b_factor and resolution is None:
        return volume.detach().clone().to(torch.float32)
    k = _frequency_3d(volume.shape[-1], pixel_size)
    weight = torch.exp(-b_factor * k**2 / 4.0)
    if resolution is not None:
        weight = torch.where(k <= 1.0 / resolution, weight, torch.zeros_like(weight))
    dft = torch.fft.fftn(volume.to(torch.float64))
    return torch.fft.ifftn(dft * weight).real.to(torch.float32)


__all__ = ["degrade_volume", "fourier_bin", "map_from_model"]
