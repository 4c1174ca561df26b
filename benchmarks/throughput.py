"""Throughput of twodtm's search engine: correlations per second vs the FFT floor.

The timing itself is ``twodtm.programs.benchmark.time_engine`` (also behind ``twodtm
bench``); this script runs it for several image sizes and prints one report each,
or a JSON list with ``--json``.

Example::

    python benchmarks/throughput.py --image-size 1024 4096 --template-size 128 \
        --orientations 32 --defocus 13
"""

from __future__ import annotations

import argparse
import importlib
import json

from twodtm._hostmemory import prepare_environment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", nargs="+", default=["1024"], help="H or HxW")
    parser.add_argument("--template-size", type=int, default=128)
    parser.add_argument("--orientations", type=int, default=32)
    parser.add_argument("--defocus", type=int, default=13)
    parser.add_argument("--pixel-sizes", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eager", action="store_true", help="unfused statistics")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--template-padding", type=float, default=2.0)
    parser.add_argument(
        "--padded-slices",
        action="store_true",
        help="sample slices at the padded size and crop (default: the t box)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # before torch loads (see twodtm._hostmemory), as the command line does
    prepare_environment()
    benchmark = importlib.import_module("twodtm.programs.benchmark")
    if args.threads:
        importlib.import_module("torch").set_num_threads(args.threads)
    parse_image_size = importlib.import_module("twodtm.cli.bench_cmd").parse_image_size
    options = benchmark.EngineOptions(
        batch_size=args.batch_size,
        fused=not args.eager,
        precision=args.precision,
        template_padding=args.template_padding,
        slice_size=0 if args.padded_slices else None,
    )
    records = []
    for size in args.image_size:
        record = benchmark.time_engine(
            image_shape=parse_image_size(size),
            template_size=args.template_size,
            n_orientations=args.orientations,
            n_defocus=args.defocus,
            device=args.device,
            seed=args.seed,
            n_pixel_sizes=args.pixel_sizes,
            options=options,
        )
        records.append(record)
        if not args.json:
            print(benchmark.format_report(record), flush=True)
    if args.json:
        print(json.dumps(records))


if __name__ == "__main__":
    main()
