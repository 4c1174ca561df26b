r"""Z-scores of true particles against the template's Fourier padding and slicing.

Micrographs come from the independent forward model (``tests/forward_model.py``:
numpy/scipy only, real-space projections, cisTEM's CTF, Poisson counts) of the
shared apoferritin map; the search is twodtm's engine. Every particle is searched
at its true pose among ``--decoys`` random orientations (one defocus plane, the
true one), so the z-score at its centre, ``(mip - mean) / std`` over all the
orientations, measures how well the engine's projection at that pose matches the
particle. It is compared for each template padding (``--paddings``) and two ways
to slice the padded DFT:

* ``t-grid``: ``slice_size`` t (slice sampled at the t box's frequencies,
  inverse transform at t^2: the p-box projection folded onto t);
* ``box``: ``slice_size`` from ``projection.projection_box`` (what ``twodtm match``
  uses: t for a map inside its inscribed sphere);
* ``p-grid``: ``slice_size`` 0 (sampled at the padded box's frequencies,
  transformed at p^2 and cropped to t: torch-fourier-slice's projection, the
  engine before this change).

``--samplers`` compares the eager sampler (``grid_sample``), the compiled one
(``compiled``: ``projection.compiled_slices``) and the compiled one reading the
bfloat16 ``projection.compact_template`` (``compact``: what long searches use).

It also prints each projection's correlation with the forward model's
real-space projection (cubic spline) at the true poses. Templates: ``confined``
(the map inside the inscribed sphere of its box) and ``box-filling`` (the map
cropped tighter than the particle, so projections leave the box at oblique
angles).

Example::

    python benchmarks/template_padding.py --seeds 0 1 --decoys 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from twodtm.ctf import Optics
from twodtm.orientations import euler_to_matrix
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search.engine import search_orientations
from twodtm.search.inputs import SearchInputs, build_search_inputs
from twodtm.search.projection import compact_template, project, projection_box
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import forward_model as fm  # noqa: E402  (the tests' independent simulator)

MAP = Path(__file__).resolve().parents[2] / "shared" / "data"
MAP_NAME = "sim_6z6u_apoferritin_1.0A_192.mrc"
MICROSCOPE = fm.Microscope(astigmatism=400.0, astigmatism_angle=30.0)
DEFOCUS = 15000.0  # Angstrom
# (crop box in A of the 1 A map, template box in px): apoferritin is 124 A across
TEMPLATES = {"confined": (160, 64), "box-filling": (104, 64)}
SLICINGS = ("t-grid", "box", "p-grid")


@dataclass(frozen=True)
class Case:
    """A simulated micrograph and the template that made it."""

    counts: np.ndarray
    template: np.ndarray
    pixel_size: float
    particles: tuple[fm.Particle, ...]


def simulate(kind: str, seed: int, shape: tuple[int, int], n: int, dose: float) -> Case:
    """Simulate ``n`` apoferritin particles at one defocus (forward model)."""
    volume, voxel = fm.read_map(str(MAP / MAP_NAME))
    crop, box = TEMPLATES[kind]
    template, pixel = fm.bin_map(volume, voxel, crop, box)
    rng = np.random.default_rng(seed)
    particles = fm.random_particles(
        n, shape, 1.2 * box, box / 2 + 2, np.full(n, DEFOCUS), rng
    )
    sim = fm.simulate_micrograph(
        template, pixel, shape, particles, dose=dose, microscope=MICROSCOPE, seed=seed
    )
    return Case(sim.counts, template, pixel, particles)


def slice_size(volume: torch.Tensor, template: torch.Tensor, slicing: str) -> int:
    """``SearchInputs.slice_size`` of a slicing option (see the module notes)."""
    if slicing == "t-grid":
        return int(volume.shape[-1])
    if slicing == "box":
        return projection_box(volume, int(template.shape[-3]))
    return 0


def search_space(case: Case, decoys: int, seed: int) -> SearchSpace:
    """Search the particles' true poses, then Haar-random decoy orientations."""
    rng = np.random.default_rng(1000 + seed)
    truth = [[p.phi, p.theta, p.psi] for p in case.particles]
    random = np.stack(
        [
            rng.uniform(0.0, 360.0, decoys),
            np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, decoys))),
            rng.uniform(0.0, 360.0, decoys),
        ],
        axis=1,
    )
    angles = torch.tensor(np.concatenate([truth, random]), dtype=torch.float64)
    return SearchSpace(
        euler_angles=angles,
        defocus_offsets=torch.zeros(1, dtype=torch.float64),
        pixel_sizes=torch.tensor([case.pixel_size], dtype=torch.float64),
    )


SAMPLERS = ("eager", "compiled", "compact")


