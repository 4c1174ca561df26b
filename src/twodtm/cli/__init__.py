"""The ``twodtm`` command line (cli, on top of the programs): one module per program.

Each ``*_cmd`` module's ``register`` adds its commands to ``app``; ``main`` is the
entry point (``twodtm.launch`` prepares the process first).
"""

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
    run_cmd,
    simulate_cmd,
)
from twodtm.cli.app import app, main

__all__ = ["app", "main"]

# One entry per program module; each module's ``register`` adds its commands.
_PROGRAMS = (
    config_cmd,
    match_cmd,
    report_cmd,
    bench_cmd,
    refine_cmd,
    optimize_cmd,
    constrained_cmd,
    simulate_cmd,
    peaks_cmd,
    run_cmd,
    demo_cmd,
)
for _program in _PROGRAMS:
    _program.register(app)
