"""Local fits of particles: the micrograph, the template and the batched passes.

Particles are refined in batches on the micrograph's device (``local._batch``):
each batch's boxes, cut from the whitened micrograph (``local._boxes``) at one
common size, are correlated with every particle's own local orientations
(``local._grid``), defocus values and pixel sizes through the global search's
primitives. The best pixel within ``max_shift`` of each start gives the pose, and
a parabola through the correlation map at that pose the sub-pixel position. A
batch holds particles that need the same box, so a particle's result does not
depend on which others it is batched with.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from twodtm.ctf import Optics
from twodtm.local._batch import (
    BestPose,
    ParticleBoxes,
    Template,
    batch_inputs,
    best_in_disk,
    best_maps,
    orientations_per_chunk,
    search_windows,
)
from twodtm.local._boxes import (
    box_dfts,
    default_box_size,
    extract_boxes,
    resample_filter,
    subpixel_peaks,
    whitened_real_image,
    window_radius,
)
from twodtm.local._grid import LocalGrid, local_orientations
from twodtm.orientations import euler_to_matrix
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.progress import ProgressReporter, expect_work

__all__ = [
    "LocalFit",
    "LocalSettings",
    "Micrograph",
    "Pose",
    "batches_by_box",
    "fit_particles",
    "make_template",
    "prepare_micrograph",
]


def make_template(
    volume: torch.Tensor, pixel_size: float, padding: float = 2.0
) -> Template:
    """Fourier-transform a cubic map ``(t, t, t)`` for local searches."""
    return Template(
        prepare_template(volume, padding), int(volume.shape[-1]), pixel_size
    )


@dataclass(frozen=True)
class Micrograph:
    """The whitened micrograph and its filters, computed once for all particles.

    Attributes
    ----------
    whitened : torch.Tensor
        ``(H, W)`` zero-mean, whitened, unit-variance image (the global search's).
    template_filter : torch.Tensor
        Whitening x bandpass on the rfft grid of ``padded_shape``.
    padded_shape : tuple[int, int]
        Shape the filter was computed at.
    optics : Optics
        Micrograph optics (its defocus is the micrograph's mean defocus).
    replaced_pixels : int
        Outliers replaced before whitening (``preprocess.replace_outliers``).
    """

    whitened: torch.Tensor
    template_filter: torch.Tensor
    padded_shape: tuple[int, int]
    optics: Optics
    replaced_pixels: int = 0

    def box_filter(self, size: int) -> torch.Tensor:
        """Return the template filter resampled onto a ``size x size`` box."""
        return resample_filter(self.template_filter, self.padded_shape, (size, size))


def prepare_micrograph(
    image: torch.Tensor,
    optics: Optics,
    settings: FilterSettings,
    pad: bool = True,
    searched: torch.Tensor | None = None,
) -> Micrograph:
    """Whiten the full ``(H, W)`` micrograph once (on the device of ``image``).

    ``searched``: the search's ``(H, W)`` bool mask (``preprocess.prepare_image``),
    so that the micrograph is whitened as the global search whitened it.
    """
    prepared = prepare_image(image, optics.pixel_size, settings, pad, searched)
    return Micrograph(
        whitened=whitened_real_image(prepared),
        template_filter=prepared.template_filter,
        padded_shape=prepared.padded_shape,
        optics=optics,
        replaced_pixels=prepared.replaced_pixels,
    )


@dataclass(frozen=True)
class LocalSettings:
    """What a local search around each pose visits, and in what pieces.

    Attributes
    ----------
    grid : LocalGrid
        Small rotations composed with the start orientation.
    defocus_offsets : tuple[float, ...]
        Offsets from the start defocus, Angstrom.
    pixel_size_offsets : tuple[float, ...]
        Offsets from the start micrograph pixel size, Angstrom.
    max_shift : float
        Largest move of the position from the start, pixels.
    box_size : int or None
        Box edge in pixels; None for ``local._boxes.default_box_size`` of each
        particle.
    particle_batch_size : int
        Most particles searched together (one box size, batched transforms).
    orientations_per_chunk : int or None
        Orientations per particle in one chunk of a batch; None for
        ``local._batch.orientations_per_chunk`` (the memory budget).
    iterations : int
        Passes; each after the first is centred on the last result with the
        grid's ranges and steps and the offsets halved.
    """

    grid: LocalGrid = LocalGrid()
    defocus_offsets: tuple[float, ...] = (0.0,)
    pixel_size_offsets: tuple[float, ...] = (0.0,)
    max_shift: float = 2.0
    box_size: int | None = None
    particle_batch_size: int = 32
    orientations_per_chunk: int | None = None
    iterations: int = 1

    def halved(self) -> LocalSettings:
        """Return the settings of the next, finer pass."""
        return replace(
            self,
            grid=self.grid.halved(),
            defocus_offsets=tuple(d / 2 for d in self.defocus_offsets),
            pixel_size_offsets=tuple(p / 2 for p in self.pixel_size_offsets),
            max_shift=max(1.0, self.max_shift / 2),
        )


@dataclass(frozen=True)
class Pose:
    """Position (px, x = column), ZYZ angles (deg), defocus and pixel size (A)."""

    x: float
    y: float
    angles: tuple[float, float, float]
    defocus: float
    pixel_size: float


@dataclass(frozen=True)
class LocalFit:
    """Best pose of a local search and what it cost.

    Attributes
    ----------
    pose : Pose
        Refined pose (sub-pixel position).
    correlation : float
        Best normalised cross-correlation (in units of the whitened noise).
    n_trials : int
        Correlations per pixel in the last pass.
    """

    pose: Pose
    correlation: float
    n_trials: int


def _box_size(
    template: Template, optics: Optics, start: Pose, settings: LocalSettings
) -> int:
    """Box edge of one particle: the settings', else one for its deepest defocus."""
    deepest = abs(start.defocus) + max(abs(d) for d in settings.defocus_offsets)
    return settings.box_size or default_box_size(template.size, optics, deepest)


def batches_by_box(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split particle indices into batches of one box size, ``batch_size`` at most.

    Particles are sorted by box size (stably), so batches are full but for the
    last one of each size.

    Examples
    --------
    >>> batches_by_box([90, 100, 90, 90], 2)
    [[0, 2], [3], [1]]
    """
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    batches = []
    for _, group in itertools.groupby(order, key=sizes.__getitem__):
        members = list(group)
        batches += [
            members[k : k + batch_size] for k in range(0, len(members), batch_size)
        ]
    return batches


def _particle_boxes(
    micrograph: Micrograph,
    starts: Sequence[Pose],
    size: int,
    settings: LocalSettings,
    radius: int,
) -> ParticleBoxes:
    """Boxes of ``size`` around the starts and their defocus and pixel-size values."""
    device = micrograph.whitened.device
    positions = torch.tensor([[p.y, p.x] for p in starts], dtype=torch.float64)
    centres = positions.round()
    # Each start pixel lands at (r, r) of its periodic box: the windows then hold
    # only the (2r + 1)^2 shifts the peak may move to. The sub-pixel remainder is
    # moved onto the pixel grid, so orientations are compared at the particle's
    # position rather than up to half a pixel off.
    boxes = extract_boxes(micrograph.whitened, centres.long(), size, radius)
    dfts = box_dfts(boxes, (centres - positions).to(device))
    values = torch.tensor(
        [[p.defocus, p.pixel_size] for p in starts], dtype=torch.float64
    )
    defocus = values[:, :1] + torch.tensor(
        settings.defocus_offsets, dtype=torch.float64
    )
    pixel_sizes = values[:, 1:] + torch.tensor(
        settings.pixel_size_offsets, dtype=torch.float64
    )
    return ParticleBoxes(dfts, defocus.to(device), pixel_sizes)


def _fits(
    starts: Sequence[Pose],
    boxes: ParticleBoxes,
    angles: torch.Tensor,
    best: BestPose,
    shifts: torch.Tensor,
    radius: int,
) -> list[LocalFit]:
    """Turn the batch's best indices and sub-pixel ``shifts`` ``(N, 2)`` into fits."""
    n_trials = int(
        angles.shape[1] * boxes.defocus.shape[1] * boxes.pixel_sizes.shape[1]
    )
    fits = []
    for n, start in enumerate(starts):
        row, column = int(best.rows[n]), int(best.columns[n])
        pixel, defocus = int(best.pixel_size[n]), int(best.defocus[n])
        phi, theta, psi = angles[n, int(best.orientation[n])].tolist()
        pose = Pose(
            x=start.x - radius + column + float(shifts[n, 1]),
            y=start.y - radius + row + float(shifts[n, 0]),
            angles=(phi, theta, psi),
            defocus=float(boxes.defocus[n, defocus]),
            pixel_size=float(boxes.pixel_sizes[n, pixel]),
        )
        fits.append(LocalFit(pose, float(best.correlation[n]), n_trials))
    return fits


def _search_batch(
    micrograph: Micrograph,
    template: Template,
    starts: Sequence[Pose],
    size: int,
    settings: LocalSettings,
) -> list[LocalFit]:
    """One pass of the local search of particles sharing the box ``size``."""
    radius = window_radius(settings.max_shift)
    window = 2 * radius + 1
    boxes = _particle_boxes(micrograph, starts, size, settings, radius)
    inputs = batch_inputs(
        template, boxes, micrograph.box_filter(size), micrograph.optics
    )
    angles = torch.stack(
        [
            local_orientations(
                torch.tensor(p.angles, dtype=torch.float64), settings.grid
            )
            for p in starts
        ]
    )
    rotations = euler_to_matrix(angles)
    n_defocus, n_pixel = len(settings.defocus_offsets), len(settings.pixel_size_offsets)
    chunk = settings.orientations_per_chunk or orientations_per_chunk(
        len(starts), n_defocus, size, boxes.dfts.device
    )
    best = best_in_disk(
        search_windows(inputs, rotations, window, chunk),
        settings.max_shift,
        n_pixel,
        n_defocus,
    )
    maps = best_maps(inputs, rotations, best, window)
    shifts = subpixel_peaks(maps, best.rows, best.columns).cpu()
    return _fits(starts, boxes, angles, best, shifts, radius)


def _search_pass(
    micrograph: Micrograph,
    template: Template,
    starts: Sequence[Pose],
    settings: LocalSettings,
    progress: ProgressReporter,
) -> list[LocalFit]:
    """One pass over all starts, batch by batch; fits in the order of ``starts``."""
    sizes = [_box_size(template, micrograph.optics, p, settings) for p in starts]
    fits: dict[int, LocalFit] = {}
    for batch in batches_by_box(sizes, settings.particle_batch_size):
        found = _search_batch(
            micrograph, template, [starts[i] for i in batch], sizes[batch[0]], settings
        )
        fits.update(zip(batch, found, strict=True))
        progress.advance(len(batch), sum(f.n_trials for f in found))
    return [fits[i] for i in range(len(starts))]


def _size_note(n_particles: int, settings: LocalSettings) -> str:
    """One line giving the size of the local search, for the progress display."""
    orientations = int(local_orientations(torch.zeros(3), settings.grid).shape[0])
    defocus, pixel = len(settings.defocus_offsets), len(settings.pixel_size_offsets)
    trials = orientations * defocus * pixel
    return (
        f"local search size: {n_particles:,} particles x {orientations} orientations "
        f"x {defocus * pixel} planes ({defocus} defocus x {pixel} pixel sizes) = "
        f"{trials:,} correlations per particle and pass, {settings.iterations} "
        f"pass(es), within {settings.max_shift:g} px"
    )


def fit_particles(
    micrograph: Micrograph,
    template: Template,
    starts: Sequence[Pose],
    settings: LocalSettings,
) -> list[LocalFit]:
    """Refine particles from their ``starts`` with ``settings.iterations`` passes.

    Particles are searched in batches of up to ``settings.particle_batch_size``
    that share a box size, on the device of the micrograph and template. The
    work (particles x passes) and its progress go to the reporter made current
    by ``progress.reporting`` (none: nothing is shown).

    Returns
    -------
    list[LocalFit]
        One fit per start, in order.
    """
    work = len(starts) * settings.iterations
    progress = expect_work(work, _size_note(len(starts), settings))
    with torch.inference_mode():
        fits = _search_pass(micrograph, template, starts, settings, progress)
        for _ in range(settings.iterations - 1):
            settings = settings.halved()
            moved = [f.pose for f in fits]
            fits = _search_pass(micrograph, template, moved, settings, progress)
    return fits
