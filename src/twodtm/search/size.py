"""How big a search is before it runs: orientations, memory and time.

``count_orientations`` counts the orientation grid from its steps and the
symmetry's angular ranges without building it (a typo such as
``in_plane_step: 0.001`` would otherwise allocate for minutes before anything is
said), ``calibrate`` times a few orientations of the real engine, and
``SearchSize`` puts these figures and those of ``search.memory`` together, prints
them (``describe``) and says what is wrong with them (``problems``): more memory
than is available, or longer than a limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import healpy as hp
import numpy as np
import torch
from torch_so3 import get_symmetry_ranges

from twodtm.errors import SearchTooLargeError
from twodtm.orientations import parse_symmetry
from twodtm.progress import format_duration
from twodtm.search.executors import SearchTask, run_chunk
from twodtm.search.fallback import BatchFallback
from twodtm.search.space import Chunk

__all__ = [
    "SearchSize",
    "calibrate",
    "calibration_angles",
    "check_size",
    "count_orientations",
]

# Rows of the uniform grid counted one by one; beyond, the closed-form estimate.
_EXACT_ROWS = 2_000_000
_GIB = 1024**3


def _psi_count(in_plane_step: float) -> int:
    # torch.arange(0, 360, step) holds ceil(360 / step) values
    return max(1, math.ceil(360.0 / in_plane_step))


def _uniform_views(step: float, phi_range: float, theta_max: float) -> int:
    """Count the views of torch-so3's ``uniform_base_grid``, row by row.

    Mirrors its arithmetic: theta rows ``arange(0, theta_max + step, step)``, and
    per row ``round(R / (step / sin theta))`` phi values over the range R.
    """
    rows = math.ceil((theta_max + step) / step)
    if rows > _EXACT_ROWS:
        # the sum over rows tends to (R / step) * integral of sin(theta) / step
        band = 1.0 - math.cos(math.radians(theta_max))
        return max(1, round(phi_range / step * band / math.radians(step)))
    theta = np.deg2rad(np.arange(0.0, theta_max + step, step, dtype=np.float64))
    span = np.deg2rad(phi_range)
    phi_step = np.abs(np.deg2rad(step) / (np.sin(theta) + 1e-6))
    phi_step = np.clip(phi_step, None, span)
    phi_step = span / np.round(span / phi_step)
    # np.arange(0, span, phi_step) holds ceil(span / phi_step) values
    return int(np.ceil(span / phi_step).sum())


def _healpix_rings(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """First pixel and pixel count of each ring of a RING-ordered HEALPix map."""
    ring = np.arange(1, 4 * nside, dtype=np.int64)
    from_pole = np.minimum(ring, 4 * nside - ring)
    count = 4 * np.minimum(from_pole, nside)
    first = np.where(
        ring < nside,
        2 * ring * (ring - 1),
        np.where(
            ring <= 3 * nside,
            2 * nside * (nside - 1) + (ring - nside) * 4 * nside,
            12 * nside * nside - 2 * from_pole * (from_pole + 1),
        ),
    )
    return first, count


def _healpix_views(step: float, phi_range: float, theta_max: float) -> int:
    """Count the pixels of torch-so3's ``healpix_base_grid``, ring by ring.

    Its nside is ``ceil(sqrt(int(4 pi / step^2) / 12))``; a ring's pixels share
    theta and are evenly spaced in phi, so each ring needs only the position of
    its last pixel at or below ``phi_range`` (checked with healpy's own angles).
    """
    nside = math.ceil(math.sqrt(int(4 * math.pi / math.radians(step) ** 2) / 12))
    first, count = _healpix_rings(nside)
    theta, phi0 = hp.pix2ang(nside, first)
    width = 360.0 / count
    last = np.floor((phi_range - np.rad2deg(phi0)) / width).astype(np.int64)
    last = np.clip(last, -1, count - 1)
    # the floor may be one off where a pixel sits on the boundary: ask healpy
    after = np.clip(last + 1, 0, count - 1)
    phi = np.rad2deg(hp.pix2ang(nside, first + after)[1])
    last = np.where((last + 1 < count) & (phi <= phi_range), last + 1, last)
    phi = np.rad2deg(hp.pix2ang(nside, first + np.clip(last, 0, None))[1])
    last = np.where((last >= 0) & (phi > phi_range), last - 1, last)
    inside = np.rad2deg(theta) <= theta_max
    return int(((last + 1) * inside).sum())


def count_orientations(
    in_plane_step: float,
    out_of_plane_step: float,
    symmetry: str = "C1",
    base_grid: str = "uniform",
) -> int:
    """Orientations of ``orientations.orientation_grid``, without building it.

    Exact for both base grids (the uniform one below two million theta rows,
    past which the count is the closed-form limit of its rows).

    Parameters
    ----------
    in_plane_step, out_of_plane_step : float
        Grid steps, degrees.
    symmetry : str
        Point group (``C1``, ``D7``, ``O`` ...).
    base_grid : {"uniform", "healpix"}
        Sampling of the viewing directions.

    Returns
    -------
    int
        Views times in-plane angles.
    """
    group, order = parse_symmetry(symmetry)
    ranges = get_symmetry_ranges(group, order)
    phi_range = ranges.phi_max - ranges.phi_min
    views = (_healpix_views if base_grid == "healpix" else _uniform_views)(
        out_of_plane_step, phi_range, ranges.theta_max
    )
    return views * _psi_count(in_plane_step)


def calibration_angles(n: int) -> torch.Tensor:
    """``(n, 3)`` float64 spread-out ZYZ angles (degrees) to time the engine on."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.stack(
        [(k * 137.5) % 360.0, (k * 41.0) % 180.0, (k * 77.0) % 360.0], -1
    )


