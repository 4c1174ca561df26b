"""twodtm: two-dimensional template matching of cryo-EM micrographs in PyTorch."""

from twodtm.config import MatchConfig, load_match_config
from twodtm.constrained import constrained_search
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
from twodtm.match import match_template, run_match
from twodtm.refine import refine_particles
from twodtm.search.engine import SearchInputs, build_search_inputs, search_orientations
from twodtm.search.space import Chunk, SearchSpace
from twodtm.search.statistics import SearchStatistics

__version__ = "0.1.0"

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
