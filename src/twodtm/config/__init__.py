"""Pydantic models of every program's YAML, validated once at the edge.

Models reject unknown keys and do no file I/O; the core receives plain values.
``_base`` holds the parsing, YAML and ``--set`` machinery, ``match`` the global
search's sections, ``particles`` those of refine, optimize-template and
constrained, ``simulate`` the simulator's.

Examples
--------
>>> config = parse_config(
...     MatchConfig,
...     {
...         "micrograph": "mic.mrc",
...         "template": "map.mrc",
...         "optics": {"pixel_size": 1.0, "defocus_u": 12000, "defocus_v": 11000},
...     },
... )
>>> config.defocus_search.offsets()[:3]
[-1200.0, -1000.0, -800.0]
>>> with_overrides(config, ["compute.workers=2"]).compute.workers
2
"""

from twodtm.config._base import (
    dump_yaml,
    load_yaml,
    parse_config,
    parse_overrides,
    with_overrides,
)
from twodtm.config.match import (
    Compute,
    DefocusSearch,
    Masking,
    MatchConfig,
    ModelTemplate,
    OpticsConfig,
    OrientationSearch,
    OutputConfig,
    PixelSizeSearch,
    Preprocessing,
    RangeSearch,
    load_match_config,
)
from twodtm.config.particles import (
    ConstrainedConfig,
    ConstrainedSearch,
    LocalDefocusSearch,
    LocalOrientationSearch,
    LocalSearch,
    OptimizeConfig,
    ParticleCompute,
    PixelSizeSweepConfig,
    RefineConfig,
    RelativePose,
    load_program_config,
)
from twodtm.config.run import (
    DatasetOptics,
    PeakPicking,
    RefineStage,
    RunConfig,
    load_run_config,
)
from twodtm.config.simulate import SimulateConfig

__all__ = [
    "Compute",
    "ConstrainedConfig",
    "ConstrainedSearch",
    "DatasetOptics",
    "DefocusSearch",
    "LocalDefocusSearch",
    "LocalOrientationSearch",
    "LocalSearch",
    "Masking",
    "MatchConfig",
    "ModelTemplate",
    "OpticsConfig",
    "OptimizeConfig",
    "OrientationSearch",
    "OutputConfig",
    "ParticleCompute",
    "PeakPicking",
    "PixelSizeSearch",
    "PixelSizeSweepConfig",
    "Preprocessing",
    "RangeSearch",
    "RefineConfig",
    "RefineStage",
    "RelativePose",
    "RunConfig",
    "SimulateConfig",
    "dump_yaml",
    "load_match_config",
    "load_program_config",
    "load_run_config",
    "load_yaml",
    "parse_config",
    "parse_overrides",
    "with_overrides",
]
