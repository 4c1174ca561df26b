"""optimize-template: the parabola vertex analytically, and recovery of a
deliberately mis-labelled template pixel size from a simulated micrograph."""

from __future__ import annotations

import json
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import blob_volume
from twodtm.cli import app
from twodtm.config import OptimizeConfig, parse_config
from twodtm.ctf import Optics
from twodtm.errors import ConfigError
from twodtm.io.tables import write_csv_table
from twodtm.local import make_template
from twodtm.local.sweep import parabola_vertex, simulated_model_source
from twodtm.programs.simulate import write_simulation
from twodtm.simulate import (
    SimulationParams,
    map_from_model,
    simulate_micrograph,
)

TRUE_PIXEL = 1.0
WRONG_PIXEL = 1.03  # the label the template is given: 3 % off
APOFERRITIN = Path("/work/shared/data/6z6u_apoferritin_24mer.pdb")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def detailed_volume(size: int = 48, n_blobs: int = 80, seed: int = 2) -> torch.Tensor:
    """Many 1-px Gaussian blobs (fine detail, well-defined orientation and scale)."""
    return blob_volume(size, n_blobs, seed, sigma=1.0, spread=0.6) * 0.02


def test_parabola_vertex_is_exact_for_a_parabola():
    x = np.linspace(0.9, 1.1, 11)
    assert parabola_vertex(x, -((x - 1.013) ** 2)) == pytest.approx(1.013, abs=1e-9)
    assert parabola_vertex(x, x) == pytest.approx(1.1)  # maximum at the end: no fit


def test_config_needs_exactly_one_template():
    base = {
        "micrograph": "m.mrc",
        "particles": "p.csv",
        "optics": {"pixel_size": 1.0, "defocus_u": 1e4, "defocus_v": 1e4},
    }
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config(OptimizeConfig, base)
    with pytest.raises(ConfigError, match="box_size"):
        parse_config(OptimizeConfig, {**base, "model": "x.pdb"})


def test_recovers_a_mislabelled_template_pixel_size(tmp_path):
    optics = Optics(pixel_size=TRUE_PIXEL, defocus_u=6000.0, defocus_v=6000.0)
    volume = detailed_volume()
    params = SimulationParams((192, 192), 4, dose=300.0, seed=3)
    sim = simulate_micrograph(volume, optics, params)
    paths = write_simulation(sim, tmp_path, volume, WRONG_PIXEL)  # header says 1.03
    write_csv_table(sim.truth, tmp_path / "truth.csv")
    (tmp_path / "optimize.yaml").write_text(
        f"""
micrograph: {paths["micrograph"].name}
template: {paths["template"].name}
particles: truth.csv
optics: {{pixel_size: {TRUE_PIXEL}, defocus_u: 6000.0, defocus_v: 6000.0}}
sweep: {{coarse_range: 0.04, coarse_step: 0.01, fine_range: 0.008, fine_step: 0.002}}
"""
    )
    out = tmp_path / "optimized"
    result = CliRunner().invoke(
        app,
        ["optimize-template", str(tmp_path / "optimize.yaml"), "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "optimize.json").read_text())
    assert summary["nominal_pixel_size"] == pytest.approx(WRONG_PIXEL, rel=1e-5)
    assert summary["best_pixel_size"] == pytest.approx(TRUE_PIXEL, rel=0.005)
    sweep = np.loadtxt(out / "sweep.csv", delimiter=",", skiprows=1)
    assert sweep[:, 1].max() > sweep[np.argmax(sweep[:, 0]), 1] + 0.1  # a real peak
    assert (out / "pixel_size_sweep.png").read_bytes()[:4] == b"\x89PNG"


def radius_of_gyration(volume: torch.Tensor, pixel_size: float) -> float:
    """Radius of gyration of the positive density, Angstrom."""
    size = volume.shape[-1]
    axis = (torch.arange(size, dtype=torch.float64) - size // 2) * pixel_size
    grids = torch.meshgrid(axis, axis, axis, indexing="ij")
    weight = volume.double().clamp_min(0)
    centre = [float((weight * g).sum() / weight.sum()) for g in grids]
    squared = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    return float(((weight * squared).sum() / weight.sum()).sqrt())


@pytest.mark.skipif(not APOFERRITIN.is_file(), reason="shared test model absent")
def test_model_source_resimulates_at_each_pixel_size(tmp_path):
    """An atomic model is simulated anew at each voxel size (ttsim3d): the map's
    radius of gyration in Angstrom stays that of the atoms while its voxel count
    changes, unlike a map relabelled with another pixel size."""
    structure = gemmi.read_structure(str(APOFERRITIN))
    for name in [chain.name for chain in structure[0]][1:]:
        structure[0].remove_chain(name)  # one chain, 1358 atoms: ~1 s a map
    structure.remove_ligands_and_waters()
    structure.write_pdb(str(tmp_path / "chain.pdb"))
    model = str(tmp_path / "chain.pdb")
    fine, coarse = map_from_model(model, 1.0, 80), map_from_model(model, 1.25, 64)
    rg_fine, rg_coarse = radius_of_gyration(fine, 1.0), radius_of_gyration(coarse, 1.25)
    assert rg_coarse == pytest.approx(rg_fine, rel=0.005)
    assert rg_fine > 15.0  # a ferritin chain, ~18 A, not a point
    # Relabelling the 1.0 A map as 1.25 A would make it 25 % larger.
    assert radius_of_gyration(fine, 1.25) > 1.2 * rg_coarse
    template = simulated_model_source(model, 64, torch.device("cpu"))(1.25)
    assert (template.pixel_size, template.size) == (1.25, 64)
    assert torch.equal(template.dft, make_template(coarse, 1.25).dft)
