"""A resumable run of a chunked search: executor, merge, periodic checkpoints.

``start_state`` loads the checkpoint of an interrupted run (refusing one written for
other settings) or starts afresh; ``run_search`` sends the remaining chunks to an
executor, merges every chunk that comes back into the running total, and saves a
checkpoint every ``interval_s`` seconds and when the run stops on an error. Merging
is exact and order-free, so a resumed run ends with the same bits as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twodtm.search.checkpoint import (
    Checkpoint,
    fingerprint,
    load_checkpoint,
    require_same_search,
    save_checkpoint,
)
from twodtm.search.executors import Executor, SearchTask, TaskFactory
from twodtm.search.space import Chunk
from twodtm.search.statistics import SearchStatistics

__all__ = [
    "CheckpointPolicy",
    "remove_checkpoint",
    "run_search",
    "start_state",
]

_logger = logging.getLogger("twodtm.search")


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often a run saves its state.

    Attributes
    ----------
    path : Path, optional
        Checkpoint file; None disables checkpoints.
    interval_s : float
        Seconds between checkpoints (0: after every chunk).
    restart : bool
        Ignore (and later overwrite) an existing checkpoint.
    """

    path: Path | None
    interval_s: float = 600.0
    restart: bool = False


def start_state(
    policy: CheckpointPolicy,
    settings: dict[str, Any],
    chunks: Sequence[Chunk],
    shape: tuple[int, int],
) -> Checkpoint:
    """Return the state to start from: the saved checkpoint, or nothing done.

    Raises
    ------
    CheckpointError
        The checkpoint is corrupt, or was written for other ``settings``.
    """
    path = policy.path
    if path is not None and path.exists() and not policy.restart:
        saved = load_checkpoint(path)
        require_same_search(saved, settings, path)
        _logger.info(
            "resuming: %d of %d chunks done", len(saved.done), len(saved.chunks)
        )
        return saved
    return Checkpoint(
        fingerprint=fingerprint(settings),
        settings=settings,
        chunks=tuple(chunks),
        done=frozenset(),
        statistics=SearchStatistics.empty(shape),
    )


def _with_chunk(state: Checkpoint, chunk: Chunk, stats: SearchStatistics) -> Checkpoint:
    return replace(
        state,
        done=state.done | {chunk},
        statistics=state.statistics.merge(stats.to("cpu")),
    )


def run_search(
    executor: Executor,
    task: SearchTask | TaskFactory,
    state: Checkpoint,
    policy: CheckpointPolicy,
    progress: Callable[[int], None] | None = None,
) -> Checkpoint:
    """Search the chunks ``state`` has not done; return the final state.

    Parameters
    ----------
    executor : Executor
        Any executor of ``search.executors``.
    task : SearchTask or TaskFactory
        What the executor's workers search.
    state : Checkpoint
        From ``start_state``.
    policy : CheckpointPolicy
        Checkpoint file and interval.
    progress : callable, optional
        Called with the orientations of each finished batch or chunk.

    Returns
    -------
    Checkpoint
        Every chunk done; ``statistics`` holds the whole search.
    """
    last_saved = time.monotonic()
    try:
        for chunk, stats in executor.map_chunks(task, state.remaining, progress):
            state = _with_chunk(state, chunk, stats)
            _logger.debug("searched orientations %d-%d", chunk.start, chunk.stop - 1)
            if policy.path is not None and (
                time.monotonic() - last_saved >= policy.interval_s
            ):
                save_checkpoint(policy.path, state)
                last_saved = time.monotonic()
    except BaseException:
        if policy.path is not None and state.done:
            save_checkpoint(policy.path, state)
            _logger.info("checkpoint saved: %d chunks done", len(state.done))
        raise
    return state


def remove_checkpoint(policy: CheckpointPolicy) -> None:
    """Delete the checkpoint once the result it led to is saved."""
    if policy.path is not None and policy.path.exists():
        os.remove(policy.path)
