"""The configurations of the particle programs: refine, optimize-template, constrained.

They search locally around particles of a table, on one device
(``ParticleCompute``), and share the optics, preprocessing and output sections of
``twodtm match`` (``twodtm.config.match``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, field_validator, model_validator
from typing_extensions import Self

from twodtm.config._base import _resolved, _Strict, load_yaml, parse_config
from twodtm.config.match import (
    Compute,
    Masking,
    OpticsConfig,
    OutputConfig,
    PixelSizeSearch,
    Preprocessing,
    RangeSearch,
)

_ModelT = TypeVar("_ModelT", bound=BaseModel)
# Keys of a match ``compute`` section that old particle configs carried: two
# renamed, the rest act only in the global search.
_RENAMED = {
    "devices": "compute.device (one device, e.g. cpu or cuda:0)",
    "batch_size": "compute.orientations_per_chunk (orientations per particle in "
    "one chunk)",
}


class ParticleCompute(_Strict):
    """Where a particle program runs and in what pieces.

    The local search runs on one device; the global search's workers, executors,
    checkpoints and precision settings (``Compute``) do not apply.

    Examples
    --------
    >>> ParticleCompute.model_validate({"orientations_per_chunk": 64})
    ParticleCompute(device='cpu', orientations_per_chunk=64)
    """

    device: str = Field(
        "cpu", description='one device: "cpu", "cuda" or "cuda:N"', min_length=1
    )
    orientations_per_chunk: int | Literal["auto"] = Field(
        "auto",
        description="orientations per particle in one chunk of the local search "
        "(auto: sized to the memory budget)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_match_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        old = [key for key in Compute.model_fields if key in data]
        if not old:
            return data
        fixes = [
            f"{key} is now {_RENAMED[key]}"
            if key in _RENAMED
            else f"{key} acts only in twodtm match; remove it"
            for key in old
        ]
        raise ValueError("; ".join(fixes))

    @field_validator("device")
    @classmethod
    def _one_device(cls, value: str) -> str:
        if value.strip().lower() == "all":
            raise ValueError(
                "a particle program runs on one device: name it (cpu or cuda:N)"
            )
        return value.strip()

    @field_validator("orientations_per_chunk")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1 or 'auto', got {value}")
        return value


class LocalOrientationSearch(_Strict):
    """Small rotations composed with each particle's orientation, degrees.

    Tilts about the image x and y axes within ``out_of_plane_range`` and turns
    about the beam within ``in_plane_range``: phi, theta and psi all vary.
    """

    out_of_plane_range: float = Field(3.0, ge=0, le=45, description="largest tilt, deg")
    out_of_plane_step: float = Field(1.0, gt=0, le=45, description="tilt step, deg")
    in_plane_range: float = Field(3.0, ge=0, le=180, description="largest turn, deg")
    in_plane_step: float = Field(1.0, gt=0, le=90, description="in-plane step, deg")


class LocalDefocusSearch(RangeSearch):
    """Defocus offsets from each particle's own defocus, Angstrom."""

    min: float = -300.0
    max: float = 300.0
    step: float = 100.0


class LocalSearch(_Strict):
    """A local search around each particle's pose."""

    orientation: LocalOrientationSearch = Field(
        default_factory=lambda: LocalOrientationSearch.model_validate({})
    )
    defocus: LocalDefocusSearch = Field(
        default_factory=lambda: LocalDefocusSearch.model_validate({})
    )
    pixel_size: PixelSizeSearch = Field(
        default_factory=lambda: PixelSizeSearch.model_validate({})
    )
    max_shift: float = Field(2.0, gt=0, le=64, description="largest move, pixels")
    box_size: int | None = Field(
        None, ge=16, description="box edge, pixels (None: template + CTF spread)"
    )
    iterations: int = Field(
        2, ge=1, le=6, description="passes; each halves the ranges and steps"
    )
    particle_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="most particles searched together on the device (one box size)",
    )


class _ParticleProgram(_Strict):
    """Fields shared by the programs that work on a table of particles."""

    micrograph: str
    template: str
    particles: str = Field(description="STAR or CSV table of particles")
    optics: OpticsConfig
    preprocessing: Preprocessing = Field(
        default_factory=lambda: Preprocessing.model_validate({})
    )
    masking: Masking = Field(
        default_factory=Masking,
        description="where the micrograph holds data: the same mask and automatic "
        "exclusion as the search's, so that the micrograph is whitened as it was "
        "searched",
    )
    compute: ParticleCompute = Field(
        default_factory=lambda: ParticleCompute.model_validate({})
    )

    def with_paths_relative_to(self, base: str | os.PathLike[str]) -> Self:
        """Return a copy whose relative input paths are resolved against ``base``."""
        names = ("micrograph", "template", "particles")
        update: dict[str, Any] = {n: _resolved(base, getattr(self, n)) for n in names}
        update["masking"] = self.masking.with_mask_relative_to(base)
        return self.model_copy(update=update)


class RefineConfig(_ParticleProgram):
    """Configuration of ``twodtm refine`` (particles: a table from ``twodtm peaks``)."""

    search: LocalSearch = Field(default_factory=lambda: LocalSearch.model_validate({}))
    output: OutputConfig = Field(
        default_factory=lambda: OutputConfig.model_validate(
            {"directory": "twodtm-refined"}
        )
    )


