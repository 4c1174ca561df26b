"""``twodtm match``: load, validate, search, decode and save."""

from __future__ import annotations

import contextlib
import hashlib
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from twodtm.config import MatchConfig, dump_yaml
from twodtm.ctf import Optics
from twodtm.devices import resolve_devices
from twodtm.errors import OutputExistsError
from twodtm.io.mrc import read_mrc
from twodtm.io.results import MatchResult
from twodtm.orientations import orientation_grid
from twodtm.preprocess import prepare_image, prepare_template
from twodtm.search import engine
from twodtm.search.checkpoint import fingerprint
from twodtm.search.engine import build_search_inputs
from twodtm.search.executors import (
    DaskExecutor,
    Executor,
    InProcessExecutor,
    SearchTask,
    make_executor,
)
from twodtm.search.runner import (
    CheckpointPolicy,
    remove_checkpoint,
    run_search,
    start_state,
)
from twodtm.search.space import Chunk, SearchSpace
from twodtm.search.statistics import SearchStatistics
from twodtm.validation import check_match_inputs, check_output_writable

ProgressHook = Callable[[int, int], None]
_VERSIONED = (
    "twodtm",
    "torch",
    "torch-fourier-slice",
    "torch-ctf",
    "torch-so3",
    "numpy",
)


@dataclass(frozen=True)
class MatchInputs:
    """Validated micrograph and template arrays with their optics."""

    micrograph: np.ndarray
    template: np.ndarray
    optics: Optics
    template_pixel_size: float


def load_inputs(config: MatchConfig) -> MatchInputs:
    """Read and check the micrograph and template named by ``config``.

    Raises
    ------
    InputFileError, InputDataError
        From ``io.mrc.read_mrc`` and ``validation.check_match_inputs``.
    """
    checked = check_match_inputs(
        config, read_mrc(config.micrograph), read_mrc(config.template)
    )
    return MatchInputs(
        micrograph=checked.micrograph,
        template=checked.template,
        optics=config.optics.to_optics(),
        template_pixel_size=checked.template_pixel_size,
    )


def build_search_space(config: MatchConfig) -> SearchSpace:
    """Orientations x pixel sizes x defocus offsets from the config."""
    o = config.orientation_search
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
        config.preprocessing.filter_settings(),
        config.preprocessing.pad_to_fft_friendly,
    )
    template = torch.from_numpy(inputs.template).to(device)
    template_dft = prepare_template(template, config.preprocessing.template_padding)
    search_inputs = build_search_inputs(
        template_dft,
        template.shape[-1],
        image,
        inputs.optics,
        space,
        inputs.template_pixel_size,
    )
    compute = config.compute
    engine.check_precision(compute.precision, device, image.padded_shape)
    fused = compute.fused_statistics
    if fused == "auto":
        fused = engine.use_fused(device, space.size, image.shape)
    search_inputs = replace(
        search_inputs,
        precision=compute.precision,
        fused=fused,
        filters_per_transform=engine.default_filters_per_transform(device),
    )
    paired = compute.paired_transforms
    if paired == "auto":
        paired = engine.default_paired(device)
    if paired and compute.precision == "fp32":
        search_inputs = engine.pair_filters(search_inputs)
    batch = compute.batch_size
    if batch == "auto":
        batch = engine.auto_batch_size(device, image.padded_shape, space.n_filters)
    return SearchTask(search_inputs, space.euler_angles, image.shape, int(batch))


