"""``twodtm simulate``: a synthetic micrograph with known particles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from twodtm.cli.app import console
from twodtm.config import SimulateConfig, parse_config, parse_overrides
from twodtm.programs.simulate import run_simulate_config

_OPTICS_KEYS = {
    "voltage",
    "spherical_aberration",
    "amplitude_contrast",
    "astigmatism_angle",
}


def simulate(
    template: Annotated[
        Path, typer.Argument(help="atomic model (PDB/mmCIF) or MRC map")
    ],
    output: Annotated[Path, typer.Argument(help="output directory")] = Path(
        "twodtm-simulation"
    ),
    pixel_size: Annotated[float, typer.Option(help="micrograph pixel size, A")] = 1.5,
    image_size: Annotated[
        int, typer.Option(help="micrograph edge, px (square)")
    ] = 1024,
    particles: Annotated[int | None, typer.Option(help="number of particles")] = None,
    dose: Annotated[float, typer.Option(help="electron dose, e/A^2")] = 30.0,
    defocus: Annotated[
        float, typer.Option(help="mean defocus, A (underfocus > 0)")
    ] = 15000.0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE for any other setting: density (per um^2), defocus_spread, "
            "gaussian_noise, min_separation, seed, box_size, simulation_b_factor, "
            "template_b_factor, template_resolution, astigmatism (A), "
            "astigmatism_angle, voltage, spherical_aberration, amplitude_contrast",
        ),
    ] = None,
) -> None:
    """Simulate micrograph.mrc, template.mrc and truth.star into OUTPUT."""
    extra = parse_overrides(set_ or [])
    astigmatism = float(extra.pop("astigmatism", 0.0))
    optics = {"pixel_size": pixel_size, "defocus_u": defocus + astigmatism / 2}
    optics["defocus_v"] = defocus - astigmatism / 2
    optics.update({k: extra.pop(k) for k in list(extra) if k in _OPTICS_KEYS})
    data = {
        "template": str(template),
        "output": str(output),
        "optics": optics,
        "image_size": (image_size, image_size),
        "n_particles": particles,
        "dose": dose,
        **extra,
    }
    if particles is None and "density" not in extra:
        data["n_particles"] = 10
    config = parse_config(SimulateConfig, data, "twodtm simulate")
    for name, path in run_simulate_config(config).items():
        console.print(f"{name}: {path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``twodtm simulate`` to ``app``."""
    app.command("simulate")(simulate)


__all__ = ["register", "simulate"]
