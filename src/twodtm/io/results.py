"""The result of ``twodtm match``: its maps and a typed record of how they were made.

A result directory holds one MRC file per map (``MAP_NAMES``), ``mask.mrc`` (1
where searched, 0 where excluded) when a search mask was in force, and
``result.json``, the ``MatchMetadata`` record plus the micrograph pixel size.
This module is the one place that writes and reads ``result.json``
(``MatchMetadata.to_json`` and ``MatchMetadata.from_json``); programs read the
record's attributes.

Files written by earlier versions load: fields they did not write take the
defaults documented on ``MatchMetadata`` (``template_size`` None,
``replaced_pixels`` and ``excluded_pixels`` 0, run time NaN); a missing required
field raises ``InputFileError`` naming it.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from twodtm.ctf import Optics
from twodtm.errors import InputFileError
from twodtm.io.atomic import write_text_atomic
from twodtm.io.mrc import read_mrc, write_mrc

__all__ = [
    "MAP_NAMES",
    "MASK_NAME",
    "MatchMetadata",
    "MatchResult",
    "RunRecord",
    "SearchSpaceSummary",
]

MAP_NAMES = (
    "mip",
    "zscore",
    "phi",
    "theta",
    "psi",
    "defocus",
    "pixel_size",
    "mean",
    "std",
)

MASK_NAME = "mask"
"""Map of the search mask (``mask.mrc``: 1 searched, 0 excluded), when one was used."""

_T = TypeVar("_T")


class _MissingFieldError(ValueError):
    """A required field of the record is absent or of the wrong type."""


def _get(doc: Mapping[str, Any], key: str, convert: Callable[[Any], _T]) -> _T:
    """``convert(doc[key])``, naming ``key`` when it is absent or will not convert."""
    if not isinstance(doc, Mapping) or key not in doc:
        raise _MissingFieldError(f"{key!r} is missing")
    try:
        return convert(doc[key])
    except (TypeError, ValueError) as err:
        raise _MissingFieldError(f"{key!r} is unreadable ({err})") from None


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = _get(doc, key, lambda v: v)
    if not isinstance(value, Mapping):
        raise _MissingFieldError(f"{key!r} is not a table")
    return value


@dataclass(frozen=True)
class SearchSpaceSummary:
    """Sizes of the space searched at every pixel (``search_space`` in result.json).

    Attributes
    ----------
    orientations, defocus_values, pixel_sizes : int
        Orientations, defocus offsets and pixel sizes searched.
    correlations_per_pixel : int
        Their product: the number of trials behind each pixel's MIP.
    """

    orientations: int
    defocus_values: int
    pixel_sizes: int
    correlations_per_pixel: int

    def to_json(self) -> dict[str, int]:
        """Return the JSON object of result.json's ``search_space``."""
        return {
            "orientations": self.orientations,
            "defocus_values": self.defocus_values,
            "pixel_sizes": self.pixel_sizes,
            "correlations_per_pixel": self.correlations_per_pixel,
        }

    @classmethod
    def _from_json(cls, doc: Mapping[str, Any]) -> SearchSpaceSummary:
        space = _section(doc, "search_space")
        # the count has been written in both places since the first release
        counted = space if "correlations_per_pixel" in space else doc
        return cls(
            orientations=_get(space, "orientations", int),
            defocus_values=_get(space, "defocus_values", int),
            pixel_sizes=_get(space, "pixel_sizes", int),
            correlations_per_pixel=_get(counted, "correlations_per_pixel", int),
        )


@dataclass(frozen=True)
class RunRecord:
    """Where and how long a search ran.

    Attributes
    ----------
    run_time_s : float
        Wall-clock time of the search, seconds (NaN when not recorded).
    devices : tuple of str
        Devices (or Dask workers) that ran it (empty when not recorded).
    versions : Mapping[str, str]
        Versions of Python and the packages that shape the numbers (empty when not
        recorded).
    """

    run_time_s: float = math.nan
    devices: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)


def _optics(config: Mapping[str, Any]) -> Optics:
    """Read the micrograph optics of a recorded config (``OpticsConfig`` names).

    ``pixel_size``, ``defocus_u`` and ``defocus_v`` are required (the config
    requires them); the rest take the config's defaults where absent.
    """
    section = _section(config, "optics")
    defaults = Optics(pixel_size=1.0)
    optional = {
        "voltage": defaults.voltage,
        "spherical_aberration": defaults.spherical_aberration,
        "amplitude_contrast": defaults.amplitude_contrast,
        "astigmatism_angle": defaults.astigmatism_angle,
        "phase_shift": defaults.phase_shift,
        "ctf_b_factor": defaults.b_factor,
    }
    value = {k: float(section.get(k, v)) for k, v in optional.items()}
    return Optics(
        pixel_size=_get(section, "pixel_size", float),
        voltage=value["voltage"],
        spherical_aberration=value["spherical_aberration"],
        amplitude_contrast=value["amplitude_contrast"],
        defocus_u=_get(section, "defocus_u", float),
        defocus_v=_get(section, "defocus_v", float),
        astigmatism_angle=value["astigmatism_angle"],
        phase_shift=value["phase_shift"],
        b_factor=value["ctf_b_factor"],
    )


