"""Out-of-memory fallback: halve the batch size and retry, telling the user once.

A search chunk always starts from empty statistics, so a chunk that ran out of
memory part way can simply be run again with smaller batches: nothing is counted
twice. ``BatchFallback`` remembers the batch size that fitted, so later chunks
start there and the warning (a ``BatchSizeWarning``) is given once.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from twodtm.errors import BatchSizeWarning, DeviceError

__all__ = [
    "BatchFallback",
    "BatchedTask",
    "is_out_of_memory",
    "release_cached_memory",
]

_ResultT = TypeVar("_ResultT")
_ChunkT = TypeVar("_ChunkT")
_TaskT = TypeVar("_TaskT", bound="BatchedTask")
_ProgressCallback = Callable[[int], None]
_Work = Callable[[int, _ProgressCallback | None], _ResultT]

# Messages of allocation failures: CUDA caching allocator, CPU allocator, cuFFT.
_OOM_MARKERS = ("out of memory", "can't allocate memory", "failed to allocate")


class BatchedTask(Protocol):
    """A frozen dataclass with a ``batch_size`` field, like ``SearchTask``."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def batch_size(self) -> int:
        """Orientations per engine call."""
        ...


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` reports a failed allocation (CUDA or CPU)."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(m in text for m in _OOM_MARKERS)


def release_cached_memory() -> None:
    """Return freed blocks to the device so a smaller batch can be allocated."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Counter:
    """Passes progress on and counts it, so a failed attempt can be taken back."""

    def __init__(self, progress: _ProgressCallback | None) -> None:
        self.progress = progress
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n
        if self.progress is not None:
            self.progress(n)

    def undo(self) -> None:
        if self.progress is not None and self.total:
            self.progress(-self.total)
        self.total = 0


class BatchFallback:
    """Runs work with a batch size, halving it after each out-of-memory error.

    Parameters
    ----------
    warn : callable, optional
        Called once, with a message, the first time the batch size is reduced.
        Default: ``warnings.warn`` with ``BatchSizeWarning``.

    Attributes
    ----------
    batch_size : int or None
        The largest batch size that has fitted so far (None before any run); later
        runs never start above it.
    """

    def __init__(self, warn: Callable[[str], None] | None = None) -> None:
        self.batch_size: int | None = None
        self._warn = warn or _warn_user
        self._warned = False

    def run(
        self,
        work: _Work[_ResultT],
        batch_size: int,
        progress: _ProgressCallback | None = None,
    ) -> _ResultT:
        """Return ``work(size, progress)``, retrying with half the size on OOM.

        ``work`` must start from scratch on every call (as ``run_chunk`` does);
        the progress it reported in a failed attempt is taken back by calling
        ``progress`` with the negative count.

        Raises
        ------
        DeviceError
            A batch of one does not fit.
        """
        size = min(batch_size, self.batch_size or batch_size)
        while True:
            counter = _Counter(progress)
            failed = False
            try:
                result = work(size, counter)
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                failed = True  # retry outside the handler so the frames are freed
            if not failed:
                self.batch_size = size
                return result
            counter.undo()
            release_cached_memory()
            size = self._smaller(size)

    def run_chunk(
        self,
        run_chunk: Callable[[_TaskT, _ChunkT, _ProgressCallback | None], _ResultT],
        task: _TaskT,
        chunk: _ChunkT,
        progress: _ProgressCallback | None = None,
    ) -> _ResultT:
        """``run_chunk(task, chunk, progress)`` with the batch size falling back.

        ``task`` is a frozen dataclass with a ``batch_size`` field (``SearchTask``);
        copies with smaller sizes are made, ``task`` itself is not modified.
        """

        def work(size: int, hook: _ProgressCallback | None) -> _ResultT:
            return run_chunk(dataclasses.replace(task, batch_size=size), chunk, hook)

        return self.run(work, task.batch_size, progress)

    def _smaller(self, size: int) -> int:
        if size <= 1:
            raise DeviceError(
                "a batch of one orientation does not fit in device memory; use a "
                "device with more memory, a smaller micrograph, or fewer defocus "
                "and pixel-size values (defocus_search, pixel_size_search)."
            )
        smaller = size // 2
        if not self._warned:
            self._warn(
                f"batch size {size} does not fit in device memory; continuing with "
                f"{smaller} (set compute.batch_size to skip this retry)."
            )
            self._warned = True
        return smaller


def _warn_user(message: str) -> None:
    warnings.warn(message, BatchSizeWarning, stacklevel=3)
