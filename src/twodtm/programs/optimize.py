"""``twodtm optimize-template``: the template pixel size that best fits particles.

Reads the micrograph, the particles at known poses and the template (a map, or
an atomic model simulated at each size), sweeps the template's voxel size
(``local.sweep.sweep_pixel_size``) and writes the sweep, its plot and the best
pixel size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from twodtm.config import OptimizeConfig, PixelSizeSweepConfig
from twodtm.devices import resolve_devices
from twodtm.errors import InputDataError
from twodtm.io.atomic import atomic_path, write_text_atomic
from twodtm.io.mrc import read_mrc
from twodtm.io.tables import write_csv_table
from twodtm.local.sweep import (
    SweepResult,
    SweepSettings,
    TemplateSource,
    rescaled_map_source,
    simulated_model_source,
    sweep_pixel_size,
)
from twodtm.model_template import resolve_model_template
from twodtm.programs._particles import (
    local_settings_from,
    output_directory,
    read_micrograph,
    read_particle_table,
    read_template,
)

__all__ = ["run_optimize"]


def _plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Save a PNG of score versus voxel size with the best value marked."""
    figure = Figure(figsize=(5.0, 3.5), dpi=120)
    axes = figure.add_subplot()
    axes.plot(result.pixel_sizes, result.scores, "o-", color="tab:blue", markersize=3)
    axes.axvline(result.best_pixel_size, color="tab:red", label="best")
    axes.axvline(
        result.nominal_pixel_size, color="grey", linestyle="--", label="nominal"
    )
    axes.set_xlabel("template pixel size (Å)")
    axes.set_ylabel("mean z-score")
    axes.set_title(f"best {result.best_pixel_size:.4f} Å")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def _source(
    config: OptimizeConfig, device: torch.device
) -> tuple[TemplateSource, float, int]:
    """Return the templates to sweep, the nominal voxel size (A) and the box."""
    p = config.preprocessing
    if config.model is not None:
        box, nominal = config.box_size, config.nominal_pixel_size
        if box is None or nominal is None:  # guarded by the config validator
            raise InputDataError("model: box_size and nominal_pixel_size are required")
        source = simulated_model_source(config.model, box, device, p.template_padding)
        return source, nominal, box
    path = str(config.template)
    nominal = (
        config.nominal_pixel_size or p.template_pixel_size or read_mrc(path).pixel_size
    )
    template = read_template(path, p, device, nominal)
    return rescaled_map_source(template), nominal, template.size


def _sweep_settings(fields: PixelSizeSweepConfig) -> SweepSettings:
    """Sweep settings from the ``sweep`` section."""
    return SweepSettings(
        fields.coarse_range, fields.coarse_step, fields.fine_range, fields.fine_step
    )


def run_optimize(
    config: OptimizeConfig, output: str | Path | None = None, overwrite: bool = False
) -> SweepResult:
    """Sweep the template pixel size of ``config``; write the sweep, a plot, the best.

    Writes ``sweep.csv``, ``pixel_size_sweep.png`` and ``optimize.json`` (best and
    nominal pixel size) into the output directory.
    """
    directory = output_directory(output, config.output, "optimize.json", overwrite)
    config = resolve_model_template(config, directory, config.nominal_pixel_size)
    device = resolve_devices(config.compute.device)[0]
    particles = read_particle_table(config.particles)
    source, nominal, box = _source(config, device)
    micrograph = read_micrograph(
        config.micrograph,
        config.optics.to_optics(),
        config.preprocessing,
        config.masking,
        box,
        device,
    )
    settings = local_settings_from(config.search, config.compute.orientations_per_chunk)
    result = sweep_pixel_size(
        micrograph,
        source,
        particles,
        settings,
        nominal,
        _sweep_settings(config.sweep),
    )
    write_csv_table(result.table(), directory / "sweep.csv")
    _plot_sweep(result, directory / "pixel_size_sweep.png")
    summary = {
        "best_pixel_size": result.best_pixel_size,
        "nominal_pixel_size": nominal,
        "relative_change": result.best_pixel_size / nominal - 1.0,
        "particles": len(particles),
    }
    write_text_atomic(directory / "optimize.json", json.dumps(summary, indent=2))
    return result
