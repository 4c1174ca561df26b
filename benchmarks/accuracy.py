"""Detection accuracy on simulated micrographs: recall, precision and pose errors.

For every seed x dose x particle count x template B-factor (template mismatch) the
script simulates a micrograph from the shipped demo map (or ``--template``),
searches it, picks peaks at one expected false positive per micrograph and scores
the picks against the truth. It prints one row per run and writes all rows as JSON.

Example::

    python benchmarks/accuracy.py --seeds 0 1 --doses 20 40 --particles 12 \
        --template-b-factors 0 200 --image-size 512 --step 8 --output accuracy.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from twodtm.io.mrc import read_mrc
from twodtm.programs.demo import (
    DEMO_SYMMETRY,
    SearchSettings,
    demo_optics,
    demo_volume,
    run_trial,
)
from twodtm.simulate import SimulationParams


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--doses", type=float, nargs="+", default=[30.0])
    parser.add_argument("--particles", type=int, nargs="+", default=[12])
    parser.add_argument("--template-b-factors", type=float, nargs="+", default=[0.0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--step", type=float, default=8.0, help="angular step, deg")
    parser.add_argument("--defocus-spread", type=float, default=50.0)
    parser.add_argument("--template", type=Path, help="MRC map (default: demo map)")
    parser.add_argument("--symmetry", default=DEMO_SYMMETRY)
    parser.add_argument("--output", type=Path, default=Path("accuracy.json"))
    return parser.parse_args()


def _volume(template: Path | None) -> tuple[torch.Tensor, float]:
    if template is None:
        return demo_volume()
    mrc = read_mrc(template)
    return torch.from_numpy(mrc.data), mrc.pixel_size


def main() -> None:
    args = _arguments()
    volume, pixel_size = _volume(args.template)
    optics = demo_optics(pixel_size)
    search = SearchSettings(args.step, args.step, args.symmetry)
    rows = []
    grid = itertools.product(
        args.seeds, args.doses, args.particles, args.template_b_factors
    )
    for seed, dose, count, b_factor in grid:
        params = SimulationParams(
            (args.image_size, args.image_size),
            count,
            dose,
            args.defocus_spread,
            seed=seed,
        )
        with tempfile.TemporaryDirectory() as work:
            trial = run_trial(volume, optics, params, search, work, b_factor)
        row = {"seed": seed, "dose": dose, "particles": count, "template_b": b_factor}
        row.update(trial.score.summary())
        row["seconds"] = trial.seconds
        rows.append(row)
        print(
            pd.DataFrame([row]).to_string(index=False, float_format="%.3g"), flush=True
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.3g"))
    args.output.write_text(json.dumps(rows, indent=2, default=float), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
