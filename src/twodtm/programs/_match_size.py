"""How big ``twodtm match``'s search is, and the template padding it runs at.

``fix_template_padding`` decides the template padding once for the whole search
from the free memory of its devices, ``estimate_size`` sizes the search from its
steps without building the grid, and ``size_search`` times it on the real engine
(``calibration_task``) before it runs.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from twodtm.config import MatchConfig
from twodtm.preprocess import fft_friendly_size
from twodtm.programs._match_task import MatchInputs, build_search_space, prepare_task
from twodtm.progress import ProgressReporter
from twodtm.search.executors import (
    DaskExecutor,
    Executor,
    InProcessExecutor,
    SearchTask,
)
from twodtm.search.fallback import release_cached_memory
from twodtm.search.memory import (
    available_bytes,
    device_bytes,
    host_bytes,
    template_bytes,
)
from twodtm.search.options import (
    RunSizes,
    compiles,
    fit_template_padding,
    other_engine_bytes,
)
from twodtm.search.size import (
    SearchSize,
    calibrate,
    calibration_angles,
    count_orientations,
)

__all__ = [
    "calibration_task",
    "estimate_size",
    "fix_template_padding",
    "size_search",
]

# Orientations per timed run (three runs, after one warm-up orientation) that
# estimate a search's duration: a batch's worth on CUDA, where batches pay.
CALIBRATION_ORIENTATIONS = {"cpu": 4, "cuda": 16}
CALIBRATION_RUNS = 3
_GB = 1024**3


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


def _counts(config: MatchConfig) -> tuple[int, int, int]:
    """Orientations (counted from the steps), defocus values and pixel sizes."""
    o = config.orientation_search
    n = count_orientations(
        o.in_plane_step, o.out_of_plane_step, o.symmetry, o.base_grid
    )
    n_defocus = len(config.defocus_search.offsets())
    return n, n_defocus, len(config.pixel_size_search.offsets())


def _run_sizes(config: MatchConfig, inputs: MatchInputs) -> RunSizes:
    """Give the search's ``RunSizes`` from the config and arrays, without a device."""
    n, n_defocus, n_pixel = _counts(config)
    shape = (int(inputs.micrograph.shape[0]), int(inputs.micrograph.shape[1]))
    return RunSizes(
        image_shape=shape,
        padded_shape=_padded_shape(config, shape),
        template_size=int(inputs.template.shape[-1]),
        n_filters=n_defocus * n_pixel,
        n_orientations=n,
    )


def _compact_template(
    config: MatchConfig, sizes: RunSizes, devices: list[torch.device]
) -> bool:
    """Whether every device holds the template compact (its search compiles)."""
    fused = config.compute.fused_statistics
    return all(compiles(fused, d, sizes) for d in set(devices))


def _padding_note(
    label: str,
    sizes: RunSizes,
    requested: float,
    padding: float,
    free: tuple[int, str],
    compact: bool,
) -> str:
    free_bytes, where = free
    template = template_bytes(sizes.template_size, requested, compact)
    rest = other_engine_bytes(sizes, requested)
    return (
        f"{label}: template padding {padding:g} instead of {requested:g} for the "
        f"whole search: the template padded by {requested:g} needs "
        f"{template / _GB:.3g} GB, and {where} has {free_bytes / _GB:.3g} GB free "
        f"beside the {rest / _GB:.3g} GB the rest of the engine needs "
        "(free memory to keep it)"
    )


def fix_template_padding(
    config: MatchConfig,
    inputs: MatchInputs,
    executor: Executor,
    progress: ProgressReporter | None = None,
    label: str = "match",
) -> MatchConfig:
    """Return the config with the template padding the whole search runs at.

    ``preprocessing.template_padding`` is lowered to
    ``search.memory.FALLBACK_PADDING`` where its template does not fit beside
    the engine in the free memory of the executor's devices (the smallest of
    them; ``search.options.fit_template_padding``). It is decided here, once,
    because padding changes the result's bits: every device and worker then
    builds its engine at this padding (``prepare_task`` never lowers it), and the
    checkpoint's fingerprint and the result record it, so that a resumed run
    at another padding is refused rather than mixed in. For workers of a
    remote scheduler (memory unknown here) the request stands.

    Parameters
    ----------
    config : MatchConfig
        The search's config, padding as requested.
    inputs : MatchInputs
        Its arrays (the image and template sizes count).
    executor : Executor
        Where the search runs.
    progress : ProgressReporter, optional
        Told when the padding is lowered, and why.
    label : str
        Name of the task in the note.

    Returns
    -------
    MatchConfig
        ``config`` itself, or a copy with the lowered padding.
    """
    devices = _engine_devices(executor)
    if devices is None:
        return config
    sizes = _run_sizes(config, inputs)
    free, where = min((available_bytes(d), str(d)) for d in set(devices))
    requested = config.preprocessing.template_padding
    compact = _compact_template(config, sizes, devices)
    padding = fit_template_padding(sizes, requested, free, compact)
    if padding == requested:
        return config
    if progress is not None:
        note = _padding_note(label, sizes, requested, padding, (free, where), compact)
        progress.note(note)
    preprocessing = config.preprocessing.model_copy(
        update={"template_padding": padding}
    )
    return config.model_copy(update={"preprocessing": preprocessing})


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
    n, n_defocus, n_pixel = _counts(config)
    shape = (int(inputs.micrograph.shape[0]), int(inputs.micrograph.shape[1]))
    batch = config.compute.batch_size
    on_gpu = sorted({str(d) for d in devices or () if d.type == "cuda"})
    compact = False
    if devices:
        compact = _compact_template(config, _run_sizes(config, inputs), devices)
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
            compact=compact,
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
        timed = replace(
            task, inputs=replace(task.inputs, fused=False, compiled_slices=False)
        )
    size = replace(size, seconds_per_orientation=calibrate(timed, CALIBRATION_RUNS))
    if isinstance(executor, InProcessExecutor):
        return size, task
    del task, timed
    release_cached_memory()  # the device is the workers' now
    return size, None
