"""``twodtm config``: commented example configurations."""

from __future__ import annotations

import sys
from importlib import resources
from typing import Annotated

import typer

from twodtm.errors import ConfigError

_EXAMPLES = {
    "match": "match.example.yaml",
    "refine": "refine.example.yaml",
    "optimize": "optimize.example.yaml",
    "constrained": "constrained.example.yaml",
    "run": "run.example.yaml",
}


def example_text(program: str) -> str:
    """Commented example YAML of ``program``."""
    if program not in _EXAMPLES:
        raise ConfigError(
            f"no example for {program!r}: choose one of {sorted(_EXAMPLES)}"
        )
    example = resources.files("twodtm.data").joinpath(_EXAMPLES[program])
    return example.read_text("utf-8")


def config_example(
    program: Annotated[
        str, typer.Argument(help="program whose config to print")
    ] = "match",
) -> None:
    """Print a commented example configuration."""
    sys.stdout.write(example_text(program))


def register(app: typer.Typer) -> None:
    """Add ``twodtm config example`` to ``app``."""
    group = typer.Typer(help="Configuration files.", no_args_is_help=True)
    group.command("example")(config_example)
    app.add_typer(group, name="config")


__all__ = ["config_example", "example_text", "register"]
