"""``twodtm constrained``: search particle B near each particle A it is bound to.

Reads the micrograph, B's template and A's particle table
(``programs._particles``), searches B around the pose each A predicts
(``local.constrained.constrained_search``) and writes the detected B particles
and every candidate.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from twodtm.config import ConstrainedConfig
from twodtm.devices import resolve_devices
from twodtm.io.tables import write_coordinates, write_csv_table, write_particles
from twodtm.local.constrained import Placement, constrained_search
from twodtm.model_template import resolve_model_template
from twodtm.programs._particles import (
    local_settings_from,
    output_directory,
    read_map_and_micrograph,
    read_particle_table,
)

__all__ = ["run_constrained"]


def run_constrained(
    config: ConstrainedConfig, output: str | Path | None = None, overwrite: bool = False
) -> tuple[pd.DataFrame, float]:
    """Run the constrained search of ``config`` and write B's table.

    Writes ``particles.star``/``particles.csv`` (detected B particles) and
    ``candidates.csv`` (one candidate per A, detected or not) into the output
    directory.
    """
    directory = output_directory(output, config.output, "particles.star", overwrite)
    config = resolve_model_template(config, directory)
    device = resolve_devices(config.compute.device)[0]
    partners = read_particle_table(config.particles)
    template, micrograph = read_map_and_micrograph(config, device)
    relative = config.relative_pose
    placement = Placement.from_euler(relative.orientation, relative.offset)
    settings = local_settings_from(config.search, config.compute.orientations_per_chunk)
    table, threshold = constrained_search(
        micrograph,
        template,
        partners,
        placement,
        settings,
        config.search.false_positives,
    )
    detected = (
        table[table["detected"]].drop(columns=["detected"]).reset_index(drop=True)
    )
    name = Path(config.micrograph).name
    write_coordinates(detected, directory, name)
    write_particles(detected, directory, name, micrograph.optics)
    write_csv_table(table.assign(threshold=threshold), directory / "candidates.csv")
    return table, threshold
