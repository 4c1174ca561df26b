"""Executors map chunks of orientations to workers and merge what comes back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from twodtm.orientations import euler_to_matrix
from twodtm.search.engine import SearchInputs, search_orientations
from twodtm.search.space import Chunk
from twodtm.search.statistics import SearchStatistics

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class SearchTask:
    """What any worker needs to search any chunk.

    Attributes
    ----------
    inputs : SearchInputs
        Engine tensors on the worker's device.
    euler_angles : torch.Tensor
        ``(N, 3)`` all orientations of the search space (degrees, CPU).
    crop : tuple[int, int]
        Unpadded micrograph shape; statistics cover this region only.
    batch_size : int
        Orientations per engine call.
    """

    inputs: SearchInputs
    euler_angles: torch.Tensor
    crop: tuple[int, int]
    batch_size: int


def run_chunk(
    task: SearchTask, chunk: Chunk, progress: ProgressCallback | None = None
) -> SearchStatistics:
    """Search one chunk from empty statistics; ``progress`` gets orientations done."""
    stats = SearchStatistics.empty(task.crop, task.inputs.device)
    with torch.inference_mode():
        for start in range(chunk.start, chunk.stop, task.batch_size):
            stop = min(start + task.batch_size, chunk.stop)
            rotations = euler_to_matrix(task.euler_angles[start:stop])
            search_orientations(task.inputs, rotations, start, stats, crop=task.crop)
            if progress is not None:
                progress(stop - start)
    return stats


def merge_all(parts: Iterable[SearchStatistics], shape: tuple[int, int]) -> SearchStatistics:
    """Merge partial statistics (on the CPU) in the order given."""
    total = SearchStatistics.empty(shape)
    for part in parts:
        total = total.merge(part.to("cpu"))
    return total


class InProcessExecutor:
    """Runs chunks one after another in this process, on the task's device."""

    def run(
        self,
        task: SearchTask,
        chunks: list[Chunk],
        progress: ProgressCallback | None = None,
        on_chunk_done: Callable[[Chunk, SearchStatistics], None] | None = None,
    ) -> list[SearchStatistics]:
        """Search ``chunks`` and return each chunk's statistics (on the CPU)."""
        results = []
        for chunk in chunks:
            stats = run_chunk(task, chunk, progress).to("cpu")
            if on_chunk_done is not None:
                on_chunk_done(chunk, stats)
            results.append(stats)
        return results
