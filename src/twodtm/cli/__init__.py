"""The ``twodtm`` command line (typer): one module per program, registered here."""

from __future__ import annotations

from twodtm.cli import (
    bench_cmd,
    config_cmd,
    constrained_cmd,
    demo_cmd,
    match_cmd,
    optimize_cmd,
    peaks_cmd,
    refine_cmd,
    report_cmd,
    simulate_cmd,
)
from twodtm.cli.app import app, console, main

# One entry per program module; each module's ``register`` adds its commands.
PROGRAMS = (
    config_cmd,
    match_cmd,
    report_cmd,
    bench_cmd,
    refine_cmd,
    optimize_cmd,
    constrained_cmd,
    simulate_cmd,
    peaks_cmd,
    demo_cmd,
)
for _program in PROGRAMS:
    _program.register(app)

__all__ = ["PROGRAMS", "app", "console", "main"]
