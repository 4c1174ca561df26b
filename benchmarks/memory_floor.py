r"""The least memory a search with twodtm's results can hold, against its own.

For an image, a template, a Fourier padding and D defocus planes this prints
what any engine that keeps twodtm's results has to hold at one time, part by
part, next to what twodtm's engine holds (``search.memory.device_bytes``) and,
with ``--leopard-gib``, Leopard-EM's measured peak:

* the process itself: the resident size after importing torch and twodtm and
  running one small FFT (measured here);
* the padded template DFT as bfloat16 parts (``memory.template_bytes``,
  ``compact``), which the sampler reads for every orientation;
* the statistics: float32 maximum, int64 best index and two float64 sums per
  pixel (``memory.STATISTICS_BYTES``): exact sums make the result independent
  of how the search is split;
* the micrograph's DFT (complex64, half grid);
* one inverse transform: its complex64 input/output and the work buffer of the
  same size that torch's CPU FFT (MKL) takes per call.

Everything else (the D planes' filters, the maps of an orientation folded
together, the projection's DFT) comes on top. Sizes in GiB (2^30 bytes).

Example::

    python benchmarks/memory_floor.py --image 4096 --template 512 --defocus 13 \
        --leopard-gib 3.48
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from twodtm.search.memory import STATISTICS_BYTES, device_bytes, template_bytes

_GIB = 2**30


def _baseline_bytes() -> int:
    """Peak resident size of this process so far (torch and twodtm imported)."""
    torch.fft.rfft2(torch.zeros(64, 64))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def floor_parts(
    image: int, template: int, padding: float, n_defocus: int
) -> dict[str, float]:
    """Return the parts of the least memory, and twodtm's engine's bound, GiB."""
    full, half = image * image, image * (image // 2 + 1)
    parts = {
        "process (torch, twodtm)": _baseline_bytes(),
        f"template, padding {padding:g}, bfloat16": template_bytes(
            template, padding, compact=True
        ),
        "statistics (exact sums)": full * STATISTICS_BYTES,
        "micrograph DFT": half * 8,
        "one inverse transform + its work buffer": 2 * full * 8,
    }
    out = {name: value / _GIB for name, value in parts.items()}
    out["least in all"] = sum(parts.values()) / _GIB
    out[f"+ the {n_defocus} planes' filtered images (half grid)"] = (
        n_defocus * half * 8 / _GIB
    )
    engine = device_bytes(
        n_defocus, (image, image), template, padding, 1, template, compact=True
    )
    out["twodtm's engine bound (device_bytes) + process"] = (
        engine + parts["process (torch, twodtm)"]
    ) / _GIB
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=int, default=4096, help="image edge, px")
    parser.add_argument("--template", type=int, default=512, help="template box")
    parser.add_argument("--padding", type=float, default=2.0)
    parser.add_argument("--defocus", type=int, default=13, help="defocus planes D")
    parser.add_argument("--leopard-gib", type=float, help="Leopard-EM's peak, GiB")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    parts = floor_parts(args.image, args.template, args.padding, args.defocus)
    print(
        f"{args.image}^2 image, {args.template}^3 template, padding "
        f"{args.padding:g}, {args.defocus} planes (GiB)"
    )
    for name, value in parts.items():
        print(f"  {name:<55} {value:6.2f}")
    if args.leopard_gib is not None:
        spare = args.leopard_gib - parts["least in all"]
        print(f"  {'Leopard-EM peak':<55} {args.leopard_gib:6.2f}")
        print(
            f"  {'left under it for filters, maps and the projection':<55} {spare:6.2f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(vars(args) | {"parts_gib": parts}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
