"""``twodtm bench``: throughput of the search engine on synthetic inputs."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from twodtm.devices import resolve_devices
from twodtm.errors import ConfigError
from twodtm.programs.benchmark import EngineOptions, format_report, time_engine

__all__ = [
    "bench",
    "parse_image_size",
    "register",
]


def parse_image_size(text: str) -> tuple[int, int]:
    """``"H"`` or ``"HxW"`` as ``(H, W)`` pixels; ``ConfigError`` otherwise."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) < 8:
        raise ConfigError(
            f"--image-size {text!r}: expected H or HxW in pixels (each >= 8), "
            "e.g. 4096 or 5760x4092"
        )
    return (sizes[0], sizes[-1])


def bench(
    image_size: Annotated[
        str, typer.Option(help="micrograph H or HxW, pixels")
    ] = "1024",
    template_size: Annotated[int, typer.Option(min=4, help="template box, px")] = 128,
    orientations: Annotated[int, typer.Option(min=1, help="orientations timed")] = 32,
    defocus: Annotated[int, typer.Option(min=1, help="defocus values")] = 13,
    device: Annotated[str, typer.Option(help="'cpu' or 'cuda:N'")] = "cpu",
    fused: Annotated[
        bool, typer.Option(help="compiled one-pass statistics (compiled in warm-up)")
    ] = True,
    precision: Annotated[str, typer.Option(help="inverse FFTs: fp32 or fp16")] = "fp32",
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object")
    ] = False,
) -> None:
    """Time the search engine alone and compare it with the FFT-only floor."""
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision {precision!r}: use fp32 or fp16")
    record = time_engine(
        image_shape=parse_image_size(image_size),
        template_size=template_size,
        n_orientations=orientations,
        n_defocus=defocus,
        device=str(resolve_devices(device)[0]),
        options=EngineOptions(
            fused=fused, precision="fp16" if precision == "fp16" else "fp32"
        ),
    )
    sys.stdout.write((json.dumps(record) if as_json else format_report(record)) + "\n")


def register(app: typer.Typer) -> None:
    """Add ``twodtm bench`` to ``app``."""
    app.command("bench")(bench)
