"""Templates from atomic models: ``template: model.cif`` in any program.

A template path that names an atomic model (PDB or mmCIF, gzipped or not) is
simulated with ttsim3d (``simulate.map_from_model``) at the template voxel size
and the micrograph's voltage. The box is cubic and even: twice the largest
distance of an atom from the atoms' mean position, plus a margin on each side,
rounded up to an FFT-friendly size (or the configured ``box_size``).

Conventions are those of an MRC template of the same model (e.g. written by
``ttsim3d-cli``): the map is indexed ``[z, y, x]`` with the atoms' x along the
last axis, and the atoms' mean position sits on voxel ``t // 2`` of every axis,
the rotation centre of the search (``preprocess.prepare_template``).

The detector MTF (K2, 300 kV) is applied to the final map in its own inverse
voxels. ttsim3d would apply it at the finer simulation voxel (``map_from_model``
simulates at ``pixel_size / ceil(pixel_size)`` and bins), which for a 4 A
template would be the MTF of a detector with 1 A pixels.

Simulated maps are cached as ``template_<model>_<key>.mrc`` (plus a ``.json``
describing them) in a directory, normally the result directory, where ``key``
hashes the model's (decompressed) bytes and every setting that changes the map;
the same model and settings reuse the file instead of simulating again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch_fourier_filter.mtf import make_mtf_grid
from ttsim3d.models import SimulatorConfig
from ttsim3d.pdb_handler import load_model
from typing_extensions import Self

from twodtm.config import OpticsConfig, Preprocessing
from twodtm.errors import ConfigError, InputFileError
from twodtm.io.atomic import write_text_atomic
from twodtm.io.mrc import MrcData, read_mrc, write_mrc
from twodtm.preprocess import fft_friendly_size
from twodtm.simulate import map_from_model

_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
# Change when the recipe below changes, so that older cached maps are not reused.
_RECIPE = 1
_MTF_REFERENCE = "k2_300kv"


@dataclass(frozen=True)
class ModelTemplateSettings:
    """Everything that determines a map simulated from an atomic model.

    Attributes
    ----------
    pixel_size : float
        Voxel size of the map, Angstrom.
    voltage : float
        Acceleration voltage, kV.
    box_size : int or None
        Box edge in voxels; None sizes it from the model's extent.
    box_margin : float
        Space beyond the outermost atom on each side, Angstrom (automatic box).
    b_factor : float
        B-factor added to every atom, A^2.
    dose_weighting : bool
        Weight by radiation damage over ``dose_start``..``dose_end`` (ttsim3d's
        Grant & Grigorieff 2015 critical exposure).
    dose_start, dose_end : float
        Exposure range, e/A^2.
    detector_mtf : bool
        Multiply by the K2 (300 kV) detector MTF at ``pixel_size``.
    """

    pixel_size: float
    voltage: float = 300.0
    box_size: int | None = None
    box_margin: float = 10.0
    b_factor: float = 0.0
    dose_weighting: bool = True
    dose_start: float = 0.0
    dose_end: float = 30.0
    detector_mtf: bool = True


class _TemplateProgram(Protocol):
    """A program config with a template path, optics and preprocessing."""

    @property
    def template(self) -> str | None: ...
    @property
    def optics(self) -> OpticsConfig: ...
    @property
    def preprocessing(self) -> Preprocessing: ...
    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Self: ...


_ConfigT = TypeVar("_ConfigT", bound=_TemplateProgram)


def is_atomic_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a PDB/mmCIF model (by suffix; ``.gz`` allowed)."""
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith(_MODEL_SUFFIXES)


def model_template_settings(
    config: _TemplateProgram, pixel_size: float | None = None
) -> ModelTemplateSettings:
    """Return the model-template settings of a program config.

    The voxel size is ``pixel_size`` if given, else
    ``preprocessing.template_pixel_size``, else the micrograph pixel size.
    """
    p = config.preprocessing
    fields = p.model_template
    return ModelTemplateSettings(
        pixel_size=pixel_size or p.template_pixel_size or config.optics.pixel_size,
        voltage=config.optics.voltage,
        box_size=fields.box_size,
        box_margin=fields.box_margin,
        b_factor=fields.b_factor,
        dose_weighting=fields.dose_weighting,
        dose_start=fields.dose_start,
        dose_end=fields.dose_end,
        detector_mtf=fields.detector_mtf,
    )


