"""Entry point of the ``twodtm`` command (cli): prepares the process, runs the CLI.

The host-memory settings of ``twodtm._hostmemory`` must be in the environment
before torch is loaded, which importing ``twodtm.cli`` does.
"""

from __future__ import annotations

import importlib

from twodtm._hostmemory import prepare_environment

__all__ = ["main"]


def main() -> None:
    """Run the ``twodtm`` command line."""
    prepare_environment()
    importlib.import_module("twodtm.cli").main()
