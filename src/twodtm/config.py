"""Pydantic models of every program's YAML, validated once at the edge.

Models reject unknown keys and do no file I/O; the core receives plain values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from twodtm.ctf import Optics
from twodtm.errors import ConfigError
from twodtm.orientations import parse_symmetry
from twodtm.preprocess import FilterSettings

# Plausibility limits of user input (pixel sizes in A, values per range search).
MIN_PIXEL_SIZE = 0.05
MAX_PIXEL_SIZE = 50.0
MAX_RANGE_VALUES = 10_000
MAX_ORIENTATIONS = 100_000_000
_SPHERE_DEG2 = 41_252.96  # area of the unit sphere in square degrees


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OpticsConfig(_Strict):
    """Microscope optics of the micrograph (Angstrom, kV, mm, degrees)."""

    pixel_size: float = Field(gt=0, description="micrograph pixel size, A")
    voltage: float = Field(300.0, gt=0, le=1000, description="acceleration voltage, kV")
    spherical_aberration: float = Field(2.7, ge=0, description="Cs, mm")
    amplitude_contrast: float = Field(0.07, ge=0, le=1)
    defocus_u: float = Field(
        description="defocus along the major axis, A (underfocus > 0)"
    )
    defocus_v: float = Field(description="defocus along the minor axis, A")
    astigmatism_angle: float = Field(0.0, description="angle of defocus_u from x, deg")
    phase_shift: float = Field(0.0, description="phase-plate shift, deg")
    ctf_b_factor: float = Field(0.0, ge=0, description="CTF envelope B-factor, A^2")

    @field_validator("pixel_size")
    @classmethod
    def _plausible_pixel_size(cls, value: float) -> float:
        if not MIN_PIXEL_SIZE <= value <= MAX_PIXEL_SIZE:
            raise ValueError(
                f"{value} A is outside {MIN_PIXEL_SIZE}..{MAX_PIXEL_SIZE} A; give the "
                "pixel size in Angstrom (1 nm = 10 A)"
            )
        return value

    @classmethod
    def from_optics(cls, optics: Optics) -> OpticsConfig:
        """Return the config section describing ``optics``."""
        return cls(
            pixel_size=optics.pixel_size,
            voltage=optics.voltage,
            spherical_aberration=optics.spherical_aberration,
            amplitude_contrast=optics.amplitude_contrast,
            defocus_u=optics.defocus_u,
            defocus_v=optics.defocus_v,
            astigmatism_angle=optics.astigmatism_angle,
            phase_shift=optics.phase_shift,
            ctf_b_factor=optics.b_factor,
        )

    def to_optics(self) -> Optics:
        """Return the plain ``Optics`` value object the core works with."""
        return Optics(
            pixel_size=self.pixel_size,
            voltage=self.voltage,
            spherical_aberration=self.spherical_aberration,
            amplitude_contrast=self.amplitude_contrast,
            defocus_u=self.defocus_u,
            defocus_v=self.defocus_v,
            astigmatism_angle=self.astigmatism_angle,
            phase_shift=self.phase_shift,
            b_factor=self.ctf_b_factor,
        )


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
                raise ValueError(
                    f"max ({self.max}) is below min ({self.min}); swap them"
                )
            count = (self.max - self.min) / self.step + 1
            if count > MAX_RANGE_VALUES:
                raise ValueError(
                    f"step {self.step} gives {count:.3g} values; use a coarser step "
                    f"(at most {MAX_RANGE_VALUES} values)"
                )
        return self

    def offsets(self) -> list[float]:
        """Return the offsets searched ([0.0] when disabled)."""
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

    @model_validator(mode="after")
    def _grid_size(self) -> OrientationSearch:
        # Full-sphere estimate; symmetry only shrinks it.
        views = _SPHERE_DEG2 / self.out_of_plane_step**2
        count = views * 360.0 / self.in_plane_step
        if count > MAX_ORIENTATIONS:
            raise ValueError(
                f"steps of {self.out_of_plane_step} and {self.in_plane_step} deg give "
                f"about {count:.3g} orientations (at most {MAX_ORIENTATIONS:.0e}); "
                "use coarser steps"
            )
        return self


class ModelTemplate(_Strict):
    """How a ``template:`` that is an atomic model (PDB/mmCIF) is simulated.

    ttsim3d simulates the map at the template voxel size (``template_pixel_size``,
    else the micrograph's) and the config's voltage; the map is written into the
    result directory and reused for the same model and settings.
    """

    box_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="box edge, voxels (None: twice the largest atom distance from "
        "the centre plus box_margin on each side, FFT-friendly and even)",
    )
    box_margin: float = Field(
        10.0, ge=0, description="space beyond the outermost atom on each side, A"
    )
    b_factor: float = Field(0.0, ge=0, description="B-factor added to every atom, A^2")
    dose_weighting: bool = Field(
        True, description="weight by the radiation damage of dose_start..dose_end"
    )
    dose_start: float = Field(
        0.0, ge=0, description="first dose of the exposure, e/A^2"
    )
    dose_end: float = Field(30.0, gt=0, description="last dose of the exposure, e/A^2")
    detector_mtf: bool = Field(
        True, description="filter by a K2 (300 kV) detector MTF at the voxel size"
    )

    @model_validator(mode="after")
    def _dose_order(self) -> ModelTemplate:
        if self.dose_end <= self.dose_start:
            raise ValueError(
                f"dose_end ({self.dose_end}) must exceed dose_start "
                f"({self.dose_start}) e/A^2"
            )
        return self


class Preprocessing(_Strict):
    """Outliers, whitening, bandpass and padding of a micrograph (resolutions in A)."""

    whitening: bool = True
    whitening_high_resolution: float | None = Field(None, gt=0)
    bandpass_low_resolution: float | None = Field(None, gt=0)
    bandpass_high_resolution: float | None = Field(None, gt=0)
    bandpass_falloff: float = Field(0.005, gt=0, description="edge width, 1/A")
    contrast_inverted: bool = Field(
        False,
        description="the micrograph was contrast-inverted upstream (protein bright); "
        "false for raw micrographs (protein dark at underfocus)",
    )
    outlier_sigma: float | None = Field(
        5.0,
        ge=3.0,
        description="replace pixels beyond this many sigma of the clipped mean by "
        "that mean before whitening (hot pixels, gold, ice); null keeps all",
    )
    pad_to_fft_friendly: bool = True
    template_padding: float = Field(2.0, ge=1.0, le=4.0)
    template_pixel_size: float | None = Field(
        None, gt=0, description="template voxel size, A (None: read the MRC header)"
    )
    allow_template_resampling: bool = Field(
        False, description="resample a template of another pixel size in Fourier space"
    )
    pad_template_to_cube: bool = Field(
        False, description="pad a non-cubic template to a cube instead of refusing it"
    )
    model_template: ModelTemplate = Field(
        default_factory=lambda: ModelTemplate.model_validate({}),
        description="simulation of a template given as an atomic model",
    )

    def filter_settings(self) -> FilterSettings:
        """Return the whitening and bandpass settings as a plain value object."""
        return FilterSettings(
            whitening=self.whitening,
            whitening_high_resolution=self.whitening_high_resolution,
            bandpass_low_resolution=self.bandpass_low_resolution,
            bandpass_high_resolution=self.bandpass_high_resolution,
            bandpass_falloff=self.bandpass_falloff,
            contrast_inverted=self.contrast_inverted,
            outlier_sigma=self.outlier_sigma,
        )

    @model_validator(mode="after")
    def _band_order(self) -> Preprocessing:
        low, high = self.bandpass_low_resolution, self.bandpass_high_resolution
        if low is not None and high is not None and low <= high:
            raise ValueError(
                f"bandpass_low_resolution ({low} A) must be coarser (larger) than "
                f"bandpass_high_resolution ({high} A); swap them"
            )
        return self


class Compute(_Strict):
    """Where and in what pieces the search runs."""

    devices: str | list[str] = Field(
        "cpu", description='"cpu", "cuda:0", ["cuda:0", ...] or "all"'
    )
    batch_size: int | Literal["auto"] = "auto"
    chunk_size: int | Literal["auto"] = "auto"
    executor: Literal["auto", "in-process", "local", "dask"] = Field(
        "auto", description="auto: dask given a scheduler, local given >1 device/worker"
    )
    workers: int | None = Field(None, ge=1, description="local worker processes")
    scheduler: str | None = Field(None, description="address of a running scheduler")
    checkpoint_interval_minutes: float = Field(
        10.0, ge=0, description="minutes between checkpoints (0: after every chunk)"
    )
    max_retries: int = Field(2, ge=0, description="retries of a failed chunk")
    # Inverse-FFT precision; fp16 needs CUDA and power-of-two (padded) sizes.
    precision: Literal["fp32", "fp16"] = "fp32"
    # Compiled one-pass statistics (same bits); auto: on CUDA and for long CPU runs.
    fused_statistics: bool | Literal["auto"] = "auto"
    # Two defocus maps per complex inverse FFT; auto: on the CPU (1.3-1.7x faster
    # there), not on CUDA; never with fp16. Changes the last bits of the maps.
    paired_transforms: bool | Literal["auto"] = "auto"
    # Checked before the search starts, from the grid's size and a calibration.
    max_hours: float = Field(
        48.0,
        gt=0,
        description="stop before a search estimated to take longer (hours) unless "
        "confirm_long_run",
    )
    confirm_long_run: bool = Field(
        False,
        description="run a search estimated to exceed max_hours or the free memory",
    )

    @field_validator("batch_size", "chunk_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1 or 'auto', got {value}")
        return value

    @model_validator(mode="after")
    def _pairs_are_fp32(self) -> Compute:
        if self.paired_transforms is True and self.precision != "fp32":
            raise ValueError(
                "paired_transforms: true needs precision fp32 (fp16 transforms are "
                "real); set paired_transforms to auto or false"
            )
        return self


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

    @model_validator(mode="after")
    def _physical_offsets(self) -> MatchConfig:
        lowest = min(self.optics.defocus_u, self.optics.defocus_v)
        if self.defocus_search.enabled:
            lowest += self.defocus_search.min
        if lowest <= 0:
            raise ValueError(
                f"optics defocus ({self.optics.defocus_u}, {self.optics.defocus_v} A) "
                f"plus defocus_search.min reaches {lowest} A; defocus is in Angstrom "
                "with underfocus positive: raise defocus_search.min or check the sign"
            )
        pixel = self.optics.pixel_size
        if self.pixel_size_search.enabled and pixel + self.pixel_size_search.min <= 0:
            raise ValueError(
                f"pixel_size_search.min ({self.pixel_size_search.min} A) makes the "
                f"pixel size <= 0 (optics.pixel_size is {pixel} A); raise it"
            )
        return self

    def with_paths_relative_to(self, base: str | os.PathLike[str]) -> MatchConfig:
        """Return a copy whose relative input paths are resolved against ``base``."""
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
        message = item["msg"].removeprefix("Value error, ")
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
        raise ConfigError(
            f"{source}: expected a mapping of keys, found {type(data).__name__}"
        )
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
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; pass the YAML config") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None


def load_match_config(path: str | os.PathLike[str]) -> MatchConfig:
    """Read and validate a ``twodtm match`` YAML; relative paths follow the file."""
    config = parse_config(MatchConfig, load_yaml(path), str(path))
    return config.with_paths_relative_to(Path(path).parent)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs (dotted keys allowed), each value read as YAML."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {pair!r}: write KEY=VALUE, e.g. --set compute.workers=2"
            )
        found[key.strip()] = yaml.safe_load(value)
    return found


def with_overrides(config: ModelT, pairs: list[str]) -> ModelT:
    """Return ``config`` with ``section.key=value`` overrides applied and validated."""
    data = config.model_dump(mode="json")
    for key, value in parse_overrides(pairs).items():
        *sections, leaf = key.split(".")
        node = data
        for name in sections:
            if not isinstance(node.get(name), dict):
                raise ConfigError(f"--set {key}: {name!r} is not a config section")
            node = node[name]
        node[leaf] = value
    return parse_config(type(config), data, "--set options")


def dump_yaml(config: BaseModel) -> str:
    """YAML text of a config that the loader accepts back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# --- refine, optimize-template and constrained search (issue 7) ---------------------


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


def _resolved(base: str | os.PathLike[str], value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else Path(base) / path)


class _ParticleProgram(_Strict):
    """Fields shared by the programs that work on a table of particles."""

    micrograph: str
    template: str
    particles: str = Field(description="STAR or CSV table of particles")
    optics: OpticsConfig
    preprocessing: Preprocessing = Field(
        default_factory=lambda: Preprocessing.model_validate({})
    )
    compute: Compute = Field(default_factory=lambda: Compute.model_validate({}))

    def with_paths_relative_to(self, base: str | os.PathLike[str]) -> Self:
        """Return a copy whose relative input paths are resolved against ``base``."""
        names = ("micrograph", "template", "particles")
        return self.model_copy(
            update={n: _resolved(base, getattr(self, n)) for n in names}
        )


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
    compute: Compute = Field(default_factory=lambda: Compute.model_validate({}))
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
        return self.model_copy(
            update={n: _resolved(base, getattr(self, n)) for n in names}
        )


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


def load_program_config(model: type[ModelT], path: str | os.PathLike[str]) -> ModelT:
    """Read and validate a refine/optimize/constrained YAML (paths follow the file)."""
    config = parse_config(model, load_yaml(path), str(path))
    resolve = getattr(config, "with_paths_relative_to", None)
    return resolve(Path(path).parent) if resolve is not None else config


class SimulateConfig(_Strict):
    """Input of ``twodtm simulate`` (lengths in A unless stated, dose in e/A^2)."""

    template: str = Field(description="atomic model (PDB/mmCIF) or cubic MRC map")
    output: str = "twodtm-simulation"
    optics: OpticsConfig
    image_size: tuple[int, int] = Field((1024, 1024), description="(height, width), px")
    n_particles: int | None = Field(None, ge=0)
    density: float | None = Field(None, ge=0, description="particles per square um")
    dose: float = Field(30.0, gt=0)
    defocus_spread: float = Field(
        100.0, ge=0, description="per-particle defocus std, A"
    )
    gaussian_noise: float = Field(0.0, ge=0, description="extra noise std, counts/px")
    min_separation: float | None = Field(None, gt=0, description="px")
    seed: int = 0
    box_size: int | None = Field(None, ge=8, description="box of a model's map, px")
    simulation_b_factor: float = Field(
        0.0, ge=0, description="extra atom B of the model"
    )
    template_b_factor: float = Field(0.0, ge=0, description="extra B of template.mrc")
    template_resolution: float | None = Field(None, gt=0, description="low-pass, A")

    @model_validator(mode="after")
    def _one_count(self) -> SimulateConfig:
        if (self.n_particles is None) == (self.density is None):
            raise ValueError("give exactly one of n_particles (--particles) or density")
        if min(self.image_size) < 16:
            raise ValueError(f"image_size {self.image_size} is too small (>= 16 px)")
        return self

    def particle_count(self) -> int:
        """Return the particle count, given or from the density per um^2."""
        if self.n_particles is not None:
            return self.n_particles
        area_um2 = (
            self.image_size[0] * self.image_size[1] * self.optics.pixel_size**2 / 1e8
        )
        return int(round(float(self.density or 0.0) * area_um2))