def _check_model(path: Path) -> None:
    if not path.is_file():
        raise InputFileError(f"{path}: atomic model not found; check the path.")


def model_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the model's content (of the decompressed bytes for ``.gz``)."""
    file = Path(path)
    _check_model(file)
    opener = gzip.open if file.name.lower().endswith(".gz") else open
    digest = hashlib.sha256()
    try:
        with opener(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError) as err:
        raise InputFileError(f"{file}: cannot read the atomic model ({err})") from None
    return digest.hexdigest()


def model_radius(path: str | os.PathLike[str]) -> float:
    """Largest distance of an atom from the atoms' mean position, Angstrom.

    The atoms are read as ttsim3d reads them (gemmi, through ``mmdf``), and centred
    as ttsim3d centres them, on their unweighted mean.
    """
    file = Path(path)
    _check_model(file)
    try:
        atoms, _, _ = load_model(file, center_atoms=True)
    except (RuntimeError, ValueError, OSError) as err:
        raise InputFileError(
            f"{file}: not a readable PDB/mmCIF model ({err}); check the file."
        ) from None
    if atoms.shape[0] == 0:
        raise InputFileError(f"{file}: the model holds no atoms.")
    return float(atoms.to(torch.float64).norm(dim=1).max())


def box_size_for(radius: float, pixel_size: float, margin: float) -> int:
    """Even FFT-friendly box edge (voxels) holding a sphere of ``radius`` + margin.

    Parameters
    ----------
    radius : float
        Largest atom distance from the centre, Angstrom.
    pixel_size : float
        Voxel size, Angstrom.
    margin : float
        Space on each side beyond ``radius``, Angstrom.
    """
    return fft_friendly_size(math.ceil((2.0 * (radius + margin)) / pixel_size))


def _box(path: Path, settings: ModelTemplateSettings) -> int:
    if settings.box_size is not None:
        return settings.box_size + settings.box_size % 2
    return box_size_for(model_radius(path), settings.pixel_size, settings.box_margin)


def _cache_key(digest: str, settings: ModelTemplateSettings, box_size: int) -> str:
    """16 hex digits naming a simulated map: model content, settings, versions."""
    fields = {
        "model_sha256": digest,
        "settings": asdict(settings) | {"box_size": box_size},
        "recipe": _RECIPE,
        "ttsim3d": metadata.version("ttsim3d"),
    }
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply_detector_mtf(volume: torch.Tensor) -> torch.Tensor:
    """Return a copy of a cubic map filtered by the K2 (300 kV) MTF in its voxels.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` real map (not modified).

    Returns
    -------
    torch.Tensor
        ``(t, t, t)`` float32.
    """
    frequencies, amplitudes = SimulatorConfig(mtf_reference=_MTF_REFERENCE).mtf_tensors
    t = int(volume.shape[-1])
    shape = (t, t, t)
    mtf = make_mtf_grid(shape, frequencies, amplitudes, rfft=True, fftshift=False)
    dft = torch.fft.rfftn(volume.to(torch.float64), dim=(-3, -2, -1))
    filtered = torch.fft.irfftn(dft * mtf.to(torch.float64), s=shape, dim=(-3, -2, -1))
    return filtered.to(torch.float32)


def simulate_model(
    path: str | os.PathLike[str], settings: ModelTemplateSettings, box_size: int
) -> np.ndarray:
    """Simulate a model's map with ttsim3d (no cache).

    Returns
    -------
    np.ndarray
        ``(box_size,) * 3`` float32 map indexed ``[z, y, x]``, atoms' mean at voxel
        ``box_size // 2``, in ttsim3d's units (z-sums are phase shifts, radians).
    """
    filters = SimulatorConfig(
        apply_dose_weighting=settings.dose_weighting,
        dose_start=settings.dose_start,
        dose_end=settings.dose_end,
        apply_dqe=False,  # applied below at the final voxel size
        mtf_reference=_MTF_REFERENCE,
    )
    volume = map_from_model(
        path,
        settings.pixel_size,
        box_size,
        settings.b_factor,
        settings.voltage,
        filters=filters,
    )
    if settings.detector_mtf:
        volume = apply_detector_mtf(volume)
    return volume.numpy()


