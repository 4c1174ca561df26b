"""The configuration of ``twodtm match``: optics, search ranges, preprocessing, compute.

The optics, range, preprocessing and output sections are shared with the particle
programs (``twodtm.config.particles``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from twodtm.config._base import _resolved, _Strict, load_yaml, parse_config
from twodtm.ctf import Optics
from twodtm.errors import ConfigError
from twodtm.masking import ExclusionSettings
from twodtm.orientations import parse_symmetry
from twodtm.preprocess import FilterSettings

# Plausibility limits of user input (pixel sizes in A, values per range search).
_MIN_PIXEL_SIZE = 0.05
_MAX_PIXEL_SIZE = 50.0
_MAX_RANGE_VALUES = 10_000
_MAX_ORIENTATIONS = 100_000_000
_SPHERE_DEG2 = 41_252.96  # area of the unit sphere in square degrees


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
        if not _MIN_PIXEL_SIZE <= value <= _MAX_PIXEL_SIZE:
            raise ValueError(
                f"{value} A is outside {_MIN_PIXEL_SIZE}..{_MAX_PIXEL_SIZE} A; give "
                "the pixel size in Angstrom (1 nm = 10 A)"
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
            if count > _MAX_RANGE_VALUES:
                raise ValueError(
                    f"step {self.step} gives {count:.3g} values; use a coarser step "
                    f"(at most {_MAX_RANGE_VALUES} values)"
                )
        return self

    def offsets(self) -> list[float]:
        """Return the offsets searched ([0.0] when disabled).

        Examples
        --------
        >>> RangeSearch(min=-1.0, max=0.5, step=0.5).offsets()
        [-1.0, -0.5, 0.0, 0.5]
        >>> RangeSearch(enabled=False, min=-1.0, max=1.0).offsets()
        [0.0]
        """
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
        if count > _MAX_ORIENTATIONS:
            raise ValueError(
                f"steps of {self.out_of_plane_step} and {self.in_plane_step} deg give "
                f"about {count:.3g} orientations (at most {_MAX_ORIENTATIONS:.0e}); "
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


class Masking(_Strict):
    """Where the micrograph is searched: a mask file and the automatic exclusion.

    Excluded pixels are never picked, do not count among the trials that set the
    false-positive threshold, and are set to the searched pixels' mean before
    whitening (``twodtm.masking``). Lengths in Angstrom.
    """

    mask: str | None = Field(
        None,
        description="MRC mask of the micrograph's shape: search where non-zero "
        "(null: everywhere)",
    )
    auto_exclude: bool = Field(
        True,
        description="exclude carbon, contamination and their edges found from "
        "local statistics at low resolution (excludes nothing on a clean "
        "micrograph, which then searches as without it)",
    )
    resolution: float = Field(
        20.0, gt=0, description="pixel size of the local statistics, A"
    )
    window: float | None = Field(
        None, gt=0, description="side of the local window, A (null: template box)"
    )
    max_deviation: float = Field(
        6.0,
        ge=3.0,
        description="robust sigmas (median/MAD over the micrograph) of a window's "
        "median or deviation beyond which it is excluded, either side",
    )
    dilation: float | None = Field(
        None,
        ge=0,
        description="growth of the excluded region, A (null: the template radius)",
    )

    def with_mask_relative_to(self, base: str | os.PathLike[str]) -> Masking:
        """Return a copy whose relative mask path is resolved against ``base``."""
        if self.mask is None:
            return self
        return self.model_copy(update={"mask": _resolved(base, self.mask)})

    def exclusion_settings(self) -> ExclusionSettings:
        """Return the automatic exclusion's settings as a plain value object."""
        return ExclusionSettings(
            resolution=self.resolution,
            window=self.window,
            max_deviation=self.max_deviation,
            dilation=self.dilation,
        )


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
    # Compiled kernels: the one-pass statistics (same bits) and the slice sampler
    # (slices to float32 rounding of the eager one's); auto: on CUDA and for long
    # CPU runs.
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
    masking: Masking = Masking()
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
        fields: dict[str, object] = {}
        for name in ("micrograph", "template"):
            path = Path(getattr(self, name))
            fields[name] = str(path if path.is_absolute() else root / path)
        fields["masking"] = self.masking.with_mask_relative_to(root)
        return self.model_copy(update=fields)


def load_match_config(path: str | os.PathLike[str]) -> MatchConfig:
    """Read and validate a ``twodtm match`` YAML; relative paths follow the file."""
    config = parse_config(MatchConfig, load_yaml(path), str(path))
    return config.with_paths_relative_to(Path(path).parent)


__all__ = [
    "Compute",
    "DefocusSearch",
    "Masking",
    "MatchConfig",
    "ModelTemplate",
    "OpticsConfig",
    "OrientationSearch",
    "OutputConfig",
    "PixelSizeSearch",
    "Preprocessing",
    "RangeSearch",
    "load_match_config",
]