def calibrate(task: SearchTask, repeats: int = 3) -> float:
    """Time ``task``: the median seconds per orientation of ``repeats`` timings.

    The first orientation warms the engine up (and compiles it); the others are
    split into ``repeats`` equal runs, timed one by one, so that one run slowed
    by other work on the machine does not set the estimate. The statistics are
    thrown away; on CUDA the device is synchronised before the clock is read.
    """
    per_run = max(1, (int(task.euler_angles.shape[0]) - 1) // repeats)
    fallback = BatchFallback()
    fallback.run_chunk(run_chunk, task, Chunk(0, 1))
    device = task.inputs.device
    times = []
    for k in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fallback.run_chunk(
            run_chunk, task, Chunk(1 + k * per_run, 1 + (k + 1) * per_run)
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) / per_run)
    return float(np.median(times))


def _gib(n: float) -> str:
    if n < _GIB:
        return f"{n / 1024**2:.3g} MB"
    return f"{n / _GIB:.3g} GB"


@dataclass(frozen=True)
class SearchSize:
    """The size of a global search and what it will take.

    Attributes
    ----------
    n_orientations, n_defocus, n_pixel_sizes : int
        Orientations and filters (planes) per orientation.
    image_shape : tuple[int, int]
        ``(H, W)`` of the micrograph (the statistics' shape).
    host_bytes, device_bytes : int
        Memory of the search process and of each device's engine (see above);
        on the CPU both come out of the host's memory.
    available_host, available_device : int
        Free memory there (``available_device`` is None for remote workers).
    workers_per_host : int
        Engines that share the host's memory (CPU workers), 0 for GPU engines.
    seconds_per_orientation : float or None
        Calibrated pace of one engine; None when not calibrated.
    parallel : int
        Engines working at once (GPUs); the time is divided by it.
    device : str
        Where the calibration ran or, without one, why not.
    """

    n_orientations: int
    n_defocus: int
    n_pixel_sizes: int
    image_shape: tuple[int, int]
    host_bytes: int
    device_bytes: int
    available_host: int
    available_device: int | None
    workers_per_host: int
    seconds_per_orientation: float | None
    parallel: int = 1
    device: str = "cpu"

    @property
    def n_filters(self) -> int:
        """Planes (defocus x pixel-size filters) per orientation."""
        return self.n_defocus * self.n_pixel_sizes

    @property
    def correlations_per_pixel(self) -> int:
        """Correlation maps of the search (one value per pixel each)."""
        return self.n_orientations * self.n_filters

    @property
    def correlations(self) -> int:
        """Correlations in all (every pixel of every map)."""
        return self.correlations_per_pixel * self.image_shape[0] * self.image_shape[1]

    @property
    def estimated_seconds(self) -> float | None:
        """Time of the whole search at the calibrated pace (None: not calibrated)."""
        if self.seconds_per_orientation is None:
            return None
        return self.seconds_per_orientation * self.n_orientations / self.parallel

    @property
    def host_needed(self) -> int:
        """Host memory in all: the process and the CPU engines it holds."""
        return self.host_bytes + self.workers_per_host * self.device_bytes

    def describe(self, label: str = "match") -> str:
        """Three lines: the size, the memory and the estimated time."""
        h, w = self.image_shape
        lines = [
            f"{label} size: {self.n_orientations:,} orientations x {self.n_filters} "
            f"planes ({self.n_defocus} defocus x {self.n_pixel_sizes} pixel sizes) "
            f"= {self.correlations_per_pixel:,} correlations per pixel, "
            f"{self.correlations:.3g} in all over {h}x{w} px",
            f"{label} memory: about {_gib(self.host_needed)} on the host "
            f"({_gib(self.available_host)} available)",
        ]
        if not self.workers_per_host:
            free = self.available_device
            room = "unknown" if free is None else f"{_gib(free)} free"
            lines[-1] += f", {_gib(self.device_bytes)} per device ({room})"
        seconds = self.estimated_seconds
        if seconds is None or self.seconds_per_orientation is None:
            lines.append(f"{label} time: not estimated ({self.device})")
        else:
            engines = f" on {self.parallel} devices" if self.parallel > 1 else ""
            lines.append(
                f"{label} time: about {format_duration(seconds)}{engines} "
                f"({1e3 * self.seconds_per_orientation:.3g} ms per orientation on "
                f"{self.device}, from a calibration)"
            )
        return "\n".join(lines)

    def problems(self, max_hours: float) -> list[str]:
        """List what makes the search unreasonable: memory lacking, time too long."""
        found = []
        if self.host_needed > self.available_host:
            found.append(
                f"it needs about {_gib(self.host_needed)} of host memory and "
                f"{_gib(self.available_host)} is available"
            )
        free = self.available_device
        if not self.workers_per_host and free is not None and self.device_bytes > free:
            found.append(
                f"it needs about {_gib(self.device_bytes)} per device and "
                f"{_gib(free)} is free"
            )
        seconds = self.estimated_seconds
        if seconds is not None and seconds > 3600.0 * max_hours:
            found.append(
                f"it would take about {format_duration(seconds)}, more than "
                f"compute.max_hours ({max_hours:g} h)"
            )
        return found


def check_size(size: SearchSize, max_hours: float, confirmed: bool) -> None:
    """Refuse an unreasonable search unless the user confirmed it.

    Raises
    ------
    SearchTooLargeError
        ``size.problems(max_hours)`` is not empty and ``confirmed`` is False.
    """
    found = size.problems(max_hours)
    if found and not confirmed:
        raise SearchTooLargeError(
            f"search of {size.n_orientations:,} orientations x {size.n_filters} "
            f"planes stopped before it started: {'; '.join(found)}. Use coarser "
            "orientation_search steps (or the template's symmetry), fewer defocus "
            "or pixel-size values, or more devices; to run it anyway set "
            "compute.confirm_long_run: true (--set compute.confirm_long_run=true)."
        )