def _cached(path: Path, box_size: int, pixel_size: float) -> MrcData | None:
    """Return the cached map at ``path`` if it is whole and of the expected size."""
    if not path.is_file():
        return None
    try:
        mrc = read_mrc(path)
    except InputFileError:
        return None
    if mrc.data.shape != (box_size,) * 3 or not np.isfinite(mrc.data).all():
        return None
    if abs(mrc.pixel_size - pixel_size) > 1e-4 * pixel_size:
        return None
    return MrcData(mrc.data, pixel_size)


def model_template_map(
    path: str | os.PathLike[str],
    settings: ModelTemplateSettings,
    cache_dir: str | os.PathLike[str],
) -> Path:
    """Path of the model's simulated map in ``cache_dir``, simulating it if absent.

    Writes ``template_<model>_<key>.mrc`` and a ``.json`` beside it (model path and
    SHA-256, settings, box) atomically; a valid map already there is reused.
    """
    model = Path(path)
    box = _box(model, settings)
    digest = model_digest(model)
    stem = model.name.split(".")[0] or "model"
    key = _cache_key(digest, settings, box)
    target = Path(cache_dir) / f"template_{stem}_{key}.mrc"
    if _cached(target, box, settings.pixel_size) is None:
        write_mrc(target, simulate_model(model, settings, box), settings.pixel_size)
        record = {
            "model": str(model),
            "model_sha256": digest,
            "box_size": box,
            "settings": asdict(settings),
            "ttsim3d": metadata.version("ttsim3d"),
        }
        write_text_atomic(target.with_suffix(".json"), json.dumps(record, indent=1))
    return target


def load_template(
    path: str | os.PathLike[str],
    settings: ModelTemplateSettings | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> MrcData:
    """Read a template: an MRC map as it is, an atomic model as its simulated map.

    Parameters
    ----------
    path : str or PathLike
        MRC map, or PDB/mmCIF model (``.gz`` allowed).
    settings : ModelTemplateSettings, optional
        How to simulate a model (required for one).
    cache_dir : str or PathLike, optional
        Where simulated maps are kept and reused; None simulates in memory.

    Returns
    -------
    MrcData
        ``[z, y, x]`` float32 data and the voxel size (the header's for a map,
        ``settings.pixel_size`` for a model).

    Raises
    ------
    ConfigError
        A model without settings.
    InputFileError
        The file is missing or unreadable.
    """
    if not is_atomic_model(path):
        return read_mrc(path)
    if settings is None:
        raise ConfigError(
            f"{path}: an atomic-model template needs the micrograph's pixel size and "
            "voltage to be simulated; pass ModelTemplateSettings"
        )
    if cache_dir is None:
        box = _box(Path(path), settings)
        return MrcData(simulate_model(path, settings, box), settings.pixel_size)
    return read_mrc(model_template_map(path, settings, cache_dir))


def resolve_model_template(
    config: _ConfigT,
    directory: str | os.PathLike[str],
    pixel_size: float | None = None,
) -> _ConfigT:
    """Return ``config`` with a model template replaced by its map in ``directory``.

    A config whose template is not an atomic model (or is None) is returned as it
    is. Otherwise the map is simulated (or reused) in ``directory`` and the copy's
    ``template`` names it, so that every later step (workers, checkpoints, the
    result's config) sees an MRC map. ``pixel_size`` overrides the voxel size (see
    ``model_template_settings``).
    """
    template = config.template
    if template is None or not is_atomic_model(template):
        return config
    settings = model_template_settings(config, pixel_size)
    path = model_template_map(template, settings, directory)
    return config.model_copy(update={"template": str(path)})


__all__ = [
    "ModelTemplateSettings",
    "apply_detector_mtf",
    "box_size_for",
    "is_atomic_model",
    "load_template",
    "model_digest",
    "model_radius",
    "model_template_map",
    "model_template_settings",
    "resolve_model_template",
    "simulate_model",
]
