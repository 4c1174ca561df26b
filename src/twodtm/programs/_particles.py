"""Inputs and outputs of the particle programs: refine, constrained and optimize.

The three programs read a micrograph, a template and a particle table, and write
into a result directory, under the one input/output policy of ``programs.inputs``. What
is theirs alone is done here: the micrograph is whitened once for all particles
(``local.prepare_micrograph``), the template is Fourier-transformed at its own
voxel size (the local search scales its slices to the micrograph), and the
``search`` section becomes the local search's ``LocalSettings``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from twodtm.config import (
    ConstrainedConfig,
    LocalSearch,
    Masking,
    MatchConfig,
    OutputConfig,
    Preprocessing,
    RefineConfig,
)
from twodtm.ctf import Optics
from twodtm.io.tables import read_particles
from twodtm.local import (
    LocalGrid,
    LocalSettings,
    Micrograph,
    Template,
    check_particle_table,
    make_template,
    prepare_micrograph,
)
from twodtm.model_template import ModelTemplateSettings
from twodtm.preprocess import outlier_note
from twodtm.programs import inputs

__all__ = [
    "all_or_nothing",
    "local_settings_from",
    "output_directory",
    "read_map_and_micrograph",
    "read_micrograph",
    "read_particle_table",
    "read_template",
]


def local_settings_from(
    fields: LocalSearch, orientations_per_chunk: int | str = "auto"
) -> LocalSettings:
    """Local-search settings from a ``search`` section.

    ``orientations_per_chunk`` (from the ``compute`` section) is the orientations
    per particle in one chunk; "auto" sizes chunks to the memory budget.
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
        orientations_per_chunk=(
            None if orientations_per_chunk == "auto" else int(orientations_per_chunk)
        ),
        iterations=fields.iterations,
    )


def read_micrograph(
    path: str,
    optics: Optics,
    fields: Preprocessing,
    masking: Masking,
    template_size: int,
    device: torch.device,
    say_outliers: bool = True,
) -> Micrograph:
    """Read and check a 2D micrograph (``programs.inputs``), whiten it on ``device``.

    Its outliers are replaced and its excluded pixels flattened as ``twodtm
    match`` does (``programs.inputs.clean_micrograph``, with the template box
    ``template_size`` for the automatic exclusion), so that particles are
    refined against the image they were found in. ``say_outliers``: warn of the
    replaced outliers (``twodtm run`` said it in its search already).
    """
    data = inputs.read_micrograph(path).data
    clean = inputs.clean_micrograph(
        data, fields.outlier_sigma, masking, optics.pixel_size, template_size
    )
    searched = None if clean.searched is None else torch.from_numpy(clean.searched)
    micrograph = prepare_micrograph(
        torch.from_numpy(clean.data).to(device),
        optics,
        # replaced already, once, as the search does
        dataclasses.replace(fields.filter_settings(), outlier_sigma=None),
        fields.pad_to_fft_friendly,
        searched,
    )
    if clean.replaced_pixels and say_outliers:
        # the particle programs' one channel to the log is a warning line
        warnings.warn(
            outlier_note(
                Path(path).name,
                clean.replaced_pixels,
                data.size,
                fields.outlier_sigma,
            ),
            stacklevel=2,
        )
    return dataclasses.replace(micrograph, replaced_pixels=clean.replaced_pixels)


def read_template(
    path: str,
    fields: Preprocessing,
    device: torch.device,
    pixel_size: float | None = None,
    model: ModelTemplateSettings | None = None,
) -> Template:
    """Read and check a map (``programs.inputs``) at its own voxel size, on ``device``.

    The voxel size is ``pixel_size``, else the config's, else the header's; an
    atomic model is simulated with ``model`` (``model_template.load_template``).
    """
    policy = inputs.template_policy(fields, pixel_size)
    checked = inputs.read_template(path, policy, None, model)
    volume = torch.from_numpy(checked.data).to(device)
    return make_template(volume, checked.pixel_size, fields.template_padding)


def read_map_and_micrograph(
    config: RefineConfig | ConstrainedConfig | MatchConfig,
    device: torch.device,
    say_outliers: bool = True,
) -> tuple[Template, Micrograph]:
    """Read the template map of ``config`` and whiten its micrograph as searched.

    ``config`` is a particle program's, or the ``MatchConfig`` of the search
    whose picks ``twodtm run`` refines; ``say_outliers`` as ``read_micrograph``.
    """
    template = read_template(config.template, config.preprocessing, device)
    micrograph = read_micrograph(
        config.micrograph,
        config.optics.to_optics(),
        config.preprocessing,
        config.masking,
        template.size,
        device,
        say_outliers,
    )
    return template, micrograph


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
    OutputWriteError
        The place is a file or not writable.
    """
    directory = Path(output or config_output.directory)
    return inputs.claim_output(directory, marker, overwrite or config_output.overwrite)


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