class PixelSizeSweepConfig(_Strict):
    """Template pixel sizes tried, as fractions of the nominal pixel size."""

    coarse_range: float = Field(0.05, gt=0, lt=0.5, description="+- fraction")
    coarse_step: float = Field(0.01, gt=0, description="fraction")
    fine_range: float = Field(
        0.01, gt=0, lt=0.5, description="+- fraction around the best"
    )
    fine_step: float = Field(0.002, gt=0, description="fraction")


# A light local refinement at each pixel size of the sweep.
_SWEEP_SEARCH = {
    "orientation": {"out_of_plane_range": 1.0, "in_plane_range": 1.0},
    "defocus": {"enabled": False},
    "max_shift": 1.0,
    "iterations": 1,
}


class OptimizeConfig(_Strict):
    """Configuration of ``twodtm optimize-template``.

    Exactly one of ``template`` (a map, rescaled in Fourier space) and ``model``
    (an atomic model, re-simulated with ttsim3d at each pixel size) is given.
    """

    micrograph: str
    particles: str = Field(description="particles at known poses (refined table)")
    template: str | None = None
    model: str | None = None
    box_size: int | None = Field(None, ge=16, description="model box, voxels")
    nominal_pixel_size: float | None = Field(
        None, gt=0, description="template pixel size to sweep around, A (None: header)"
    )
    optics: OpticsConfig
    sweep: PixelSizeSweepConfig = Field(
        default_factory=lambda: PixelSizeSweepConfig.model_validate({})
    )
    search: LocalSearch = Field(
        default_factory=lambda: LocalSearch.model_validate(_SWEEP_SEARCH)
    )
    preprocessing: Preprocessing = Field(
        default_factory=lambda: Preprocessing.model_validate({})
    )
    masking: Masking = Field(
        default_factory=Masking,
        description="where the micrograph holds data: the same mask and automatic "
        "exclusion as the search's, so that the micrograph is whitened as it was "
        "searched",
    )
    compute: ParticleCompute = Field(
        default_factory=lambda: ParticleCompute.model_validate({})
    )
    output: OutputConfig = Field(
        default_factory=lambda: OutputConfig.model_validate(
            {"directory": "twodtm-optimized"}
        )
    )

    @model_validator(mode="after")
    def _one_template(self) -> OptimizeConfig:
        if (self.template is None) == (self.model is None):
            raise ValueError(
                "give exactly one of template (an MRC map) and model (PDB/mmCIF)"
            )
        if self.model is not None and (
            self.box_size is None or self.nominal_pixel_size is None
        ):
            raise ValueError(
                "a model needs box_size and nominal_pixel_size to simulate maps"
            )
        return self

    def with_paths_relative_to(self, base: str | os.PathLike[str]) -> OptimizeConfig:
        """Return a copy whose relative input paths are resolved against ``base``."""
        names = [
            n
            for n in ("micrograph", "particles", "template", "model")
            if getattr(self, n)
        ]
        update: dict[str, Any] = {n: _resolved(base, getattr(self, n)) for n in names}
        update["masking"] = self.masking.with_mask_relative_to(base)
        return self.model_copy(update=update)


class RelativePose(_Strict):
    """Where particle B sits relative to particle A, in A's map frame.

    ``offset`` is the position of B's map centre in A's map (x, y, z, Angstrom, from
    A's centre); ``orientation`` the ZYZ Euler angles (deg) of the rotation taking
    B's map axes onto A's: a point r of B's map is at ``M r + offset`` in A's map.
    """

    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float] = (0.0, 0.0, 0.0)


class ConstrainedSearch(LocalSearch):
    """Tolerances of the constrained search around each predicted B pose."""

    max_shift: float = Field(
        4.0, gt=0, le=128, description="position tolerance, pixels"
    )
    iterations: int = Field(1, ge=1, le=6)
    false_positives: float = Field(
        1.0, gt=0, description="expected false detections over all A particles"
    )


class ConstrainedConfig(_ParticleProgram):
    """Configuration of ``twodtm constrained`` (template: B's map; particles: A's)."""

    relative_pose: RelativePose
    search: ConstrainedSearch = Field(
        default_factory=lambda: ConstrainedSearch.model_validate({})
    )
    output: OutputConfig = Field(
        default_factory=lambda: OutputConfig.model_validate(
            {"directory": "twodtm-constrained"}
        )
    )


def load_program_config(model: type[_ModelT], path: str | os.PathLike[str]) -> _ModelT:
    """Read and validate a refine/optimize/constrained YAML (paths follow the file)."""
    config = parse_config(model, load_yaml(path), str(path))
    resolve = getattr(config, "with_paths_relative_to", None)
    return resolve(Path(path).parent) if resolve is not None else config


__all__ = [
    "ConstrainedConfig",
    "ConstrainedSearch",
    "LocalDefocusSearch",
    "LocalOrientationSearch",
    "LocalSearch",
    "OptimizeConfig",
    "ParticleCompute",
    "PixelSizeSweepConfig",
    "RefineConfig",
    "RelativePose",
    "load_program_config",
]
