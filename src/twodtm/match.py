"""``twodtm match``: load, validate, search, decode and save."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from twodtm.config import MatchConfig, dump_yaml
from twodtm.ctf import Optics
from twodtm.devices import resolve_devices
from twodtm.errors import InputDataError, OutputExistsError
from twodtm.io.mrc import read_mrc
from twodtm.io.results import MatchResult
from twodtm.orientations import orientation_grid
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search.engine import build_search_inputs
from twodtm.search.executors import InProcessExecutor, SearchTask, merge_all
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics

ProgressHook = Callable[[int, int], None]
_VERSIONED = ("twodtm", "torch", "torch-fourier-slice", "torch-ctf", "torch-so3", "numpy")


@dataclass(frozen=True)
class MatchInputs:
    """Validated micrograph and template arrays with their optics."""

    micrograph: np.ndarray
    template: np.ndarray
    optics: Optics
    template_pixel_size: float


def optics_from_config(config: MatchConfig) -> Optics:
    """Plain optics value object from the validated config."""
    o = config.optics
    return Optics(
        pixel_size=o.pixel_size,
        voltage=o.voltage,
        spherical_aberration=o.spherical_aberration,
        amplitude_contrast=o.amplitude_contrast,
        defocus_u=o.defocus_u,
        defocus_v=o.defocus_v,
        astigmatism_angle=o.astigmatism_angle,
        phase_shift=o.phase_shift,
        b_factor=o.ctf_b_factor,
    )


def filter_settings(config: MatchConfig) -> FilterSettings:
    """Whitening and bandpass settings from the config."""
    p = config.preprocessing
    return FilterSettings(
        whitening=p.whitening,
        whitening_high_resolution=p.whitening_high_resolution,
        bandpass_low_resolution=p.bandpass_low_resolution,
        bandpass_high_resolution=p.bandpass_high_resolution,
        bandpass_falloff=p.bandpass_falloff,
    )


def _check_image(data: np.ndarray, name: str) -> None:
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputDataError(
            f"{name}: {bad} NaN or Inf pixels; mask or repair them before the search."
        )
    if float(data.std()) == 0.0:
        raise InputDataError(f"{name}: the image is constant; it holds no signal.")


def load_inputs(config: MatchConfig) -> MatchInputs:
    """Read and check the micrograph and template named by ``config``."""
    micrograph = read_mrc(config.micrograph)
    template = read_mrc(config.template)
    if micrograph.data.ndim != 2:
        raise InputDataError(
            f"{config.micrograph}: expected a 2D micrograph, found shape "
            f"{micrograph.data.shape}; pass a single (motion-corrected) image."
        )
    volume = template.data
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputDataError(
            f"{config.template}: the template must be a cubic 3D map, found shape "
            f"{volume.shape}; pad it to a cube."
        )
    _check_image(micrograph.data, str(config.micrograph))
    _check_image(volume, str(config.template))
    if volume.shape[0] > min(micrograph.data.shape):
        raise InputDataError(
            f"{config.template}: template box {volume.shape[0]} px is larger than the "
            f"micrograph {micrograph.data.shape}; crop the template."
        )
    return MatchInputs(
        micrograph=micrograph.data,
        template=volume,
        optics=optics_from_config(config),
        template_pixel_size=config.optics.pixel_size,
    )


def build_search_space(config: MatchConfig) -> SearchSpace:
    """Orientations x pixel sizes x defocus offsets from the config."""
    o = config.orientation_search
    angles = orientation_grid(o.in_plane_step, o.out_of_plane_step, o.symmetry, o.base_grid)
    pixel_offsets = torch.tensor(config.pixel_size_search.offsets(), dtype=torch.float64)
    return SearchSpace(
        euler_angles=angles,
        defocus_offsets=torch.tensor(config.defocus_search.offsets(), dtype=torch.float64),
        pixel_sizes=config.optics.pixel_size + pixel_offsets,
    )


def auto_batch_size(device: torch.device, image_shape: tuple[int, int]) -> int:
    """Orientations per engine call: bounded by free memory on CUDA, 4 on CPU."""
    if device.type != "cuda":
        return 4
    free, _ = torch.cuda.mem_get_info(device)
    per_orientation = image_shape[0] * (image_shape[1] // 2 + 1) * 8 * 3
    return int(max(1, min(64, 0.25 * free // per_orientation)))


def _chunk_size(config: MatchConfig, n_orientations: int, batch: int) -> int:
    if config.compute.chunk_size != "auto":
        return int(config.compute.chunk_size)
    per_chunk = math.ceil(n_orientations / 64)
    return max(batch, math.ceil(per_chunk / batch) * batch)


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


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def prepare_task(
    config: MatchConfig, inputs: MatchInputs, space: SearchSpace, device: torch.device
) -> SearchTask:
    """Engine tensors and batching for one device."""
    image = prepare_image(
        torch.from_numpy(inputs.micrograph).to(device),
        inputs.optics.pixel_size,
        filter_settings(config),
        config.preprocessing.pad_to_fft_friendly,
    )
    template = torch.from_numpy(inputs.template).to(device)
    template_dft = prepare_template(template, config.preprocessing.template_padding)
    search_inputs = build_search_inputs(
        template_dft, template.shape[-1], image, inputs.optics, space, inputs.template_pixel_size
    )
    batch = config.compute.batch_size
    if batch == "auto":
        batch = auto_batch_size(device, image.padded_shape)
    return SearchTask(search_inputs, space.euler_angles, image.shape, int(batch))


def match_template(config: MatchConfig, progress: ProgressHook | None = None) -> MatchResult:
    """Run the global search described by ``config`` and return its result.

    Parameters
    ----------
    config : MatchConfig
        Validated configuration (inputs are read from its paths).
    progress : callable, optional
        Called as ``progress(done, total)`` in orientations.

    Returns
    -------
    MatchResult
        Maps and metadata; nothing is written to disk.
    """
    started = time.perf_counter()
    inputs = load_inputs(config)
    space = build_search_space(config)
    devices = resolve_devices(config.compute.devices)
    task = prepare_task(config, inputs, space, devices[0])
    chunks = space.chunks(_chunk_size(config, space.n_orientations, task.batch_size))
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, space.n_orientations)

    parts = InProcessExecutor().run(task, chunks, advance)
    stats = merge_all(parts, task.crop)
    elapsed = time.perf_counter() - started
    return MatchResult(
        maps=decode_maps(stats, space, inputs.optics),
        pixel_size=inputs.optics.pixel_size,
        metadata=_metadata(config, space, stats, elapsed, devices),
    )


def _metadata(
    config: MatchConfig,
    space: SearchSpace,
    stats: SearchStatistics,
    elapsed: float,
    devices: list[torch.device],
) -> dict[str, Any]:
    return {
        "program": "match",
        "config": config.model_dump(mode="json"),
        "config_yaml": dump_yaml(config),
        "search_space": space.summary(),
        "correlations_per_pixel": stats.count,
        "total_correlations": stats.count,
        "image_shape": list(stats.shape),
        "run_time_s": elapsed,
        "correlations_per_second": stats.count / max(elapsed, 1e-9),
        "devices": [str(d) for d in devices],
        "versions": _versions(),
    }


def check_output_directory(directory: str | Path, overwrite: bool) -> Path:
    """Refuse to overwrite an existing result unless allowed."""
    out = Path(directory)
    if (out / "result.json").exists() and not overwrite:
        raise OutputExistsError(
            f"{out}: holds a result already; pass --overwrite (or output.overwrite: "
            "true) or choose another --output directory."
        )
    return out


def run_match(
    config: MatchConfig,
    output: str | Path | None = None,
    overwrite: bool = False,
    progress_bar: Progress | None = None,
) -> MatchResult:
    """Search and save into ``output`` (or the config's directory), with a progress bar.

    The output directory is checked before any heavy work.
    """
    directory = check_output_directory(
        output or config.output.directory, overwrite or config.output.overwrite
    )
    if progress_bar is None:
        result = match_template(config)
    else:
        with progress_bar:
            result = match_template(config, _bar_hook(progress_bar, config))
    result.save(directory)
    return result


def _bar_hook(bar: Progress, config: MatchConfig) -> ProgressHook:
    n_filters = len(config.defocus_search.offsets()) * len(config.pixel_size_search.offsets())
    task = bar.add_task("match", total=None, rate="")
    started = time.perf_counter()

    def hook(done: int, total: int) -> None:
        rate = done * n_filters / max(time.perf_counter() - started, 1e-9)
        bar.update(task, completed=done, total=total, rate=f"{rate:,.0f} corr/s")

    return hook
