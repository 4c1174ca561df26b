"""MatchResult: the maps and metadata of a search, saved as MRC files + result.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twodtm.errors import InputFileError
from twodtm.io.atomic import write_text_atomic
from twodtm.io.mrc import read_mrc, write_mrc

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
    metadata : dict
        The config, search-space sizes, versions, run time and the counts
        ``correlations_per_pixel`` (orientations x defocus values x pixel sizes:
        the number of trials behind each pixel's MIP) and ``total_correlations``
        (that times the pixels searched, the family-wise number of trials).
    """

    maps: dict[str, np.ndarray]
    pixel_size: float
    metadata: dict[str, Any] = field(default_factory=dict)

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
        meta = dict(self.metadata, pixel_size=self.pixel_size)
        write_text_atomic(out / "result.json", json.dumps(meta, indent=2, default=str))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> MatchResult:
        """Read a result directory written by ``save``."""
        root = Path(directory)
        meta_file = root / "result.json"
        if not meta_file.is_file():
            raise InputFileError(
                f"{root}: not a twodtm result directory (no result.json); "
                "run `twodtm match` first"
            )
        try:
            metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputFileError(f"{meta_file}: unreadable ({err})") from None
        maps = {name: read_mrc(root / f"{name}.mrc").data for name in MAP_NAMES}
        pixel_size = float(metadata.get("pixel_size", 1.0))
        return cls(maps=maps, pixel_size=pixel_size, metadata=metadata)