def particle_zscores(
    case: Case, padding: float, slicing: str, decoys: int, seed: int, sampler: str
):
    """Z-score at each particle's centre (best within 2 px) and the search time."""
    optics = Optics(
        pixel_size=case.pixel_size,
        defocus_u=DEFOCUS + 0.5 * MICROSCOPE.astigmatism,
        defocus_v=DEFOCUS - 0.5 * MICROSCOPE.astigmatism,
        astigmatism_angle=MICROSCOPE.astigmatism_angle,
    )
    image = prepare_image(
        torch.from_numpy(case.counts), case.pixel_size, FilterSettings(), False
    )
    volume = torch.from_numpy(case.template).to(torch.float32)
    space = search_space(case, decoys, seed)
    template = prepare_template(volume, padding)
    inputs = build_search_inputs(
        template,
        volume.shape[-1],
        image,
        optics,
        space,
        slice_size=slice_size(volume, template, slicing),
    )
    if sampler != "eager":
        inputs = replace(inputs, compiled_slices=True)
    if sampler == "compact":
        inputs = replace(inputs, template_dft=compact_template(template))
    stats = SearchStatistics.empty(image.shape)
    rotations = euler_to_matrix(space.euler_angles)
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, rotations.shape[0], 32):
            search_orientations(
                inputs, rotations[first : first + 32], first, stats, image.shape
            )
    seconds = time.perf_counter() - start
    z = stats.zscore().numpy()
    scores = []
    for p in case.particles:
        x, y = round(p.x), round(p.y)
        scores.append(float(z[y - 2 : y + 3, x - 2 : x + 3].max()))
    return scores, seconds, inputs


def projection_accuracy(case: Case, inputs: SearchInputs) -> float:
    """Mean correlation of the engine's projections with real-space ones (truth)."""
    angles = torch.tensor(
        [[p.phi, p.theta, p.psi] for p in case.particles], dtype=torch.float64
    )
    with torch.inference_mode():
        boxes = project(inputs.projector, euler_to_matrix(angles), 1.0).double().numpy()
    values = []
    for box, p in zip(boxes, case.particles, strict=True):
        truth = fm.project_map(case.template, p.phi, p.theta, p.psi)
        values.append(
            float((box * truth).sum() / np.linalg.norm(box) / np.linalg.norm(truth))
        )
    return float(np.mean(values))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--seeds", type=int, nargs="+", default=[0, 1])
    add("--templates", nargs="+", default=list(TEMPLATES), choices=list(TEMPLATES))
    add("--paddings", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    add("--slicings", nargs="+", default=["t-grid", "p-grid"], choices=SLICINGS)
    add("--samplers", nargs="+", default=["eager"], choices=SAMPLERS)
    add("--image-size", type=int, default=512)
    add("--particles", type=int, default=8)
    add("--dose", type=float, default=20.0, help="e/A^2")
    add("--decoys", type=int, default=300, help="random orientations per search")
    add("--json", type=Path, default=None)
    return parser.parse_args()


def _row(cases, kind, padding, slicing, sampler, args) -> dict:
    """Z-scores and projection accuracy of one setting over the seeds' cases."""
    scores, seconds, accuracy = [], 0.0, []
    for seed, case in zip(args.seeds, cases, strict=True):
        z, s, inputs = particle_zscores(
            case, padding, slicing, args.decoys, seed, sampler
        )
        scores += z
        seconds += s
        accuracy.append(projection_accuracy(case, inputs))
    return {
        "template": kind,
        "padding": padding,
        "slicing": slicing,
        "sampler": sampler,
        "mean_zscore": float(np.mean(scores)),
        "zscores": scores,
        "projection_correlation": float(np.mean(accuracy)),
        "search_seconds": seconds,
    }


def main() -> None:
    """Print one row per template, padding and slicing; optionally write JSON."""
    args = _arguments()
    shape = (args.image_size, args.image_size)
    rows = []
    for kind in args.templates:
        cases = [
            simulate(kind, s, shape, args.particles, args.dose) for s in args.seeds
        ]
        for padding in args.paddings:
            for slicing in args.slicings:
                if padding == 1.0 and slicing != args.slicings[0]:
                    continue  # p = t: every slicing is the same
                for sampler in args.samplers:
                    row = _row(cases, kind, padding, slicing, sampler, args)
                    rows.append(row)
                    print(
                        f"{kind:12s} padding {padding:.1f} {slicing} {sampler}: mean z"
                        f" {row['mean_zscore']:.4f} over {len(row['zscores'])} "
                        "particles, projection vs real-space cc "
                        f"{row['projection_correlation']:.5f}, "
                        f"search {row['search_seconds']:.1f} s",
                        flush=True,
                    )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
