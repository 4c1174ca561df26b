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

from twodtm.config import MatchConfig, dump_yaml
from twodtm.ctf import Optics
from twodtm.devices import resolve_devices
from twodtm.io.inputs import check_match_inputs, claim_output
from twodtm.io.results import (
    MAP_NAMES,
    MatchMetadata,
    MatchResult,
    RunRecord,
    SearchSpaceSummary,
)
from twodtm.model_template import (
    model_template_settings,
    resolve_model_template,
)
from twodtm.orientations import orientation_grid
from twodtm.preprocess import (
    fft_friendly_size,
    outlier_note,
    prepare_image,
    prepare_template,
    replace_outliers,
)
from twodtm.progress import ProgressReporter, as_reporter
from twodtm.search.checkpoint import fingerprint
from twodtm.search.executors import (
    DaskExecutor,
    Executor,
    InProcessExecutor,
    SearchTask,
    make_executor,
)
from twodtm.search.fallback import release_cached_memory
from twodtm.search.inputs import build_search_inputs
from twodtm.search.options import (
    RunRequest,
    RunSizes,
    apply_run_options,
    resolve_run_options,
)
from twodtm.search.projection import projection_box
from twodtm.search.runner import (
    CheckpointPolicy,
    remove_checkpoint,
    run_search,
    start_state,
)
from twodtm.search.size import (
    SearchSize,
    available_bytes,
    calibrate,
    calibration_angles,
    check_size,
    count_orientations,
    device_bytes,
    host_bytes,
    padded_size,
)
from twodtm.search.space import Chunk, SearchSpace
from twodtm.search.statistics import SearchStatistics

ProgressHook = Callable[[int, int], None]
# Orientations per timed run (three runs, after one warm-up orientation) that
# estimate a search's duration: a batch's worth on CUDA, where batches pay.
CALIBRATION_ORIENTATIONS = {"cpu": 4, "cuda": 16}
CALIBRATION_RUNS = 3
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
    """Validated micrograph and template arrays with their optics.

    ``micrograph`` has its outliers replaced already (``replaced_pixels`` of them,
    ``preprocess.replace_outliers``), once on the host, so that every worker
    searches the same image and the count reaches the result.
    """

    micrograph: np.ndarray
    template: np.ndarray
    optics: Optics
    template_pixel_size: float
    replaced_pixels: int = 0


