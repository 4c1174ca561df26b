"""Local refinement of particles: orientation, defocus, pixel size and position.

Particles are refined in batches on the micrograph's device (see
``twodtm.local.batch``): each batch's boxes, cut from the whitened micrograph
(see ``twodtm.local.boxes``) at one common size, are correlated with every particle's
own local orientations, defocus values and pixel sizes through the global
search's engine. The best pixel within ``max_shift`` of each start gives the
pose, and a parabola through the correlation map at that pose the sub-pixel
position. A batch holds particles that need the same box, so a particle's result
does not depend on which others it is batched with.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twodtm.config import (
    ConstrainedConfig,
    LocalSearch,
    OptimizeConfig,
    OutputConfig,
    Preprocessing,
    RefineConfig,
)
from twodtm.ctf import Optics
from twodtm.devices import resolve_devices
from twodtm.errors import InputDataError, OutputExistsError
from twodtm.io.mrc import read_mrc
from twodtm.io.tables import read_particles, write_coordinates, write_particles
from twodtm.local.batch import (
    BestPose,
    ParticleBoxes,
    Template,
    batch_inputs,
    best_in_disk,
    best_maps,
    orientations_per_chunk,
    search_windows,
)
from twodtm.local.boxes import (
    LocalGrid,
    box_dfts,
    default_box_size,
    extract_boxes,
    local_orientations,
    renormalised_zscore,
    resample_filter,
    subpixel_peaks,
    whitened_real_image,
    window_radius,
)
from twodtm.model_template import (
    ModelTemplateSettings,
    load_template,
    resolve_model_template,
)
from twodtm.orientations import angular_distance, euler_to_matrix
from twodtm.preprocess import (
    FilterSettings,
    outlier_note,
    prepare_image,
    prepare_template,
)
from twodtm.programs.peaks import family_pvalue
from twodtm.progress import ProgressReporter, expect_work

_POSE_COLUMNS = ("x", "y", "phi", "theta", "psi")


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
    image: torch.Tensor, optics: Optics, settings: FilterSettings, pad: bool = True
) -> Micrograph:
    """Whiten the full ``(H, W)`` micrograph once (on the device of ``image``)."""
    prepared = prepare_image(image, optics.pixel_size, settings, pad)
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
        Box edge in pixels; None for ``local.default_box_size`` of each particle.
    particle_batch_size : int
        Most particles searched together (one box size, batched transforms).
    batch_size : int or None
        Orientations per particle in one chunk of a batch; None for
        ``particle_batch.orientations_per_chunk`` (the memory budget).
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
    batch_size: int | None = None
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
    deepest = abs(start.defocus) + max(abs(d) for d in settings.defocus_offsets)
    return settings.box_size or default_box_size(template.size, optics, deepest)


def batches_by_box(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split particle indices into batches of one box size, ``batch_size`` at most.

    Particles are sorted by box size (stably), so batches are full but for the
    last one of each size.
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
    chunk = settings.batch_size or orientations_per_chunk(
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


def start_pose(row: pd.Series, optics: Optics) -> Pose:
    """Read the pose of a table row (defocus, pixel size default to the optics)."""
    defocus = float(row["defocus"]) if "defocus" in row else optics.defocus_mean
    pixel = float(row["pixel_size"]) if "pixel_size" in row else optics.pixel_size
    return Pose(
        x=float(row["x"]),
        y=float(row["y"]),
        angles=(float(row["phi"]), float(row["theta"]), float(row["psi"])),
        defocus=defocus,
        pixel_size=pixel,
    )


def check_particle_table(table: pd.DataFrame, source: str) -> None:
    """Raise InputDataError when a table lacks the pose columns."""
    missing = [c for c in _POSE_COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(
            f"{source}: particle table lacks the column(s) {missing}; use a table "
            "written by `twodtm peaks` (or a STAR file with rlnCoordinateX/Y and "
            "rlnAngleRot/Tilt/Psi)."
        )


def _refined_row(row: pd.Series, fit: LocalFit, start: Pose, optics: Optics) -> dict:
    out = row.to_dict()
    pose = fit.pose
    mean = float(row["mean"]) if "mean" in row else 0.0
    std = float(row["std"]) if "std" in row else 1.0
    zscore = renormalised_zscore(fit.correlation, mean, std)
    delta_defocus = pose.defocus - start.defocus
    out.update(
        x=pose.x, y=pose.y, phi=pose.angles[0], theta=pose.angles[1], psi=pose.angles[2]
    )
    out.update(defocus=pose.defocus, pixel_size=pose.pixel_size, mip=fit.correlation)
    out["zscore"] = zscore
    if "pvalue" in out or "n_trials" in out:
        out["pvalue"] = _refined_pvalue(zscore, row)
    for name in ("defocus_u", "defocus_v"):
        if name in out:
            out[name] = float(row[name]) + delta_defocus
    for axis in ("x", "y"):
        if f"{axis}_angstrom" in out:
            out[f"{axis}_angstrom"] = getattr(pose, axis) * pose.pixel_size
    before = euler_to_matrix(torch.tensor(start.angles, dtype=torch.float64))
    after = euler_to_matrix(torch.tensor(pose.angles, dtype=torch.float64))
    out.update(
        delta_x=pose.x - start.x,
        delta_y=pose.y - start.y,
        delta_angle=float(angular_distance(before, after)),
        delta_defocus=delta_defocus,
        delta_pixel_size=pose.pixel_size - start.pixel_size,
        delta_zscore=zscore - float(row["zscore"]) if "zscore" in row else np.nan,
    )
    return out


def _refined_pvalue(zscore: float, row: pd.Series) -> float:
    """Family-wise p-value of a refined z-score over the global search's trials.

    The z-score is against the global noise model, so the global number of trials
    (``n_trials``, written by ``twodtm peaks``) applies; without it the p-value is
    unknown (NaN), not the stale one of the start.
    """
    n_trials = float(row["n_trials"]) if "n_trials" in row else float("nan")
    if not np.isfinite(n_trials) or n_trials <= 0:
        return float("nan")
    return float(family_pvalue(np.array([zscore]), n_trials)[0])


def refine_particles(
    micrograph: Micrograph,
    template: Template,
    particles: pd.DataFrame,
    settings: LocalSettings,
) -> pd.DataFrame:
    """Refine every particle of a table.

    Parameters
    ----------
    micrograph : Micrograph
        From ``prepare_micrograph``.
    template : Template
        From ``make_template`` on the same device.
    particles : pandas.DataFrame
        Columns x, y (pixels), phi, theta, psi (deg); optionally defocus
        (absolute mean, A), pixel_size, zscore, and the global search's mean and
        std at the particle (without them the z-score is the correlation itself,
        which is in units of the whitened noise).

    Returns
    -------
    pandas.DataFrame
        The same columns holding the refined values (x, y, angles, defocus,
        defocus_u/v, pixel_size, mip, zscore re-normalised with the global mean
        and std, pvalue recomputed for that z-score from the table's n_trials,
        NaN without it) plus their changes: delta_x, delta_y (px), delta_angle (deg,
        geodesic), delta_defocus (A), delta_pixel_size (A), delta_zscore.
    """
    check_particle_table(particles, "particles")
    table = [row for _, row in particles.iterrows()]
    starts = [start_pose(row, micrograph.optics) for row in table]
    fits = fit_particles(micrograph, template, starts, settings)
    rows = [
        _refined_row(row, fit, start, micrograph.optics)
        for row, fit, start in zip(table, fits, starts, strict=True)
    ]
    columns = list(particles.columns) + [
        c for c in _ADDED if c not in particles.columns
    ]
    return pd.DataFrame(rows, columns=columns)


_ADDED = (
    "defocus",
    "pixel_size",
    "mip",
    "zscore",
    "delta_x",
    "delta_y",
    "delta_angle",
    "delta_defocus",
    "delta_pixel_size",
    "delta_zscore",
)


def local_settings_from(
    fields: LocalSearch, batch_size: int | str = "auto"
) -> LocalSettings:
    """Local-search settings from a ``search`` section.

    ``batch_size`` (``compute.batch_size``) is the orientations per particle in
    one chunk; "auto" sizes chunks to the memory budget.
    """
    o = fields.orientation
    return LocalSettings(
        grid=LocalGrid(
            o.out_of_plane_range, o.out_of_plane_step, o.in_plane_range, o.in_plane_step
        ),
        defocus_offsets=tuple(fields.defocus.offsets()),
        pixel_size_offsets=tuple(fields.pixel_size.offsets()),
        max_shift=fields.max_shift,
        box_size=fields.box_size,
        particle_batch_size=fields.particle_batch_size,
        batch_size=None if batch_size == "auto" else int(batch_size),
        iterations=fields.iterations,
    )


def read_micrograph(
    path: str, optics: Optics, fields: Preprocessing, device: torch.device
) -> Micrograph:
    """Read, check and whiten a 2D micrograph on ``device``."""
    data = read_mrc(path).data
    if data.ndim != 2 or not np.isfinite(data).all() or float(data.std()) == 0.0:
        raise InputDataError(
            f"{path}: expected a finite, non-constant 2D micrograph, found shape "
            f"{data.shape}; pass the motion-corrected sum."
        )
    image = torch.from_numpy(data).to(device)
    micrograph = prepare_micrograph(
        image, optics, fields.filter_settings(), fields.pad_to_fft_friendly
    )
    if micrograph.replaced_pixels:
        # the particle programs' one channel to the log is a warning line
        warnings.warn(
            outlier_note(
                Path(path).name,
                micrograph.replaced_pixels,
                data.size,
                fields.outlier_sigma,
            ),
            stacklevel=2,
        )
    return micrograph


def read_template(
    path: str,
    fields: Preprocessing,
    device: torch.device,
    pixel_size: float | None = None,
    model: ModelTemplateSettings | None = None,
) -> Template:
    """Read a cubic map at ``pixel_size``, else the config's, else the header's.

    An atomic model is simulated with ``model`` (``model_template.load_template``).
    """
    mrc = load_template(path, model)
    volume = mrc.data
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputDataError(
            f"{path}: the template must be a cubic 3D map, found shape {volume.shape}; "
            "pad it to a cube."
        )
    size = pixel_size or fields.template_pixel_size or mrc.pixel_size
    if not size or size <= 0:
        raise InputDataError(
            f"{path}: the MRC header holds no pixel size; set "
            "preprocessing.template_pixel_size."
        )
    return make_template(
        torch.from_numpy(volume).to(device), size, fields.template_padding
    )


def read_particle_table(path: str) -> pd.DataFrame:
    """Read a STAR/CSV particle table and check it holds poses."""
    table = read_particles(path)
    check_particle_table(table, path)
    return table.drop(columns=["micrograph"], errors="ignore")


def output_directory(
    output: str | Path | None, config_output: OutputConfig, marker: str, overwrite: bool
) -> Path:
    """Return the result directory, refusing one that already holds ``marker``.

    Raises
    ------
    OutputExistsError
        ``marker`` exists there and neither ``overwrite`` nor the config allows it.
    """
    directory = Path(output or config_output.directory)
    if (directory / marker).exists() and not (overwrite or config_output.overwrite):
        raise OutputExistsError(
            f"{directory}: holds a result already ({marker}); pass --overwrite or "
            "choose another --output directory."
        )
    return directory


def load_micrograph_inputs(
    config: RefineConfig | ConstrainedConfig | OptimizeConfig,
) -> tuple[Micrograph, pd.DataFrame]:
    """Read the micrograph (on the config's first device) and the particle table."""
    device = resolve_devices(config.compute.devices)[0]
    micrograph = read_micrograph(
        config.micrograph, config.optics.to_optics(), config.preprocessing, device
    )
    return micrograph, read_particle_table(config.particles)


def run_refine(
    config: RefineConfig, output: str | Path | None = None, overwrite: bool = False
) -> pd.DataFrame:
    """Refine the particles of ``config`` and write ``particles.star``/``.csv``.

    Returns
    -------
    pandas.DataFrame
        The refined table (see ``refine_particles``).
    """
    directory = output_directory(output, config.output, "particles.star", overwrite)
    config = resolve_model_template(config, directory)
    micrograph, particles = load_micrograph_inputs(config)
    template = read_template(
        config.template, config.preprocessing, micrograph.whitened.device
    )
    settings = local_settings_from(config.search, config.compute.batch_size)
    refined = refine_particles(micrograph, template, particles, settings)
    name = Path(config.micrograph).name
    with all_or_nothing(directory):
        write_coordinates(refined, directory, name)
        write_particles(refined, directory, name, micrograph.optics)
    return refined


@contextlib.contextmanager
def all_or_nothing(directory: Path) -> Iterator[None]:
    """Remove the files written in the block if it raises (Ctrl-C, disk full).

    Each writer is atomic; this makes a group of them so: a file that is new, or
    newer than before the block, is deleted when the block does not complete.
    """
    directory.mkdir(parents=True, exist_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    try:
        yield
    except BaseException:
        for path in directory.iterdir():
            if path.is_file() and before.get(path.name) != path.stat().st_mtime_ns:
                path.unlink(missing_ok=True)
        raise