CHECKPOINT_NAME = "match.checkpoint"
# Compute settings that change how the search runs but not one bit of its result.
_RUN_ONLY = {
    "devices",
    "batch_size",
    "chunk_size",
    "executor",
    "workers",
    "scheduler",
    "checkpoint_interval_minutes",
    "max_retries",
    "fused_statistics",
}


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
    SHA-256 digests of the micrograph and template arrays.
    """
    paths = {"micrograph", "template", "output"}
    settings = config.model_dump(mode="json", exclude=paths)
    settings["compute"] = {
        k: v for k, v in settings["compute"].items() if k not in _RUN_ONLY
    }
    for name in ("micrograph", "template"):
        array = np.ascontiguousarray(getattr(inputs, name))
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        settings[f"{name}_sha256"] = f"{digest}:{array.dtype}:{list(array.shape)}"
    return settings


def executor_for(config: MatchConfig) -> Executor:
    """Build the executor ``config.compute`` asks for (use it in a ``with`` block)."""
    c = config.compute
    remote = c.scheduler is not None
    devices = [] if remote else [str(d) for d in resolve_devices(c.devices)]
    return make_executor(c.executor, devices, c.workers, c.scheduler, c.max_retries)


def _plan(config: MatchConfig, space: SearchSpace, executor: Executor) -> list[Chunk]:
    batch = config.compute.batch_size
    if batch == "auto":
        device = getattr(executor, "device", torch.device("cpu"))
        batch = 4 if device.type == "cpu" else 16
    return space.chunks(_chunk_size(config, space.n_orientations, int(batch)))


def match_template(
    config: MatchConfig,
    progress: ProgressHook | None = None,
    *,
    executor: Executor | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> MatchResult:
    """Run the global search described by ``config`` and return its result.

    Parameters
    ----------
    config : MatchConfig
        Validated configuration (inputs are read from its paths).
    progress : callable, optional
        Called as ``progress(done, total)`` in orientations.
    executor : Executor, optional
        Where the chunks run (default: from ``config.compute``, closed at the end).
    checkpoint : CheckpointPolicy, optional
        Resume from, and save to, a checkpoint file (default: none).

    Returns
    -------
    MatchResult
        Maps and metadata; nothing but the checkpoint is written to disk.

    Raises
    ------
    CheckpointError
        The checkpoint is corrupt or belongs to another search.
    SearchFailedError
        A chunk kept failing; the checkpoint holds every finished chunk.
    """
    started = time.perf_counter()
    inputs = load_inputs(config)
    space = build_search_space(config)
    settings = search_settings(config, inputs)
    policy = checkpoint or CheckpointPolicy(None)
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(executor_for(config))
        shape = (int(inputs.micrograph.shape[0]), int(inputs.micrograph.shape[1]))
        state = start_state(policy, settings, _plan(config, space, executor), shape)
        factory = MatchTaskFactory(config, fingerprint(settings))
        if isinstance(executor, InProcessExecutor):
            factory = MatchTaskFactory(config, factory.key, inputs)
        done = sum(c.size for c in state.done)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, space.n_orientations)

        advance(0)
        state = run_search(executor, factory, state, policy, advance)
    stats = state.statistics
    elapsed = time.perf_counter() - started
    return MatchResult(
        maps=decode_maps(stats, space, inputs.optics),
        pixel_size=inputs.optics.pixel_size,
        metadata=_metadata(config, space, stats, elapsed, _describe(executor))
        | {"template_size": int(inputs.template.shape[-1])},
    )


def _describe(executor: Executor | None) -> list[str]:
    if isinstance(executor, InProcessExecutor):
        return [str(executor.device)]
    if isinstance(executor, DaskExecutor):
        where = executor.scheduler or "LocalCluster"
        return [f"dask:{where}:{d}" for d in executor.devices or ("auto",)]
    return [type(executor).__name__]


def _metadata(
    config: MatchConfig,
    space: SearchSpace,
    stats: SearchStatistics,
    elapsed: float,
    devices: list[str],
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
        "devices": devices,
        "versions": _versions(),
    }


def check_output_directory(directory: str | Path, overwrite: bool) -> Path:
    """Refuse to overwrite an existing result unless allowed, or an unwritable place."""
    out = check_output_writable(directory)
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
    *,
    restart: bool = False,
    executor: Executor | None = None,
) -> MatchResult:
    """Search and save into ``output`` (or the config's directory), with a progress bar.

    The output directory is checked before any heavy work. A checkpoint
    (``match.checkpoint``) is saved there every
    ``compute.checkpoint_interval_minutes`` and when the run fails; running again
    resumes from it (``restart=True`` discards it) and it is deleted once the
    result is saved.
    """
    directory = check_output_directory(
        output or config.output.directory, overwrite or config.output.overwrite
    )
    policy = CheckpointPolicy(
        directory / CHECKPOINT_NAME,
        60.0 * config.compute.checkpoint_interval_minutes,
        restart,
    )
    if progress_bar is None:
        result = match_template(config, executor=executor, checkpoint=policy)
    else:
        with progress_bar:
            hook = _bar_hook(progress_bar, config)
            result = match_template(config, hook, executor=executor, checkpoint=policy)
    result.save(directory)
    remove_checkpoint(policy)
    return result


def _bar_hook(bar: Progress, config: MatchConfig) -> ProgressHook:
    n_filters = len(config.defocus_search.offsets()) * len(
        config.pixel_size_search.offsets()
    )
    task = bar.add_task("match", total=None, rate="")
    started = time.perf_counter()

    def hook(done: int, total: int) -> None:
        rate = done * n_filters / max(time.perf_counter() - started, 1e-9)
        bar.update(task, completed=done, total=total, rate=f"{rate:,.0f} corr/s")

    return hook
