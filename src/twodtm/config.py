"""Pydantic models of every program's YAML, validated once at the edge.

Models reject unknown keys and do no file I/O; the core receives plain values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from twodtm.errors import ConfigError
from twodtm.orientations import parse_symmetry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpticsConfig(_Strict):
    """Microscope optics of the micrograph (Angstrom, kV, mm, degrees)."""

    pixel_size: float = Field(gt=0, description="micrograph pixel size, A")
    voltage: float = Field(300.0, gt=0, description="acceleration voltage, kV")
    spherical_aberration: float = Field(2.7, ge=0, description="Cs, mm")
    amplitude_contrast: float = Field(0.07, ge=0, le=1)
    defocus_u: float = Field(description="defocus along the major axis, A (underfocus > 0)")
    defocus_v: float = Field(description="defocus along the minor axis, A")
    astigmatism_angle: float = Field(0.0, description="angle of defocus_u from x, deg")
    phase_shift: float = Field(0.0, description="phase-plate shift, deg")
    ctf_b_factor: float = Field(0.0, ge=0, description="CTF envelope B-factor, A^2")


class RangeSearch(_Strict):
    """An inclusive range of offsets ``min, min + step, ..., max`` or off."""

    enabled: bool = True
    min: float = 0.0
    max: float = 0.0
    step: float = 1.0

    @model_validator(mode="after")
    def _check_range(self) -> RangeSearch:
        if self.enabled:
            if self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step}")
            if self.max < self.min:
                raise ValueError(f"max ({self.max}) is below min ({self.min}); swap them")
        return self

    def offsets(self) -> list[float]:
        """The offsets searched ([0.0] when disabled)."""
        if not self.enabled:
            return [0.0]
        count = int(round((self.max - self.min) / self.step)) + 1
        values = [self.min + k * self.step for k in range(count)]
        return [v for v in values if v <= self.max + 1e-9 * self.step]


class DefocusSearch(RangeSearch):
    """Defocus offsets relative to the micrograph's defocus, Angstrom."""

    min: float = -1200.0
    max: float = 1200.0
    step: float = 200.0


class PixelSizeSearch(RangeSearch):
    """Micrograph pixel-size offsets, Angstrom (off by default)."""

    enabled: bool = False
    min: float = -0.02
    max: float = 0.02
    step: float = 0.01


class OrientationSearch(_Strict):
    """Hopf-fibration grid over the asymmetric unit."""

    in_plane_step: float = Field(1.5, gt=0, le=180, description="psi step, deg")
    out_of_plane_step: float = Field(2.5, gt=0, le=90, description="theta step, deg")
    symmetry: str = "C1"
    base_grid: Literal["uniform", "healpix"] = "uniform"

    @field_validator("symmetry")
    @classmethod
    def _known_symmetry(cls, value: str) -> str:
        try:
            parse_symmetry(value)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return value.strip().upper()


class Preprocessing(_Strict):
    """Whitening, bandpass and padding of the micrograph (resolutions in A)."""

    whitening: bool = True
    whitening_high_resolution: float | None = Field(None, gt=0)
    bandpass_low_resolution: float | None = Field(None, gt=0)
    bandpass_high_resolution: float | None = Field(None, gt=0)
    bandpass_falloff: float = Field(0.005, gt=0, description="edge width, 1/A")
    pad_to_fft_friendly: bool = True
    template_padding: float = Field(2.0, ge=1.0, le=4.0)


class Compute(_Strict):
    """Where and in what pieces the search runs."""

    devices: str | list[str] = Field("cpu", description='"cpu", "cuda:0", ["cuda:0", ...] or "all"')
    batch_size: int | Literal["auto"] = "auto"
    chunk_size: int | Literal["auto"] = "auto"

    @field_validator("batch_size", "chunk_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1 or 'auto', got {value}")
        return value


class OutputConfig(_Strict):
    """Result directory."""

    directory: str = "twodtm-results"
    overwrite: bool = False


class MatchConfig(_Strict):
    """Configuration of ``twodtm match``."""

    micrograph: str
    template: str
    optics: OpticsConfig
    defocus_search: DefocusSearch = DefocusSearch()
    pixel_size_search: PixelSizeSearch = PixelSizeSearch()
    orientation_search: OrientationSearch = OrientationSearch()
    preprocessing: Preprocessing = Preprocessing()
    compute: Compute = Compute()
    output: OutputConfig = OutputConfig()

    def with_paths_relative_to(self, base: str | os.PathLike[str]) -> MatchConfig:
        """A copy whose relative input paths are resolved against ``base``."""
        root = Path(base)
        fields = {}
        for name in ("micrograph", "template"):
            path = Path(getattr(self, name))
            fields[name] = str(path if path.is_absolute() else root / path)
        return self.model_copy(update=fields)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against `twodtm config example`"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_config(model: type[ModelT], data: object, source: str = "config") -> ModelT:
    """Validate ``data`` (already parsed YAML) against ``model``.

    Raises
    ------
    ConfigError
        Naming every invalid field and what is wrong with it.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, found {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_yaml(path: str | os.PathLike[str]) -> object:
    """Read a YAML file, turning I/O and syntax problems into ConfigError."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{file}: cannot read the config ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None


def load_match_config(path: str | os.PathLike[str]) -> MatchConfig:
    """Read and validate a ``twodtm match`` YAML; relative paths follow the file."""
    config = parse_config(MatchConfig, load_yaml(path), str(path))
    return config.with_paths_relative_to(Path(path).parent)


def dump_yaml(config: BaseModel) -> str:
    """YAML text of a config that the loader accepts back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
