"""``twodtm simulate``: read the map, simulate a micrograph, write it with its truth.

The forward model is ``twodtm.simulate``; this program reads its inputs through
the one input policy (``twodtm.programs.inputs``) and writes ``micrograph.mrc``,
``template.mrc`` and ``truth.star``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from twodtm.config import SimulateConfig
from twodtm.errors import ConfigError
from twodtm.io.mrc import write_mrc
from twodtm.io.tables import write_star_table
from twodtm.model_template import is_atomic_model
from twodtm.programs.inputs import TemplatePolicy, read_template
from twodtm.simulate import (
    Simulation,
    SimulationParams,
    degrade_volume,
    map_from_model,
    simulate_micrograph,
)


def write_simulation(
    sim: Simulation,
    directory: str | os.PathLike[str],
    template_volume: torch.Tensor | np.ndarray,
    pixel_size: float,
) -> dict[str, Path]:
    """Write ``micrograph.mrc``, ``template.mrc`` and ``truth.star`` (atomically each).

    Returns
    -------
    dict[str, Path]
        The paths written, keyed ``micrograph``, ``template``, ``truth``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "micrograph": out / "micrograph.mrc",
        "template": out / "template.mrc",
        "truth": out / "truth.star",
    }
    template = np.asarray(
        template_volume.detach().cpu().numpy()
        if isinstance(template_volume, torch.Tensor)
        else template_volume,
        dtype=np.float32,
    )
    write_mrc(paths["micrograph"], sim.micrograph, pixel_size)
    write_mrc(paths["template"], template, pixel_size)
    write_star_table(sim.truth, paths["truth"], micrograph_name="micrograph.mrc")
    return paths


def _load_volume(config: SimulateConfig) -> torch.Tensor:
    """Load the map to simulate: ttsim3d for an atomic model, else the MRC map.

    A map goes through the one template policy (``programs.inputs.read_template``): it
    must be a finite, non-constant cube at the micrograph's pixel size (a header
    without one is taken to match); an odd box is padded to even.

    Raises
    ------
    ConfigError
        A model without ``box_size``.
    InputFileError, InputDataError
        A map that is unreadable, not cubic, or at another pixel size.
    """
    path = Path(config.template)
    pixel_size = config.optics.pixel_size
    if is_atomic_model(path):
        if config.box_size is None:
            raise ConfigError(
                f"{path}: simulating an atomic model needs a box size; pass --box-size "
                "(e.g. the particle diameter in pixels plus 20%)"
            )
        return map_from_model(
            path, pixel_size, config.box_size, config.simulation_b_factor
        )
    template = read_template(path, TemplatePolicy(), micrograph_pixel_size=pixel_size)
    return torch.from_numpy(template.data)


def run_simulate_config(config: SimulateConfig) -> dict[str, Path]:
    """Simulate and write micrograph.mrc, template.mrc and truth.star as configured."""
    optics = config.optics.to_optics()
    volume = _load_volume(config)
    params = SimulationParams(
        image_shape=config.image_size,
        n_particles=config.particle_count(),
        dose=config.dose,
        defocus_spread=config.defocus_spread,
        gaussian_noise=config.gaussian_noise,
        min_separation=config.min_separation,
        seed=config.seed,
    )
    sim = simulate_micrograph(volume, optics, params)
    template = degrade_volume(
        volume, optics.pixel_size, config.template_b_factor, config.template_resolution
    )
    return write_simulation(sim, config.output, template, optics.pixel_size)


__all__ = ["run_simulate_config", "write_simulation"]
