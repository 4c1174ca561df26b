"""The configuration of ``twodtm run``: a dataset through match, peaks and refine.

One template and one set of search settings for every micrograph of a glob or a
RELION micrographs STAR; the STAR's per-micrograph CTF and optics groups replace
the ``optics`` defaults. The match sections are those of ``twodtm match``
(``twodtm.config.match``), ``refine`` holds the particle programs' local search
and compute sections (``twodtm.config.particles``).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, model_validator

from twodtm.config._base import _resolved, _Strict, load_yaml, parse_config
from twodtm.config.match import (
    Compute,
    DefocusSearch,
    OrientationSearch,
    OutputConfig,
    PixelSizeSearch,
    Preprocessing,
)
from twodtm.config.particles import LocalSearch, ParticleCompute

# The fields a glob of micrographs cannot take from anywhere but the config.
_GLOB_NEEDS = ("pixel_size", "defocus_u", "defocus_v")


class DatasetOptics(_Strict):
    """Optics defaults of a dataset (Angstrom, kV, mm, degrees).

    A micrographs STAR's values (``rlnDefocusU/V/Angle``, ``rlnPhaseShift``, and
    the optics group's pixel size, voltage, Cs and amplitude contrast) replace
    these per micrograph; None means "from the STAR file". Each micrograph's
    optics are validated as ``twodtm match``'s (``OpticsConfig``).
    """

    pixel_size: float | None = Field(None, gt=0, description="A (None: from STAR)")
    voltage: float = Field(300.0, gt=0, le=1000, description="kV")
    spherical_aberration: float = Field(2.7, ge=0, description="Cs, mm")
    amplitude_contrast: float = Field(0.07, ge=0, le=1)
    defocus_u: float | None = Field(None, description="A (None: from STAR)")
    defocus_v: float | None = Field(None, description="A (None: from STAR)")
    astigmatism_angle: float = Field(0.0, description="deg")
    phase_shift: float = Field(0.0, description="deg")
    ctf_b_factor: float = Field(0.0, ge=0, description="CTF envelope B-factor, A^2")


class PeakPicking(_Strict):
    """How particles are picked from each micrograph's z-score map.

    The fields of ``twodtm.picking.PeakSettings`` (``twodtm peaks``'s options).
    """

    false_positives: float = Field(
        1.0, gt=0, description="expected noise peaks per micrograph"
    )
    zscore: float | None = Field(None, description="fixed threshold (None: from F)")
    min_distance: float | None = Field(
        None, ge=0, description="px between peaks (None: template radius)"
    )
    border: int | None = Field(None, ge=0, description="px (None: half template)")


class RefineStage(_Strict):
    """The local refinement of each micrograph's picks (``twodtm refine``)."""

    search: LocalSearch = Field(default_factory=lambda: LocalSearch.model_validate({}))
    compute: ParticleCompute = Field(
        default_factory=lambda: ParticleCompute.model_validate({})
    )


class RunConfig(_Strict):
    """Configuration of ``twodtm run``.

    Examples
    --------
    >>> config = RunConfig.model_validate(
    ...     {"micrographs": "CtfFind/job003/micrographs_ctf.star", "template": "m.mrc"}
    ... )
    >>> config.refine.search.iterations, config.peaks.false_positives
    (2, 1.0)
    >>> RunConfig.model_validate(
    ...     {"micrographs": "Mics/*.mrc", "template": "m.mrc"}
    ... )  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for RunConfig
    ...
    """

    micrographs: str = Field(
        min_length=1,
        description="a RELION micrographs STAR (.star) or a quoted glob of MRC files",
    )
    use_config_ctf: bool = Field(
        False,
        description="accept a STAR without CTF columns: every micrograph gets the "
        "optics section's defocus",
    )
    template: str = Field(min_length=1, description="cubic MRC map or atomic model")
    optics: DatasetOptics = Field(
        default_factory=lambda: DatasetOptics.model_validate({})
    )
    defocus_search: DefocusSearch = DefocusSearch()
    pixel_size_search: PixelSizeSearch = PixelSizeSearch()
    orientation_search: OrientationSearch = OrientationSearch()
    preprocessing: Preprocessing = Preprocessing()
    compute: Compute = Compute()
    peaks: PeakPicking = Field(default_factory=lambda: PeakPicking.model_validate({}))
    refine: RefineStage | None = Field(
        default_factory=lambda: RefineStage.model_validate({}),
        description="local refinement of the picks (null: skip it)",
    )
    output: OutputConfig = Field(
        default_factory=lambda: OutputConfig.model_validate({"directory": "twodtm-run"})
    )

    @model_validator(mode="after")
    def _optics_for_a_glob(self) -> RunConfig:
        from_star = self.micrographs.endswith(".star")
        needed: tuple[str, ...] = _GLOB_NEEDS if not from_star else ()
        if from_star and self.use_config_ctf:
            needed = ("defocus_u", "defocus_v")
        missing = [f"optics.{n}" for n in needed if getattr(self.optics, n) is None]
        if missing:
            source = "a STAR without CTF columns" if from_star else "a glob"
            raise ValueError(
                f"micrographs from {source} take {', '.join(missing)} from the "
                "config: give them (or pass a micrographs_ctf.star)"
            )
        return self

    def match_data(self) -> dict[str, Any]:
        """Return the ``twodtm match`` config of every micrograph, as a mapping.

        ``micrograph`` is left empty and the optics hold only the defaults given;
        ``programs.batch.micrograph_config`` fills both per micrograph.
        """
        data = self.model_dump(
            mode="json", exclude={"micrographs", "use_config_ctf", "peaks", "refine"}
        )
        data["micrograph"] = ""
        data["optics"] = {k: v for k, v in data["optics"].items() if v is not None}
        return data

    def with_paths_relative_to(self, base: str | os.PathLike[str]) -> RunConfig:
        """Return a copy whose relative input paths are resolved against ``base``."""
        names = ("micrographs", "template")
        return self.model_copy(
            update={n: _resolved(base, getattr(self, n)) for n in names}
        )


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a ``twodtm run`` YAML; relative paths follow the file."""
    config = parse_config(RunConfig, load_yaml(path), str(path))
    return config.with_paths_relative_to(os.path.dirname(os.fspath(path)) or ".")


__all__ = [
    "DatasetOptics",
    "PeakPicking",
    "RefineStage",
    "RunConfig",
    "load_run_config",
]