def load_inputs(config: MatchConfig) -> MatchInputs:
    """Read and check the micrograph and template named by ``config``.

    Raises
    ------
    InputFileError, InputDataError
        From ``io.inputs.check_match_inputs``, the one input policy.
    """
    # An atomic-model template is simulated in memory here; run_match instead
    # caches its map in the result directory (model_template.resolve_model_template).
    checked = check_match_inputs(config, model_template_settings(config))
    micrograph, replaced = checked.micrograph, 0
    sigma = config.preprocessing.outlier_sigma
    if sigma is not None:
        cleaned, replaced = replace_outliers(torch.from_numpy(micrograph), sigma)
        micrograph = cleaned.numpy()
    return MatchInputs(
        micrograph=micrograph,
        template=checked.template,
        optics=config.optics.to_optics(),
        template_pixel_size=checked.template_pixel_size,
        replaced_pixels=replaced,
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
    config: MatchConfig,
    inputs: MatchInputs,
    space: SearchSpace,
    device: torch.device,
    total_orientations: int | None = None,
) -> SearchTask:
    """Engine tensors and batching for one device.

    ``total_orientations`` (default: those of ``space``) is the size of the whole
    search, which decides whether the compiled statistics pay off; a calibration
    task holds a few of its orientations only.
    """
    image = prepare_image(
        torch.from_numpy(inputs.micrograph).to(device),
        inputs.optics.pixel_size,
        # load_inputs replaced the outliers already
        replace(config.preprocessing.filter_settings(), outlier_sigma=None),
        config.preprocessing.pad_to_fft_friendly,
    )
    template = torch.from_numpy(inputs.template).to(device)
    t = int(template.shape[-1])
    requested = config.preprocessing.template_padding
    sizes = RunSizes(
        image_shape=image.shape,
        padded_shape=image.padded_shape,
        template_size=t,
        n_filters=space.n_filters,
        n_orientations=total_orientations or space.n_orientations,
        slice_box=projection_box(template, padded_size(t, requested)),
    )
    compute = config.compute
    request = RunRequest(
        precision=compute.precision,
        fused=compute.fused_statistics,
        paired=compute.paired_transforms,
        batch_size=compute.batch_size,
        template_padding=requested,
    )
    options = resolve_run_options(request, sizes, device)
    search_inputs = build_search_inputs(
        prepare_template(template, options.template_padding),
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
    "max_hours",
    "confirm_long_run",
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


def _engine_devices(executor: Executor) -> list[torch.device] | None:
    """Devices the executor's engines run on; None for workers of a remote scheduler."""
    if isinstance(executor, InProcessExecutor):
        return [executor.device]
    if isinstance(executor, DaskExecutor):
        if executor.scheduler is not None:
            return None
        names = executor.devices or ("cpu",)
        return [torch.device(names[k % len(names)]) for k in range(executor.n_workers)]
    return [torch.device("cpu")]


def _padded_shape(config: MatchConfig, shape: tuple[int, int]) -> tuple[int, int]:
    if not config.preprocessing.pad_to_fft_friendly:
        return shape
    return (fft_friendly_size(shape[0]), fft_friendly_size(shape[1]))


def calibration_task(
    config: MatchConfig, inputs: MatchInputs, device: torch.device, total: int
) -> SearchTask:
    """Build the search's engine on ``device`` over a few calibration angles."""
    per_run = CALIBRATION_ORIENTATIONS.get(device.type, 4)
    angles = calibration_angles(1 + CALIBRATION_RUNS * per_run)
    space = build_search_space(config, angles)
    return prepare_task(config, inputs, space, device, total_orientations=total)


def estimate_size(
    config: MatchConfig, inputs: MatchInputs, devices: list[torch.device] | None
) -> SearchSize:
    """Size and memory of the search on ``devices`` (None: remote), not timed yet.

    The orientations are counted from the steps, without building the grid.
    """
    o = config.orientation_search
    n = count_orientations(
        o.in_plane_step, o.out_of_plane_step, o.symmetry, o.base_grid
    )
    n_defocus = len(config.defocus_search.offsets())
    n_pixel = len(config.pixel_size_search.offsets())
    shape = (int(inputs.micrograph.shape[0]), int(inputs.micrograph.shape[1]))
    batch = config.compute.batch_size
    on_gpu = sorted({str(d) for d in devices or () if d.type == "cuda"})
    return SearchSize(
        n_orientations=n,
        n_defocus=n_defocus,
        n_pixel_sizes=n_pixel,
        image_shape=shape,
        host_bytes=host_bytes(n, shape),
        device_bytes=device_bytes(
            n_defocus * n_pixel,
            _padded_shape(config, shape),
            int(inputs.template.shape[-1]),
            config.preprocessing.template_padding,
            16 if batch == "auto" else batch,
        ),
        available_host=available_bytes(torch.device("cpu")),
        available_device=(available_bytes(torch.device(on_gpu[0])) if on_gpu else None),
        workers_per_host=0 if on_gpu or devices is None else len(devices),
        seconds_per_orientation=None,
        parallel=max(1, len(on_gpu)),
        device="remote workers" if devices is None else str(devices[0]),
    )


def size_search(
    config: MatchConfig,
    inputs: MatchInputs,
    executor: Executor,
    progress: ProgressReporter | None = None,
    label: str = "match",
) -> tuple[SearchSize, SearchTask | None]:
    """Size the search from its steps, and time it with a short calibration.

    The calibration times a few orientations of the real engine on the first
    device; it is skipped for remote workers and for a search that does not fit
    in memory. In-process, its task is returned to serve the search itself.
    ``progress`` is told when the calibration starts.
    """
    devices = _engine_devices(executor)
    size = estimate_size(config, inputs, devices)
    if devices is None:
        return size, None
    if size.problems(config.compute.max_hours):  # it cannot fit: do not time it
        return replace(size, device="not timed: it does not fit in memory"), None
    if progress is not None:
        progress.note(f"{label}: timing the engine on {devices[0]} (calibration)")
    task = calibration_task(config, inputs, devices[0], size.n_orientations)
    timed = task
    if not isinstance(executor, InProcessExecutor):  # workers compile their own
        timed = replace(task, inputs=replace(task.inputs, fused=False))
    size = replace(size, seconds_per_orientation=calibrate(timed, CALIBRATION_RUNS))
    if isinstance(executor, InProcessExecutor):
        return size, task
    del task, timed
    release_cached_memory()  # the device is the workers' now
    return size, None


def match_template(
    config: MatchConfig,
    progress: ProgressReporter | ProgressHook | None = None,
    *,
    executor: Executor | None = None,
    checkpoint: CheckpointPolicy | None = None,
    label: str = "match",
) -> MatchResult:
    """Run the global search described by ``config`` and return its result.

    Before the search, its size (orientations x planes, correlations, memory) and
    a calibrated time estimate are reported (``progress.note``); a search that
    would not fit in memory or would exceed ``compute.max_hours`` stops there
    unless ``compute.confirm_long_run`` is set.

    Parameters
    ----------
    config : MatchConfig
        Validated configuration (inputs are read from its paths).
    progress : ProgressReporter or callable, optional
        Where the size and the progress go; a plain callable is called as
        ``progress(done, total)`` in orientations.
    executor : Executor, optional
        Where the chunks run (default: from ``config.compute``, closed at the end).
    checkpoint : CheckpointPolicy, optional
        Resume from, and save to, a checkpoint file (default: none).
    label : str
        Name of the task in progress lines.

    Returns
    -------
    MatchResult
        Maps and metadata; nothing but the checkpoint is written to disk.

    Raises
    ------
    SearchTooLargeError
        The search would not fit or would take too long, and was not confirmed.
    CheckpointError
        The checkpoint is corrupt or belongs to another search.
    SearchFailedError
        A chunk kept failing; the checkpoint holds every finished chunk.
    """
    started = time.perf_counter()
    reporter = as_reporter(progress)
    inputs = load_inputs(config)
    settings = search_settings(config, inputs)
    policy = checkpoint or CheckpointPolicy(None)
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(executor_for(config))
        size, ready = size_search(config, inputs, executor, reporter, label)
        reporter.note(size.describe(label))
        if inputs.replaced_pixels:
            reporter.note(
                outlier_note(
                    label,
                    inputs.replaced_pixels,
                    inputs.micrograph.size,
                    config.preprocessing.outlier_sigma,
                )
            )
        compute = config.compute
        check_size(size, compute.max_hours, compute.confirm_long_run)
        space = build_search_space(config)
        shape = (int(inputs.micrograph.shape[0]), int(inputs.micrograph.shape[1]))
        state = start_state(policy, settings, _plan(config, space, executor), shape)
        task: SearchTask | MatchTaskFactory = MatchTaskFactory(
            config, fingerprint(settings)
        )
        if ready is not None:
            task = replace(ready, euler_angles=space.euler_angles)
        done = sum(c.size for c in state.done)
        reporter.start(label, space.n_orientations, "orientations", done=done)

        def advance(n: int) -> None:
            reporter.advance(n, n * space.n_filters)

        try:
            state = run_search(executor, task, state, policy, advance)
        except BaseException:
            reporter.stop()
            raise
        reporter.finish()
    stats = state.statistics
    elapsed = time.perf_counter() - started
    return MatchResult(
        maps=decode_maps(stats, space, inputs.optics),
        pixel_size=inputs.optics.pixel_size,
        metadata=_metadata(config, space, stats, inputs, elapsed, _describe(executor)),
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
    inputs: MatchInputs,
    elapsed: float,
    devices: list[str],
) -> MatchMetadata:
    return MatchMetadata(
        config=config.model_dump(mode="json"),
        search_space=SearchSpaceSummary(**space.summary()),
        image_shape=(int(stats.shape[0]), int(stats.shape[1])),
        run=RunRecord(elapsed, tuple(devices), _versions()),
        config_yaml=dump_yaml(config),
        template_size=int(inputs.template.shape[-1]),
        replaced_pixels=int(inputs.replaced_pixels),
    )


def check_output_directory(directory: str | Path, overwrite: bool) -> Path:
    """Refuse to overwrite an existing result unless allowed, or an unwritable place."""
    return claim_output(directory, "result.json", overwrite)


def run_match(
    config: MatchConfig,
    output: str | Path | None = None,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
    *,
    restart: bool = False,
    executor: Executor | None = None,
    label: str = "match",
) -> MatchResult:
    """Search and save into ``output`` (or the config's directory).

    The output directory is checked before any heavy work. A checkpoint
    (``match.checkpoint``) is saved there every
    ``compute.checkpoint_interval_minutes`` and when the run stops (an error,
    Ctrl-C); running again resumes from it (``restart=True`` discards it) and it
    is deleted once the result is saved. ``progress`` gets the search's size and
    progress (see ``match_template``).
    """
    directory = check_output_directory(
        output or config.output.directory, overwrite or config.output.overwrite
    )
    config = resolve_model_template(config, directory)
    policy = CheckpointPolicy(
        directory / CHECKPOINT_NAME,
        60.0 * config.compute.checkpoint_interval_minutes,
        restart,
    )
    result = match_template(
        config, progress, executor=executor, checkpoint=policy, label=label
    )
    save_result(result, directory)
    remove_checkpoint(policy)
    return result


def save_result(result: MatchResult, directory: Path) -> None:
    """Save ``result``; stopped part-way (Ctrl-C, disk full), remove its maps.

    ``MatchResult.save`` writes ``result.json`` last, so maps without it are an
    unfinished result; they are removed rather than left for the user to mistake
    for one. The checkpoint is kept, so the search need not run again.
    """
    try:
        result.save(directory)
    except BaseException:
        for name in MAP_NAMES:
            (directory / f"{name}.mrc").unlink(missing_ok=True)
        raise