@dataclass(frozen=True)
class MatchMetadata:
    """How a ``twodtm match`` result was made: its config, search size and run.

    Attributes
    ----------
    config : Mapping[str, Any]
        The validated ``MatchConfig`` as JSON, kept verbatim; ``micrograph``,
        ``template``, ``optics`` and ``symmetry`` are read from it. It must name
        the micrograph and template and give ``optics.pixel_size``,
        ``optics.defocus_u`` and ``optics.defocus_v``.
    search_space : SearchSpaceSummary
        Sizes of the space searched at every pixel.
    image_shape : tuple of int
        ``(H, W)`` of the searched micrograph, pixels.
    run : RunRecord
        Run time, devices and versions (defaults: not recorded).
    config_yaml : str
        The config as YAML, as the user can load it back (default: empty).
    template_size : int or None
        Template box edge, pixels (None: not recorded, as in early results; read
        the template's MRC header instead).
    replaced_pixels : int
        Outlier pixels replaced before the search (default 0: not recorded).
    excluded_pixels : int
        Pixels left out of the search by the mask file and the automatic
        exclusion (default 0: none, or not recorded by older versions).
    program : str
        The program that wrote the result.

    Examples
    --------
    >>> meta = MatchMetadata(
    ...     config={
    ...         "micrograph": "mic.mrc",
    ...         "template": "t.mrc",
    ...         "optics": {"pixel_size": 1.5, "defocus_u": 9800, "defocus_v": 9600},
    ...     },
    ...     search_space=SearchSpaceSummary(100, 3, 1, 300),
    ...     image_shape=(64, 80),
    ... )
    >>> meta.total_correlations, meta.optics.defocus_mean
    (1536000, 9700.0)
    >>> MatchMetadata.from_json(meta.to_json()) == meta
    True
    """

    config: Mapping[str, Any]
    search_space: SearchSpaceSummary
    image_shape: tuple[int, int]
    run: RunRecord = field(default_factory=RunRecord)
    config_yaml: str = ""
    template_size: int | None = None
    replaced_pixels: int = 0
    excluded_pixels: int = 0
    program: str = "match"

    def __post_init__(self) -> None:
        # Fail at construction, not at the first reader, when the config lacks a
        # field that programs read.
        _ = (self.micrograph, self.template, self.optics)

    @property
    def micrograph(self) -> str:
        """Path of the searched micrograph, as the config gave it."""
        return _get(self.config, "micrograph", str)

    @property
    def template(self) -> str:
        """Path of the template map searched (the cached one for a model)."""
        return _get(self.config, "template", str)

    @property
    def optics(self) -> Optics:
        """Optics of the micrograph (Angstrom, kV, mm, degrees)."""
        return _optics(self.config)

    @property
    def symmetry(self) -> str:
        """Point group of the template (``C1`` when not recorded)."""
        search = self.config.get("orientation_search", {})
        return str(search.get("symmetry", "C1"))

    @property
    def correlations_per_pixel(self) -> int:
        """Trials behind each pixel's MIP (orientations x defocus x pixel sizes)."""
        return self.search_space.correlations_per_pixel

    @property
    def n_pixels(self) -> int:
        """Pixels of the micrograph, ``H * W``."""
        return self.image_shape[0] * self.image_shape[1]

    @property
    def searched_pixels(self) -> int:
        """Pixels searched: ``n_pixels`` less the excluded ones."""
        return self.n_pixels - self.excluded_pixels

    @property
    def excluded_fraction(self) -> float:
        """Share of the micrograph left out of the search, 0..1."""
        return self.excluded_pixels / max(self.n_pixels, 1)

    @property
    def total_correlations(self) -> int:
        """Trials over the searched pixels: the family-wise number of the p-values."""
        return self.correlations_per_pixel * self.searched_pixels

    @property
    def correlations_per_second(self) -> float:
        """Image-sized correlations per second of run time (NaN when not timed)."""
        return self.correlations_per_pixel / max(self.run.run_time_s, 1e-9)

    def to_json(self) -> dict[str, Any]:
        """Return result.json's object (less ``pixel_size``, which the maps own)."""
        return {
            "program": self.program,
            "config": copy.deepcopy(dict(self.config)),
            "config_yaml": self.config_yaml,
            "search_space": self.search_space.to_json(),
            "correlations_per_pixel": self.correlations_per_pixel,
            "total_correlations": self.total_correlations,
            "image_shape": list(self.image_shape),
            "run_time_s": self.run.run_time_s,
            "correlations_per_second": self.correlations_per_second,
            "devices": list(self.run.devices),
            "versions": dict(self.run.versions),
            "template_size": self.template_size,
            "replaced_pixels": self.replaced_pixels,
            "excluded_pixels": self.excluded_pixels,
            "excluded_fraction": self.excluded_fraction,
        }

    @classmethod
    def from_json(
        cls, doc: Mapping[str, Any], source: str = "result.json"
    ) -> MatchMetadata:
        """Read the record from result.json's object ``doc``.

        ``total_correlations`` and ``correlations_per_second`` are derived, not
        read (the first results stored the per-pixel count as the total).

        Raises
        ------
        InputFileError
            A required field is missing or unreadable; the message names it.
        """
        try:
            return cls._parse(doc)
        except (TypeError, ValueError, AttributeError) as err:
            raise InputFileError(
                f"{source}: {err}; it was not written by `twodtm match` or is "
                "damaged: run the search again"
            ) from None

    @classmethod
    def _parse(cls, doc: Mapping[str, Any]) -> MatchMetadata:
        shape = _get(doc, "image_shape", lambda v: tuple(int(n) for n in v))
        if len(shape) != 2:
            raise _MissingFieldError(f"'image_shape' is {list(shape)}, not (H, W)")
        size = doc.get("template_size")
        seconds = doc.get("run_time_s")
        run = RunRecord(
            run_time_s=math.nan if seconds is None else float(seconds),
            devices=tuple(str(d) for d in doc.get("devices", ())),
            versions={str(k): str(v) for k, v in doc.get("versions", {}).items()},
        )
        return cls(
            config=copy.deepcopy(dict(_section(doc, "config"))),
            search_space=SearchSpaceSummary._from_json(doc),
            image_shape=(shape[0], shape[1]),
            run=run,
            config_yaml=str(doc.get("config_yaml", "")),
            template_size=None if size is None else int(size),
            replaced_pixels=int(doc.get("replaced_pixels", 0)),
            excluded_pixels=int(doc.get("excluded_pixels", 0)),
            program=str(doc.get("program", "match")),
        )


