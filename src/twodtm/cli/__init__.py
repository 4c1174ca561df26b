"""The ``twodtm`` command line (typer): one module per program, registered here."""

from __future__ import annotations

from twodtm.cli import config_cmd, match_cmd
from twodtm.cli.app import app, console, main

# One entry per program module; each module's ``register`` adds its commands.
PROGRAMS = (config_cmd, match_cmd)
for _program in PROGRAMS:
    _program.register(app)

__all__ = ["PROGRAMS", "app", "console", "main"]
