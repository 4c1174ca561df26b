"""The inputs and engine task of ``twodtm match``, and what fixes its result.

``load_inputs`` reads and checks the micrograph and template once (and the
search mask: a mask file and the automatic exclusion, ``twodtm.masking``),
``build_search_space`` makes the orientations x pixel sizes x defocus offsets,
``prepare_task`` (and ``MatchTaskFactory``, which Dask workers call) builds the
engine on a device, ``search_settings`` lists what determines the result bits (a
checkpoint's fingerprint), and ``decode_maps`` turns the statistics into maps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from twodtm.config import MatchConfig
from twodtm.ctf import Optics
from twodtm.model_template import model_template_settings
from twodtm.orientations import orientation_grid
from twodtm.preprocess import prepare_image, prepare_template
from twodtm.programs.inputs import check_match_inputs, clean_micrograph
from twodtm.search.executors import SearchTask
from twodtm.search.inputs import build_search_inputs
from twodtm.search.memory import padded_size
from twodtm.search.options import (
    RunRequest,
    RunSizes,
    apply_run_options,
    resolve_run_options,
)
from twodtm.search.projection import projection_box
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics

__all__ = [
    "MatchInputs",
    "MatchTaskFactory",
    "build_search_space",
    "decode_maps",
    "load_inputs",
    "prepare_task",
    "search_settings",
]

# Compute settings that change how the search runs but not one bit of its result.
# (fused_statistics is not one: it also compiles the slice sampler, whose slices
# differ from the eager sampler's in float32 rounding.)
_RUN_ONLY = {
    "devices",
    "batch_size",
    "chunk_size",
    "executor",
    "workers",
    "scheduler",
    "checkpoint_interval_minutes",
    "max_retries",
    "max_hours",
    "confirm_long_run",
}


@dataclass(frozen=True)
class MatchInputs:
    """Validated micrograph and template arrays with their optics.

    ``micrograph`` has its outliers replaced already (``replaced_pixels`` of them,
    ``preprocess.replace_outliers``), once on the host, so that every worker
    searches the same image and the count reaches the result. ``searched`` is
    the ``(H, W)`` bool search mask (None: everywhere), from the mask file and
    the automatic exclusion (``programs.inputs.clean_micrograph``); ``prepare_image``
    flattens the excluded pixels on each device.
    """

    micrograph: np.ndarray
    template: np.ndarray
    optics: Optics
    template_pixel_size: float
    replaced_pixels: int = 0
    searched: np.ndarray | None = None

    @property
    def excluded_pixels(self) -> int:
        """Pixels left out of the search (0 without a mask)."""
        if self.searched is None:
            return 0
        return int(self.searched.size - np.count_nonzero(self.searched))


def load_inputs(config: MatchConfig) -> MatchInputs:
    """Read and check the micrograph and template named by ``config``.

    Raises
    ------
    InputFileError, InputDataError
        From ``programs.inputs.check_match_inputs``, the one input policy.
    """
    # An atomic-model template is simulated in memory here; run_match instead
    # caches its map in the result directory (model_template.resolve_model_template).
    checked = check_match_inputs(config, model_template_settings(config))
    clean = clean_micrograph(
        checked.micrograph,
        config.preprocessing.outlier_sigma,
        config.masking,
        config.optics.pixel_size,
        int(checked.template.shape[-1]),
    )
    return MatchInputs(
        micrograph=clean.data,
        template=checked.template,
        optics=config.optics.to_optics(),
        template_pixel_size=checked.template_pixel_size,
        replaced_pixels=clean.replaced_pixels,
        searched=clean.searched,
    )


def build_search_space(
    config: MatchConfig, euler_angles: torch.Tensor | None = None
) -> SearchSpace:
    """Orientations x pixel sizes x defocus offsets from the config.

    ``euler_angles`` ``(N, 3)`` (degrees) replaces the config's orientation grid,
    e.g. with a few angles to time the engine on.
    """
    o = config.orientation_search
    angles = euler_angles
    if angles is None:
        angles = orientation_grid(
            o.in_plane_step, o.out_of_plane_step, o.symmetry, o.base_grid
        )
    pixel_offsets = torch.tensor(
        config.pixel_size_search.offsets(), dtype=torch.float64
    )
    return SearchSpace(
        euler_angles=angles,
        defocus_offsets=torch.tensor(
            config.defocus_search.offsets(), dtype=torch.float64
        ),
        pixel_sizes=config.optics.pixel_size + pixel_offsets,
    )


def decode_maps(
    stats: SearchStatistics, space: SearchSpace, optics: Optics
) -> dict[str, np.ndarray]:
    """Turn merged statistics into the named result maps (CPU, float32)."""
    mean, std = stats.mean_std()
    index = stats.best_index.clamp_min(0)
    orientation, pixel, defocus = space.decode(index)
    angles = space.euler_angles[orientation]
    maps = {
        "mip": stats.mip,
        "zscore": stats.zscore(),
        "phi": angles[..., 0],
        "theta": angles[..., 1],
        "psi": angles[..., 2],
        "defocus": optics.defocus_mean + space.defocus_offsets[defocus],
        "pixel_size": space.pixel_sizes[pixel],
        "mean": mean,
        "std": std,
    }
    return {k: v.to(torch.float32).cpu().numpy() for k, v in maps.items()}


def prepare_task(
    config: MatchConfig,
    inputs: MatchInputs,
    space: SearchSpace,
    device: torch.device,
    total_orientations: int | None = None,
) -> SearchTask:
    """Engine tensors and batching for one device.

    ``total_orientations`` (default: those of ``space``) is the size of the whole
    search, which decides whether the compiled statistics pay off; a calibration
    task holds a few of its orientations only. The template is padded by
    ``config.preprocessing.template_padding`` as it is: ``match_template`` fixed
    it once for the whole search, so no device decides another one.
    """
    image = prepare_image(
        torch.from_numpy(inputs.micrograph).to(device),
        inputs.optics.pixel_size,
        # load_inputs replaced the outliers already
        replace(config.preprocessing.filter_settings(), outlier_sigma=None),
        config.preprocessing.pad_to_fft_friendly,
        searched=None if inputs.searched is None else torch.from_numpy(inputs.searched),
    )
    template = torch.from_numpy(inputs.template).to(device)
    t = int(template.shape[-1])
    padding = config.preprocessing.template_padding
    sizes = RunSizes(
        image_shape=image.shape,
        padded_shape=image.padded_shape,
        template_size=t,
        n_filters=space.n_filters,
        n_orientations=total_orientations or space.n_orientations,
        slice_box=projection_box(template, padded_size(t, padding)),
    )
    compute = config.compute
    request = RunRequest(
        precision=compute.precision,
        fused=compute.fused_statistics,
        paired=compute.paired_transforms,
        batch_size=compute.batch_size,
        template_padding=padding,
        fit_padding=False,
    )
    options = resolve_run_options(request, sizes, device)
    search_inputs = build_search_inputs(
        prepare_template(template, options.template_padding, options.compact_template),
        t,
        image,
        inputs.optics,
        space,
        inputs.template_pixel_size,
        slice_size=options.slice_size,
    )
    search_inputs = apply_run_options(search_inputs, options)
    return SearchTask(
        search_inputs, space.euler_angles, image.shape, options.batch_size
    )


@dataclass(frozen=True)
class MatchTaskFactory:
    """Builds a search's ``SearchTask`` on any device, from the config's paths.

    Small to pickle: Dask workers receive the config and read the inputs themselves
    (a shared file system is assumed); ``inputs`` is only set in-process.
    """

    config: MatchConfig
    key: str
    inputs: MatchInputs | None = None

    def __call__(self, device: torch.device) -> SearchTask:
        """Load the inputs (unless given) and prepare the engine on ``device``."""
        inputs = self.inputs if self.inputs is not None else load_inputs(self.config)
        space = build_search_space(self.config)
        return prepare_task(self.config, inputs, space, device)


def search_settings(config: MatchConfig, inputs: MatchInputs) -> dict[str, Any]:
    """Everything that determines the result bits: a checkpoint must match them.

    The config without input paths, output and run-only compute settings, plus
    SHA-256 digests of the micrograph and template arrays, and of the search
    mask where one is in force (the masking settings act only through it, so an
    unmasked search keeps its fingerprint). Give it the config with the template
    padding the search runs at (``match_template`` fixes it).
    """
    paths = {"micrograph", "template", "output", "masking"}
    settings = config.model_dump(mode="json", exclude=paths)
    settings["compute"] = {
        k: v for k, v in settings["compute"].items() if k not in _RUN_ONLY
    }
    for name in ("micrograph", "template"):
        array = np.ascontiguousarray(getattr(inputs, name))
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        settings[f"{name}_sha256"] = f"{digest}:{array.dtype}:{list(array.shape)}"
    if inputs.searched is not None:
        packed = np.packbits(inputs.searched).tobytes()
        settings["mask_sha256"] = hashlib.sha256(packed).hexdigest()
    return settings
