"""twodtm: two-dimensional template matching of cryo-EM micrographs in PyTorch.

The package is layered: physics (``ctf``, ``orientations``, ``preprocess``,
``model_template``, ``simulate``), the global search (``search``), the local
search (``local``), the programs built on them (``programs``), file input and
output (``io``), configuration (``config``), figures (``report``) and the command
line (``cli``) on top. The names below are the public entry points; they are
imported on first use, so that ``import twodtm`` (and the command line starting
up) does not load torch before it is needed.

Examples
--------
>>> import twodtm
>>> twodtm.Optics(pixel_size=1.0).voltage
300.0
>>> issubclass(twodtm.ConfigError, twodtm.TwodtmError)
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twodtm.config.match import MatchConfig, load_match_config
    from twodtm.ctf import Optics
    from twodtm.errors import (
        CheckpointError,
        ConfigError,
        DeviceError,
        InputDataError,
        InputFileError,
        OutputExistsError,
        TwodtmError,
    )
    from twodtm.io.results import MatchResult
    from twodtm.local.constrained import constrained_search
    from twodtm.local.refine import refine_particles
    from twodtm.programs.match import match_template, run_match
    from twodtm.search.engine import search_orientations
    from twodtm.search.inputs import SearchInputs, build_search_inputs
    from twodtm.search.space import Chunk, SearchSpace
    from twodtm.search.statistics import SearchStatistics

__version__ = "0.1.0"

# Each public name and the module that defines it.
_EXPORTS = {
    "CheckpointError": "twodtm.errors",
    "Chunk": "twodtm.search.space",
    "ConfigError": "twodtm.errors",
    "DeviceError": "twodtm.errors",
    "InputDataError": "twodtm.errors",
    "InputFileError": "twodtm.errors",
    "MatchConfig": "twodtm.config.match",
    "MatchResult": "twodtm.io.results",
    "Optics": "twodtm.ctf",
    "OutputExistsError": "twodtm.errors",
    "SearchInputs": "twodtm.search.inputs",
    "SearchSpace": "twodtm.search.space",
    "SearchStatistics": "twodtm.search.statistics",
    "TwodtmError": "twodtm.errors",
    "build_search_inputs": "twodtm.search.inputs",
    "constrained_search": "twodtm.local.constrained",
    "load_match_config": "twodtm.config.match",
    "match_template": "twodtm.programs.match",
    "refine_particles": "twodtm.local.refine",
    "run_match": "twodtm.programs.match",
    "search_orientations": "twodtm.search.engine",
}

__all__ = [
    "CheckpointError",
    "Chunk",
    "ConfigError",
    "DeviceError",
    "InputDataError",
    "InputFileError",
    "MatchConfig",
    "MatchResult",
    "Optics",
    "OutputExistsError",
    "SearchInputs",
    "SearchSpace",
    "SearchStatistics",
    "TwodtmError",
    "__version__",
    "build_search_inputs",
    "constrained_search",
    "load_match_config",
    "match_template",
    "refine_particles",
    "run_match",
    "search_orientations",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'twodtm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the module's names, the lazy ones included (for completion)."""
    return sorted(set(globals()) | set(__all__))
