"""Make the demo template shipped in ``src/twodtm/data`` (run once; reproducible).

Simulates human apoferritin (PDB 6Z6U, 24-mer, octahedral) with ttsim3d at the
demo pixel size and stores it as float32 MRC::

    python benchmarks/make_demo_data.py /work/shared/data/6z6u_apoferritin_24mer.pdb
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twodtm.io.mrc import write_mrc
from twodtm.programs.demo import DEMO_BOX_SIZE, DEMO_PIXEL_SIZE
from twodtm.simulate import map_from_model

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "twodtm"
    / "data"
    / "demo_apoferritin.mrc"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="6z6u apoferritin PDB file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    volume = map_from_model(args.model, DEMO_PIXEL_SIZE, DEMO_BOX_SIZE)
    write_mrc(args.output, volume.numpy(), DEMO_PIXEL_SIZE)
    print(f"wrote {args.output}: {tuple(volume.shape)} at {DEMO_PIXEL_SIZE} A/px")


if __name__ == "__main__":
    main()
