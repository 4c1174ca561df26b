"""How big a search is before it runs: orientations, memory and time.

``count_orientations`` counts the orientation grid from its steps and the
symmetry's angular ranges without building it (a typo such as
``in_plane_step: 0.001`` would otherwise allocate for minutes before anything is
said). ``device_bytes`` and ``host_bytes`` bound the memory a search holds
(``template_bytes``, ``slice_batch_bytes`` its parts), ``auto_batch_size`` and
``fitting_template_padding`` fit a batch and the template into the free memory,
``calibrate`` times a few orientations of the real engine, and ``SearchSize``
puts the figures together, prints them (``describe``) and says what is wrong with
them (``problems``): more memory than is available, or longer than a limit.
"""

from __future__ import annotations

import math
import os
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

# Rows of the uniform grid counted one by one; beyond, the closed-form estimate.
_EXACT_ROWS = 2_000_000
# float64 (phi, theta, psi) per orientation, built through ~4 copies in torch-so3.
_GRID_BYTES = 4 * 3 * 8
# mip float32 + best index int64 + two float64 sums, per pixel.
STATISTICS_BYTES = 28
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


def padded_size(template_size: int, padding: float) -> int:
    """Box p of ``prepare_template``'s output: ``t + 2 floor(t (padding - 1) / 2)``.

    Examples
    --------
    >>> padded_size(64, 2.0), padded_size(17, 1.5)
    (128, 25)
    """
    return template_size + 2 * (int(template_size * (padding - 1.0)) // 2)


def template_bytes(template_size: int, padding: float) -> int:
    """Bytes of ``prepare_template``'s output for a t box padded by ``padding``.

    Examples
    --------
    >>> template_bytes(64, 2.0) == 8 * 128 * 128 * 65
    True
    """
    p = padded_size(template_size, padding)
    return 8 * p * p * (p // 2 + 1)


def slice_batch_bytes(slice_size: int) -> int:
    """Bytes ``project`` holds per orientation of a batch, for an m-box slice.

    Per slice point: rotated coordinates (3 float32, twice), the sampler's
    grid and output (3 + 2 float32), the complex slice (twice); per pixel of the
    m box the real projection (float32, twice).

    Examples
    --------
    >>> slice_batch_bytes(64) == 64 * 33 * 60 + 64 * 64 * 8
    True
    """
    points = slice_size * (slice_size // 2 + 1)
    return points * (24 + 20 + 16) + slice_size * slice_size * 8


def _orientation_bytes(image_shape: tuple[int, int], slice_size: int) -> int:
    """Bytes per orientation of a batch; one image-size DFT when m is unknown (0)."""
    if slice_size:
        return slice_batch_bytes(slice_size)
    h, w = image_shape
    return h * (w // 2 + 1) * 8


def device_bytes(
    n_filters: int,
    padded_shape: tuple[int, int],
    template_size: int,
    template_padding: float = 2.0,
    batch_size: int = 1,
    slice_size: int = 0,
) -> int:
    """Upper bound of the memory the engine holds on its device, bytes.

    Filtered images (complex64, built once more while pairing), norm kernels,
    the padded template DFT, the workspace of one orientation's maps, the
    statistics of the device (plain and paired) and, per orientation of a
    batch, ``slice_batch_bytes`` of an m-box slice (``slice_size`` 0: unknown,
    one image-size DFT assumed).
    """
    h, w = padded_shape
    full, half = h * w, h * (w // 2 + 1)
    filtered = 2 * n_filters * half * 8
    norms = n_filters * max(4 * template_size**2, half) * 4
    template = template_bytes(template_size, template_padding)
    maps = n_filters * full * 4 + 6 * half * 8
    statistics = 3 * full * STATISTICS_BYTES
    batch = batch_size * _orientation_bytes(padded_shape, slice_size)
    return filtered + norms + template + maps + statistics + batch


def host_bytes(n_orientations: int, image_shape: tuple[int, int]) -> int:
    """Memory the search process holds besides the engine, bytes.

    The orientation grid while it is built, and three copies of the statistics
    (the running total, a chunk's and their merge), plus the decoded result maps.
    """
    pixels = image_shape[0] * image_shape[1]
    return n_orientations * _GRID_BYTES + pixels * (3 * STATISTICS_BYTES + 9 * 4)


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free memory, else the host's available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# Where the template at the requested padding does not fit, this one is tried:
# z-scores of true particles 0.8 % below padding 2 (benchmarks/RESULTS.md), while
# padding 1 loses 16 % and is never chosen for the user.
FALLBACK_PADDING = 1.5


def fitting_template_padding(
    template_size: int, requested: float, free_bytes: int, other_bytes: int
) -> float:
    """Choose the template padding from the memory free on the search device.

    Parameters
    ----------
    template_size : int
        Box t of the template.
    requested : float
        ``preprocessing.template_padding``.
    free_bytes : int
        Memory the device can still give (``available_bytes``).
    other_bytes : int
        What the rest of the search needs there (images, statistics, buffers).

    Returns
    -------
    float
        ``requested`` if its template fits beside ``other_bytes``, else
        ``FALLBACK_PADDING`` if that one fits, else ``requested`` (the search's
        size check then reports the memory it needs).

    Examples
    --------
    >>> full = template_bytes(64, 2.0)
    >>> fitting_template_padding(64, 2.0, full + 10, 10)
    2.0
    >>> fitting_template_padding(64, 2.0, full + 9, 10)
    1.5
    """
    room = free_bytes - other_bytes
    if template_bytes(template_size, requested) <= room:
        return requested
    if requested > FALLBACK_PADDING and (
        template_bytes(template_size, FALLBACK_PADDING) <= room
    ):
        return FALLBACK_PADDING
    return requested


def auto_batch_size(
    device: torch.device,
    image_shape: tuple[int, int],
    n_filters: int = 1,
    slice_size: int = 0,
    free_bytes: int | None = None,
) -> int:
    """Orientations per engine call that fit in a quarter of the free memory.

    Free memory is what the device can still give (``free_bytes``, by default
    ``available_bytes``: CUDA's free memory, the host's MemAvailable). A batch
    holds ``slice_batch_bytes`` per orientation (``slice_size`` 0: unknown, then
    one image-size DFT per orientation is assumed, a generous bound) plus the
    workspace (``n_filters`` products and maps), paid once. Slices are sampled
    one point at a time, so the batch changes no result, and on the CPU it buys
    nothing past a few orientations: at most 32 there, 64 on CUDA.
    """
    h, w = image_shape
    per_orientation = _orientation_bytes(image_shape, slice_size)
    fixed = n_filters * h * (w // 2 + 1) * 12
    ceiling = 64 if device.type == "cuda" else 32
    free = available_bytes(device) if free_bytes is None else free_bytes
    return int(max(1, min(ceiling, (0.25 * free - fixed) // per_orientation)))


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


__all__ = [
    "FALLBACK_PADDING",
    "STATISTICS_BYTES",
    "SearchSize",
    "auto_batch_size",
    "available_bytes",
    "calibrate",
    "calibration_angles",
    "check_size",
    "count_orientations",
    "device_bytes",
    "fitting_template_padding",
    "host_bytes",
    "padded_size",
    "slice_batch_bytes",
    "template_bytes",
]
