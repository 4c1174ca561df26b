"""``twodtm match``: load, validate, search, decode and save.

The program is thin: ``programs._match_task`` holds the inputs, the search
space and the engine task, ``programs._match_size`` the size, the calibration
and the template padding the search runs at.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch

from twodtm.config import MatchConfig, dump_yaml
from twodtm.ctf import Optics
from twodtm.devices import resolve_devices
from twodtm.io.results import (
    MAP_NAMES,
    MASK_NAME,
    MatchMetadata,
    MatchResult,
    RunRecord,
    SearchSpaceSummary,
)
from twodtm.model_template import resolve_model_template
from twodtm.preprocess import outlier_note
from twodtm.programs._match_size import fix_template_padding, size_search
from twodtm.programs._match_task import (
    MatchInputs,
    MatchTaskFactory,
    build_search_space,
    decode_maps,
    load_inputs,
    search_settings,
)
from twodtm.programs.inputs import claim_output
from twodtm.programs.peaks import remove_picks
from twodtm.progress import ProgressReporter, as_reporter
from twodtm.search.checkpoint import fingerprint
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
from twodtm.search.size import check_size
from twodtm.search.space import Chunk, SearchSpace
from twodtm.search.statistics import SearchStatistics

__all__ = [
    "CHECKPOINT_NAME",
    "MatchTaskFactory",
    "build_search_space",
    "executor_for",
    "load_inputs",
    "match_template",
    "run_match",
]

_ProgressHook = Callable[[int, int], None]
CHECKPOINT_NAME = "match.checkpoint"
_VERSIONED = (
    "twodtm",
    "torch",
    "torch-fourier-slice",
    "torch-ctf",
    "torch-so3",
    "numpy",
)


def _chunk_size(config: MatchConfig, n_orientations: int, batch: int) -> int:
    if config.compute.chunk_size != "auto":
        return int(config.compute.chunk_size)
    per_chunk = math.ceil(n_orientations / 64)
    return max(batch, math.ceil(per_chunk / batch) * batch)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


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
    progress: ProgressReporter | _ProgressHook | None = None,
    *,
    executor: Executor | None = None,
    checkpoint: CheckpointPolicy | None = None,
    label: str = "match",
) -> MatchResult:
    """Run the global search described by ``config`` and return its result.

    Before the search, its size (orientations x planes, correlations, memory) and
    a calibrated time estimate are reported (``progress.note``); a search that
    would not fit in memory or would exceed ``compute.max_hours`` stops there
    unless ``compute.confirm_long_run`` is set. The template padding is decided
    first, once for every device (``_match_size.fix_template_padding``: lowered,
    with a note, where the requested one does not fit); the result's config and
    the checkpoint record the padding searched.

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
    policy = checkpoint or CheckpointPolicy(None)
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(executor_for(config))
        # padding changes the result bits: decided once, for every device, the
        # checkpoint's fingerprint and the result
        config = fix_template_padding(config, inputs, executor, reporter, label)
        settings = search_settings(config, inputs)
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
        if inputs.searched is not None:
            reporter.note(_mask_note(label, config, inputs))
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
        kept = _Recorded.of(inputs)
        # the arrays are in the task now (or read by the workers): the template
        # alone is 0.5 GiB at 512^3, held for nothing through the search
        del inputs, ready
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
        maps=decode_maps(stats, space, kept.optics),
        pixel_size=kept.optics.pixel_size,
        metadata=_metadata(config, space, stats, kept, elapsed, _describe(executor)),
        mask=kept.searched,
    )


@dataclass(frozen=True)
class _Recorded:
    """What the result records of its inputs, kept through the search without them."""

    optics: Optics
    searched: np.ndarray | None
    template_size: int
    replaced_pixels: int
    excluded_pixels: int

    @classmethod
    def of(cls, inputs: MatchInputs) -> _Recorded:
        return cls(
            inputs.optics,
            inputs.searched,
            int(inputs.template.shape[-1]),
            int(inputs.replaced_pixels),
            inputs.excluded_pixels,
        )


def _mask_note(label: str, config: MatchConfig, inputs: MatchInputs) -> str:
    """One log line: how much of the micrograph is left out, and by what."""
    sources = []
    if config.masking.mask is not None:
        sources.append(f"mask {config.masking.mask}")
    if config.masking.auto_exclude:
        sources.append("automatic exclusion of carbon, contamination and edges")
    excluded, total = inputs.excluded_pixels, inputs.micrograph.size
    return (
        f"{label}: {excluded:,} of {total:,} pixels ({excluded / total:.1%}) left "
        f"out of the search ({'; '.join(sources)}); never picked, not counted in "
        "the trials"
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
    inputs: _Recorded,
    elapsed: float,
    devices: list[str],
) -> MatchMetadata:
    return MatchMetadata(
        config=config.model_dump(mode="json"),
        search_space=SearchSpaceSummary(**space.summary()),
        image_shape=(int(stats.shape[0]), int(stats.shape[1])),
        run=RunRecord(elapsed, tuple(devices), _versions()),
        config_yaml=dump_yaml(config),
        template_size=inputs.template_size,
        replaced_pixels=inputs.replaced_pixels,
        excluded_pixels=inputs.excluded_pixels,
    )


def _check_output_directory(directory: str | Path, overwrite: bool) -> Path:
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
    is deleted once the result is saved. A result it replaces loses its picks
    (``programs.peaks.remove_picks``), which would otherwise be read beside the
    new maps. ``progress`` gets the search's size and progress (see
    ``match_template``).
    """
    directory = _check_output_directory(
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
    # the picks of the result replaced would be read beside the new maps
    removed = remove_picks(directory) if (directory / "result.json").is_file() else []
    if removed:
        as_reporter(progress).note(
            f"{label}: removed the picks of the result replaced ({', '.join(removed)})"
        )
    _save_result(result, directory)
    remove_checkpoint(policy)
    return result


def _save_result(result: MatchResult, directory: Path) -> None:
    """Save ``result``; stopped part-way (Ctrl-C, disk full), remove its maps.

    ``MatchResult.save`` writes ``result.json`` last, so maps without it are an
    unfinished result; they are removed rather than left for the user to mistake
    for one. The checkpoint is kept, so the search need not run again.
    """
    try:
        result.save(directory)
    except BaseException:
        for name in (*MAP_NAMES, MASK_NAME):
            (directory / f"{name}.mrc").unlink(missing_ok=True)
        raise
