"""``twodtm refine``: local refinement of the particles of a table.

Reads the micrograph, the template and a particle table (``programs._particles``),
refines every particle's orientation, defocus, pixel size and position with the
local search (``local.refine_particles``) and writes ``particles.star`` and
``particles.csv``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from twodtm.config import RefineConfig
from twodtm.devices import resolve_devices
from twodtm.io.tables import write_coordinates, write_particles
from twodtm.local import refine_particles
from twodtm.model_template import resolve_model_template
from twodtm.programs._particles import (
    all_or_nothing,
    local_settings_from,
    output_directory,
    read_map_and_micrograph,
    read_particle_table,
)

__all__ = ["run_refine"]


def run_refine(
    config: RefineConfig, output: str | Path | None = None, overwrite: bool = False
) -> pd.DataFrame:
    """Refine the particles of ``config`` and write ``particles.star``/``.csv``.

    Returns
    -------
    pandas.DataFrame
        The refined table (see ``local.refine_particles``).
    """
    directory = output_directory(output, config.output, "particles.star", overwrite)
    config = resolve_model_template(config, directory)
    device = resolve_devices(config.compute.device)[0]
    particles = read_particle_table(config.particles)
    template, micrograph = read_map_and_micrograph(config, device)
    settings = local_settings_from(config.search, config.compute.orientations_per_chunk)
    refined = refine_particles(micrograph, template, particles, settings)
    name = Path(config.micrograph).name
    with all_or_nothing(directory):
        write_coordinates(refined, directory, name)
        write_particles(refined, directory, name, micrograph.optics)
    return refined
