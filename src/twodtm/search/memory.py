"""The memory a search holds and the memory a device has free.

``device_bytes`` and ``host_bytes`` bound the memory a search holds
(``template_bytes``, ``slice_batch_bytes`` its parts; ``padded_size`` the box of
the padded template); ``available_bytes`` is the one source of a device's free
memory; ``auto_batch_size`` and ``fitting_template_padding`` fit a batch and the
template into it.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "FALLBACK_PADDING",
    "STATISTICS_BYTES",
    "auto_batch_size",
    "available_bytes",
    "device_bytes",
    "fitting_template_padding",
    "fold_group",
    "host_bytes",
    "padded_size",
    "slice_batch_bytes",
    "template_bytes",
]

# float64 (phi, theta, psi) per orientation, built through ~4 copies in torch-so3.
_GRID_BYTES = 4 * 3 * 8
# mip float32 + best index int64 + two float64 sums, per pixel.
STATISTICS_BYTES = 28


def padded_size(template_size: int, padding: float) -> int:
    """Box p of ``prepare_template``'s output: ``t + 2 floor(t (padding - 1) / 2)``.

    Examples
    --------
    >>> padded_size(64, 2.0), padded_size(17, 1.5)
    (128, 25)
    """
    return template_size + 2 * (int(template_size * (padding - 1.0)) // 2)


def template_bytes(template_size: int, padding: float, compact: bool = False) -> int:
    """Bytes of ``prepare_template``'s output for a t box padded by ``padding``.

    ``compact``: of its ``projection.compact_template`` (bfloat16), half.

    Examples
    --------
    >>> template_bytes(64, 2.0) == 8 * 128 * 128 * 65
    True
    >>> template_bytes(64, 2.0, compact=True) == 4 * 128 * 128 * 65
    True
    """
    p = padded_size(template_size, padding)
    return (4 if compact else 8) * p * p * (p // 2 + 1)


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
    compact: bool = False,
) -> int:
    """Upper bound of the memory the engine holds on its device, bytes.

    Filtered images (complex64, built once more while pairing), norm kernels,
    the padded template DFT, the workspace of a fold group's maps, the
    statistics of the device (plain and paired) and, per orientation of a
    batch, ``slice_batch_bytes`` of an m-box slice (``slice_size`` 0: unknown,
    one image-size DFT assumed). ``compact``: the template is held as
    ``projection.compact_template``.
    """
    h, w = padded_shape
    full, half = h * w, h * (w // 2 + 1)
    filtered = 2 * n_filters * half * 8
    norms = n_filters * max(4 * template_size**2, half) * 4
    template = template_bytes(template_size, template_padding, compact)
    # a fold group holds fewer than D + _MAPS_PER_FOLD maps (``fold_group``)
    maps = (n_filters + _MAPS_PER_FOLD) * full * 4 + 6 * half * 8
    statistics = 3 * full * STATISTICS_BYTES
    batch = batch_size * _orientation_bytes(padded_shape, slice_size)
    return filtered + norms + template + maps + statistics + batch


# Each fold reads and writes the statistics (28 bytes per pixel) once, however
# many maps it folds: at 1024^2 (compiled, 2 cores) one map per fold cost 1.15 ms
# per map, two 0.69 ms, four 0.58 ms. Folding at least this many maps together
# makes that pass a small share; a group's maps stay within _GROUP_BYTES.
_MAPS_PER_FOLD = 8
_GROUP_BYTES = 256 * 2**20


def fold_group(n_defocus: int, image_shape: tuple[int, int]) -> int:
    """Orientations whose D maps the engine folds into the statistics together.

    Enough for ``_MAPS_PER_FOLD`` maps, and one whenever one orientation's maps
    (float32) exceed ``_GROUP_BYTES``. It does not depend on the batch, so the
    compiled fold sees the same map count in every batch. The statistics are
    exact and order-free, so the group changes no result.

    Examples
    --------
    >>> fold_group(1, (1024, 1024)), fold_group(3, (768, 768))
    (8, 3)
    >>> fold_group(13, (1024, 1024)), fold_group(1, (4096, 4096))
    (1, 4)
    """
    h, w = image_shape
    room = _GROUP_BYTES // max(1, n_defocus * h * w * 4)
    wanted = -(-_MAPS_PER_FOLD // n_defocus)
    return max(1, min(wanted, room))


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
    template_size: int,
    requested: float,
    free_bytes: int,
    other_bytes: int,
    compact: bool = False,
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
    compact : bool
        The template is held as ``projection.compact_template``.

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
    if template_bytes(template_size, requested, compact) <= room:
        return requested
    if requested > FALLBACK_PADDING and (
        template_bytes(template_size, FALLBACK_PADDING, compact) <= room
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