@dataclass
class MatchResult:
    """Per-pixel results of ``twodtm match``.

    Attributes
    ----------
    maps : dict[str, np.ndarray]
        ``(H, W)`` float32 maps named in ``MAP_NAMES``: ``mip``, ``zscore`` (the
        scaled MIP), ``phi``/``theta``/``psi`` (deg, ZYZ), ``defocus`` (absolute
        mean defocus, A), ``pixel_size`` (A), ``mean`` and ``std`` of all
        correlations.
    pixel_size : float
        Micrograph pixel size, A.
    metadata : MatchMetadata
        The config, search-space size, run time, devices and versions.
    mask : np.ndarray or None
        ``(H, W)`` bool search mask, True where searched (None: everywhere);
        its False pixels are ``metadata.excluded_pixels``.
    """

    maps: dict[str, np.ndarray]
    pixel_size: float
    metadata: MatchMetadata
    mask: np.ndarray | None = None

    @property
    def searched(self) -> np.ndarray:
        """``(H, W)`` bool, True where the micrograph was searched."""
        if self.mask is None:
            return np.ones(self.maps["zscore"].shape, dtype=bool)
        return np.asarray(self.mask, dtype=bool)

    def __getattr__(self, name: str) -> np.ndarray:
        maps = self.__dict__.get("maps", {})
        if name in maps:
            return maps[name]
        raise AttributeError(name)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write every map and ``result.json`` into ``directory`` (atomically each).

        ``result.json`` marks a complete result: an old one is removed before the
        maps are replaced and the new one is written last, so a crash part-way
        never leaves a directory that loads as a mix of two results.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").unlink(missing_ok=True)
        for name in MAP_NAMES:
            write_mrc(out / f"{name}.mrc", self.maps[name], self.pixel_size)
        mask_file = out / f"{MASK_NAME}.mrc"
        if self.mask is None:
            mask_file.unlink(missing_ok=True)  # an older result's
        else:
            searched = np.asarray(self.mask, dtype=np.float32)
            write_mrc(mask_file, searched, self.pixel_size)
        doc = {**self.metadata.to_json(), "pixel_size": self.pixel_size}
        write_text_atomic(out / "result.json", json.dumps(doc, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> MatchResult:
        """Read a result directory written by ``save``.

        Raises
        ------
        InputFileError
            No or an unreadable ``result.json``, or one that lacks a required
            field (named in the message).
        """
        root = Path(directory)
        meta_file = root / "result.json"
        if not meta_file.is_file():
            raise InputFileError(
                f"{root}: not a twodtm result directory (no result.json); "
                "run `twodtm match` first"
            )
        try:
            doc = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputFileError(f"{meta_file}: unreadable ({err})") from None
        metadata = MatchMetadata.from_json(doc, str(meta_file))
        try:
            pixel_size = _get(doc, "pixel_size", float)
        except _MissingFieldError as err:
            raise InputFileError(f"{meta_file}: {err}; run the search again") from None
        maps = {name: read_mrc(root / f"{name}.mrc").data for name in MAP_NAMES}
        mask = None
        if metadata.excluded_pixels:
            mask = read_mrc(root / f"{MASK_NAME}.mrc").data != 0
        return cls(maps=maps, pixel_size=pixel_size, metadata=metadata, mask=mask)
