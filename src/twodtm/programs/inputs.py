"""The one input and output policy of every program (programs layer), run first.

Every program reads its micrograph with ``read_micrograph``, its template with
``read_template`` and claims its result directory with ``claim_output``. Each
check raises a typed error (``twodtm.errors``) naming the file and the fix.
Three repairs happen only when the config allows or when they are exact:

- a non-cubic template is padded to a cube (``preprocessing.pad_template_to_cube``);
- a template whose voxel size differs from the micrograph pixel size by more than
  1 % (``_PIXEL_SIZE_TOLERANCE``) is resampled in Fourier space
  (``preprocessing.allow_template_resampling``);
- an odd template box is always padded by one voxel to even, on the low side of
  each axis, so the centre voxel ``t // 2`` becomes ``(t + 1) // 2`` and every
  projection is unchanged apart from one extra row and column of background.

Templates are centred at voxel ``t // 2`` along every axis (the convention of
``preprocess.prepare_template``); every repair here keeps that centre.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twodtm.config import Masking, MatchConfig, Preprocessing
from twodtm.errors import InputDataError, OutputExistsError, OutputWriteError
from twodtm.io.mrc import MrcData, read_mrc
from twodtm.masking import auto_exclusion
from twodtm.model_template import ModelTemplateSettings, load_template
from twodtm.preprocess import replace_outliers
from twodtm.programs._repair import pad_to_cube, pad_to_even, resample_volume

# Relative pixel-size difference the engine absorbs by scaling its Fourier slices.
_PIXEL_SIZE_TOLERANCE = 0.01
_MIN_TEMPLATE_SIZE = 8


@dataclass(frozen=True)
class TemplatePolicy:
    """What may be done to a template that does not fit as it is.

    Attributes
    ----------
    pixel_size : float or None
        Template voxel size in Angstrom (an override or the config's); None reads
        it from the MRC header.
    allow_resampling : bool
        Resample a template of another pixel size onto the micrograph's.
    pad_to_cube : bool
        Pad a non-cubic template to a cube instead of refusing it.
    """

    pixel_size: float | None = None
    allow_resampling: bool = False
    pad_to_cube: bool = False


@dataclass(frozen=True)
class CheckedInputs:
    """Micrograph and template that passed every check.

    Attributes
    ----------
    micrograph : np.ndarray
        ``(H, W)`` float32, finite, not constant.
    template : np.ndarray
        ``(t, t, t)`` float32 with t even, finite, not constant, ``t <= min(H, W)``.
    template_pixel_size : float
        Voxel size of ``template`` in Angstrom, within 1 % of the micrograph
        pixel size.
    """

    micrograph: np.ndarray
    template: np.ndarray
    template_pixel_size: float


def check_signal(data: np.ndarray, name: str) -> None:
    """Refuse NaN or Inf values and constant data.

    Raises
    ------
    InputDataError
        Naming ``name``, the number of bad values, and what to do.
    """
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InputDataError(
            f"{name}: {bad} NaN or Inf values; mask or repair them before the search."
        )
    if float(data.std(dtype=np.float64)) == 0.0:
        raise InputDataError(
            f"{name}: every value is {data.flat[0]}; it holds no signal."
        )


def check_micrograph(data: np.ndarray, name: str) -> np.ndarray:
    """Return a 2D, finite, non-constant micrograph as float32, else raise.

    Examples
    --------
    >>> check_micrograph(np.arange(6.0).reshape(2, 3), "mic.mrc").dtype
    dtype('float32')
    >>> check_micrograph(np.zeros((2, 2, 2)), "mic.mrc")
    Traceback (most recent call last):
    ...
    twodtm.errors.InputDataError: mic.mrc: expected a 2D micrograph, found shape ...
    """
    if data.ndim != 2:
        raise InputDataError(
            f"{name}: expected a 2D micrograph, found shape {data.shape}; pass a "
            "single summed, motion-corrected image (not a movie or a volume)."
        )
    check_signal(data, name)
    return np.asarray(data, dtype=np.float32)


def _template_pixel_size(
    header_pixel_size: float,
    micrograph_pixel_size: float | None,
    policy: TemplatePolicy,
    name: str = "template",
) -> float:
    """Template voxel size: the policy's, else the header's, else the micrograph's.

    A header without a pixel size (0) is taken to match the micrograph.

    Raises
    ------
    InputDataError
        Neither the policy nor the header gives a size and there is no micrograph
        pixel size to fall back on.

    Examples
    --------
    >>> _template_pixel_size(0.0, 1.3, TemplatePolicy())
    1.3
    >>> _template_pixel_size(1.1, 1.3, TemplatePolicy(pixel_size=1.2))
    1.2
    """
    if policy.pixel_size is not None:
        return policy.pixel_size
    if header_pixel_size > 0:
        return header_pixel_size
    if micrograph_pixel_size is None:
        raise InputDataError(
            f"{name}: the MRC header holds no pixel size; set "
            "preprocessing.template_pixel_size."
        )
    return micrograph_pixel_size


def _cube(volume: np.ndarray, name: str, policy: TemplatePolicy) -> np.ndarray:
    if volume.ndim != 3:
        raise InputDataError(
            f"{name}: the template must be a 3D map, found shape {volume.shape}; "
            "pass the template volume (are micrograph and template swapped?)."
        )
    if len(set(volume.shape)) == 1:
        return volume
    if not policy.pad_to_cube:
        raise InputDataError(
            f"{name}: the template must be a cube, found shape {volume.shape}; set "
            "preprocessing.pad_template_to_cube: true to pad it, or pad it yourself."
        )
    return pad_to_cube(volume)


def _same_pixel_size(
    volume: np.ndarray, pixel_size: float, target: float, name: str, allow: bool
) -> tuple[np.ndarray, float]:
    if abs(pixel_size - target) <= _PIXEL_SIZE_TOLERANCE * target:
        return volume, pixel_size
    if not allow:
        raise InputDataError(
            f"{name}: template voxel size {pixel_size:.4g} A differs from the "
            f"micrograph pixel size {target:.4g} A; set "
            "preprocessing.allow_template_resampling: true to resample it in Fourier "
            "space, or set preprocessing.template_pixel_size if the header is wrong."
        )
    return resample_volume(volume, pixel_size, target)


def check_template(
    template: MrcData,
    name: str,
    micrograph_pixel_size: float | None,
    policy: TemplatePolicy,
) -> tuple[np.ndarray, float]:
    """Check and, where allowed, repair a template for a micrograph.

    Parameters
    ----------
    template : MrcData
        The template as read from disk (not modified).
    name : str
        File name used in messages.
    micrograph_pixel_size : float or None
        Angstrom per micrograph pixel; the template's voxel size must match it
        (or is resampled onto it). None keeps the template's own voxel size, for
        programs that scale their projections to it (the particle programs).
    policy : TemplatePolicy
        Which repairs are allowed.

    Returns
    -------
    tuple[np.ndarray, float]
        ``(t, t, t)`` float32 template with t even, and its voxel size in A.

    Raises
    ------
    InputDataError
        Not 3D, not cubic (padding not allowed), NaN/Inf or constant values,
        another pixel size (resampling not allowed), or too small.
    """
    volume = _cube(template.data, name, policy)
    check_signal(volume, name)
    pixel_size = _template_pixel_size(
        template.pixel_size, micrograph_pixel_size, policy, name
    )
    if micrograph_pixel_size is not None:
        volume, pixel_size = _same_pixel_size(
            volume, pixel_size, micrograph_pixel_size, name, policy.allow_resampling
        )
    if volume.shape[0] < _MIN_TEMPLATE_SIZE:
        raise InputDataError(
            f"{name}: the template box is {volume.shape[0]} voxels; at least "
            f"{_MIN_TEMPLATE_SIZE} are needed, check the file and its pixel size."
        )
    return pad_to_even(volume), pixel_size


def template_policy(
    fields: Preprocessing, pixel_size: float | None = None
) -> TemplatePolicy:
    """Template repairs a ``preprocessing`` section allows.

    ``pixel_size`` (Angstrom) overrides the section's ``template_pixel_size``.

    Examples
    --------
    >>> fields = Preprocessing(pad_template_to_cube=True, template_pixel_size=1.1)
    >>> template_policy(fields)
    TemplatePolicy(pixel_size=1.1, allow_resampling=False, pad_to_cube=True)
    >>> template_policy(fields, pixel_size=1.2).pixel_size
    1.2
    """
    return TemplatePolicy(
        pixel_size=fields.template_pixel_size if pixel_size is None else pixel_size,
        allow_resampling=fields.allow_template_resampling,
        pad_to_cube=fields.pad_template_to_cube,
    )


def read_micrograph(path: str | os.PathLike[str]) -> MrcData:
    """Read a micrograph and check it: 2D, finite, not constant.

    Parameters
    ----------
    path : str or PathLike
        MRC file of one summed, motion-corrected image.

    Returns
    -------
    MrcData
        ``(H, W)`` float32 data and the header's pixel size (A, 0 when none).

    Raises
    ------
    InputFileError
        The file is missing, truncated or not an MRC file (``io.mrc.read_mrc``).
    InputDataError
        Not 2D, NaN/Inf values or constant; the message names the file.
    """
    mrc = read_mrc(path)
    return MrcData(check_micrograph(mrc.data, str(path)), mrc.pixel_size)


def read_mask(path: str | os.PathLike[str], shape: tuple[int, int]) -> np.ndarray:
    """Read a search mask: an MRC image of the micrograph's shape, non-zero = search.

    Parameters
    ----------
    path : str or PathLike
        MRC file (2D, or 3D with one section).
    shape : tuple of int
        ``(H, W)`` of the micrograph it masks.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, True where the micrograph is searched.

    Raises
    ------
    InputFileError
        The file is missing, truncated or not an MRC file.
    InputDataError
        Another shape, NaN/Inf values, or nothing left to search; the message
        names the file.
    """
    data = read_mrc(path).data
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if tuple(data.shape) != tuple(shape):
        raise InputDataError(
            f"{path}: the mask has shape {data.shape}, the micrograph {tuple(shape)}; "
            "give a mask of the micrograph's shape (rows, columns), non-zero where "
            "it is searched."
        )
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InputDataError(
            f"{path}: {bad} NaN or Inf values in the mask; write 0 (exclude) or 1."
        )
    searched = data != 0
    if not searched.any():
        raise InputDataError(
            f"{path}: the mask is zero everywhere, so nothing would be searched; "
            "non-zero marks the pixels to search."
        )
    return searched


@dataclass(frozen=True)
class CleanMicrograph:
    """A micrograph with its outliers replaced, and where it is searched.

    Attributes
    ----------
    data : np.ndarray
        ``(H, W)`` micrograph, ``replaced_pixels`` outliers replaced
        (``preprocess.replace_outliers``).
    replaced_pixels : int
        Outliers replaced (0 when ``preprocessing.outlier_sigma`` is null).
    searched : np.ndarray or None
        ``(H, W)`` bool search mask (the mask file and the automatic
        exclusion); None: everywhere.
    """

    data: np.ndarray
    replaced_pixels: int
    searched: np.ndarray | None


def clean_micrograph(
    data: np.ndarray,
    outlier_sigma: float | None,
    masking: Masking,
    pixel_size: float,
    template_size: int,
) -> CleanMicrograph:
    """Replace a micrograph's outliers, then find where it is searched.

    What every program does to a micrograph before ``preprocess.prepare_image``
    (given the mask as ``searched`` and ``outlier_sigma`` null), so that the
    search and the local searches after it whiten the same image.
    """
    replaced = 0
    if outlier_sigma is not None:
        cleaned, replaced = replace_outliers(torch.from_numpy(data), outlier_sigma)
        data = cleaned.numpy()
    searched = _search_mask(masking, data, pixel_size, template_size)
    return CleanMicrograph(data, replaced, searched)


def _search_mask(
    masking: Masking, micrograph: np.ndarray, pixel_size: float, template_size: int
) -> np.ndarray | None:
    """Combine the mask file with the automatic exclusion (None: search all).

    The one mask of a micrograph: the search and the local searches after it
    whiten the same image (``preprocess.prepare_image``'s ``searched``). The
    exclusion is computed on ``micrograph`` as given: pass it with its outliers
    replaced, so that one hot pixel is not a local-mean outlier.

    Parameters
    ----------
    masking : Masking
        The config's ``masking`` section.
    micrograph : np.ndarray
        ``(H, W)`` micrograph, outliers replaced.
    pixel_size : float
        Micrograph pixel size, Angstrom.
    template_size : int
        Template box t, pixels (the exclusion's window and dilation).

    Returns
    -------
    np.ndarray or None
        ``(H, W)`` bool, True where searched; None when nothing is excluded.
    """
    shape = (int(micrograph.shape[0]), int(micrograph.shape[1]))
    searched = np.ones(shape, dtype=bool)
    if masking.mask is not None:
        searched = read_mask(masking.mask, shape)
    if masking.auto_exclude:
        excluded = auto_exclusion(
            micrograph, pixel_size, template_size, masking.exclusion_settings()
        )
        searched = searched & ~excluded
    if searched.all():
        return None
    return searched


def read_template(
    path: str | os.PathLike[str],
    policy: TemplatePolicy,
    micrograph_pixel_size: float | None = None,
    model: ModelTemplateSettings | None = None,
) -> MrcData:
    """Read a template (MRC map or atomic model) and check it (``check_template``).

    Parameters
    ----------
    path : str or PathLike
        MRC map, or PDB/mmCIF model simulated with ``model``
        (``model_template.load_template``).
    policy : TemplatePolicy
        Voxel size override and the repairs allowed.
    micrograph_pixel_size : float or None
        Angstrom per micrograph pixel, which the voxel size must match; None keeps
        the template's own voxel size (then a header without one needs
        ``policy.pixel_size``).
    model : ModelTemplateSettings, optional
        How an atomic model is simulated (required for one).

    Returns
    -------
    MrcData
        ``(t, t, t)`` float32 template with t even, and its voxel size in A.

    Raises
    ------
    ConfigError
        An atomic model without ``model``.
    InputFileError, InputDataError
        An unreadable or unusable file; the message names it and the fix.
    """
    volume, pixel_size = check_template(
        load_template(path, model), str(path), micrograph_pixel_size, policy
    )
    return MrcData(volume, pixel_size)


def check_match_inputs(
    config: MatchConfig, model: ModelTemplateSettings | None = None
) -> CheckedInputs:
    """Read and check the micrograph and template of ``twodtm match`` together.

    ``model`` simulates a template that is an atomic model.

    Raises
    ------
    InputFileError, InputDataError
        For any unusable input; the message names the file and the fix.
    """
    image = read_micrograph(config.micrograph).data
    template = read_template(
        config.template,
        template_policy(config.preprocessing),
        config.optics.pixel_size,
        model,
    )
    volume = template.data
    if volume.shape[0] > min(image.shape):
        raise InputDataError(
            f"{config.template}: the template box ({volume.shape[0]} px at the "
            f"micrograph pixel size) is larger than the micrograph {image.shape}; "
            "crop the template or use a larger micrograph."
        )
    return CheckedInputs(
        micrograph=image, template=volume, template_pixel_size=template.pixel_size
    )


def check_output_writable(directory: str | os.PathLike[str]) -> Path:
    """Check, without writing anything, that results can be written to ``directory``.

    Raises
    ------
    OutputWriteError
        The path is a file, or the directory (or its nearest existing parent, where
        it would be created) is not writable.
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise OutputWriteError(
            f"{out}: is a file, not a directory; choose another output directory."
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputWriteError(
            f"{existing}: not writable, so the results could not be saved in {out}; "
            "choose another output directory."
        )
    return out


def claim_output(
    directory: str | os.PathLike[str], marker: str, overwrite: bool
) -> Path:
    """Check that a new result may be written to ``directory``; nothing is written.

    Parameters
    ----------
    directory : str or PathLike
        The result directory (it need not exist yet).
    marker : str
        The file whose presence means a result is there (``result.json``,
        ``particles.star``).
    overwrite : bool
        Allow replacing an existing result (``--overwrite``, ``output.overwrite``).

    Returns
    -------
    Path
        ``directory``.

    Raises
    ------
    OutputExistsError
        ``marker`` exists there and ``overwrite`` is false.
    OutputWriteError
        The place is a file or not writable (``check_output_writable``).

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> claim_output(tmp, "result.json", overwrite=False) == Path(tmp)
    True
    >>> _ = (Path(tmp) / "result.json").write_text("{}")
    >>> claim_output(tmp, "result.json", overwrite=True) == Path(tmp)
    True
    >>> claim_output(tmp, "result.json", overwrite=False)
    Traceback (most recent call last):
    ...
    twodtm.errors.OutputExistsError: ...: holds a result already (result.json); ...
    >>> import shutil
    >>> shutil.rmtree(tmp)
    """
    out = check_output_writable(directory)
    if (out / marker).exists() and not overwrite:
        raise OutputExistsError(
            f"{out}: holds a result already ({marker}); pass --overwrite (or "
            "output.overwrite: true) or choose another --output directory."
        )
    return out


__all__ = [
    "CheckedInputs",
    "CleanMicrograph",
    "TemplatePolicy",
    "check_match_inputs",
    "check_micrograph",
    "check_output_writable",
    "check_signal",
    "check_template",
    "claim_output",
    "clean_micrograph",
    "read_mask",
    "read_micrograph",
    "read_template",
    "template_policy",
]
