"""twodtm: two-dimensional template matching of cryo-EM micrographs in PyTorch.

The public names below are imported on first use, so that ``import twodtm`` (and
the command line starting up) does not load torch before it is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twodtm.config import MatchConfig, load_match_config
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
    from twodtm.programs.constrained import constrained_search
    from twodtm.programs.match import match_template, run_match
    from twodtm.programs.refine import refine_particles
    from twodtm.search.engine import (
        SearchInputs,
        build_search_inputs,
        search_orientations,
    )
    from twodtm.search.space import Chunk, SearchSpace
    from twodtm.search.statistics import SearchStatistics

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "twodtm.errors",
    "Chunk": "twodtm.search.space",
    "ConfigError": "twodtm.errors",
    "DeviceError": "twodtm.errors",
    "InputDataError": "twodtm.errors",
    "InputFileError": "twodtm.errors",
    "MatchConfig": "twodtm.config",
    "MatchResult": "twodtm.io.results",
    "Optics": "twodtm.ctf",
    "OutputExistsError": "twodtm.errors",
    "SearchInputs": "twodtm.search.engine",
    "SearchSpace": "twodtm.search.space",
    "SearchStatistics": "twodtm.search.statistics",
    "TwodtmError": "twodtm.errors",
    "build_search_inputs": "twodtm.search.engine",
    "constrained_search": "twodtm.programs.constrained",
    "load_match_config": "twodtm.config",
    "match_template": "twodtm.programs.match",
    "refine_particles": "twodtm.programs.refine",
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
