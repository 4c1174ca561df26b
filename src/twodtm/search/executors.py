"""Executors map chunks of orientations to workers and merge what comes back.

Three executors share one interface, ``map_chunks(task, chunks, progress)``, which
yields ``(chunk, statistics)`` pairs as chunks finish (statistics on the CPU), and
``run``, which collects them into a list:

- ``InProcessExecutor``: chunk after chunk in this process, on one device.
- ``LocalExecutor``: a Dask ``LocalCluster`` on this machine, one worker process per
  device (one per GPU, or N CPU workers).
- ``DaskExecutor``: any Dask scheduler (a ``LocalCluster`` by default, or the
  address of a running one, e.g. a ``dask_jobqueue.SLURMCluster``).

Workers receive a small picklable ``TaskFactory`` (the validated config and the
input paths), build the ``SearchTask`` on their own device once and cache it.
A chunk whose worker dies is rescheduled by Dask; a chunk that raises is retried
``max_retries`` times; past that ``SearchFailedError`` is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import torch
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from twodtm._hostmemory import retain_freed_memory
from twodtm.errors import SearchFailedError
from twodtm.orientations import euler_to_matrix
from twodtm.search.engine import search_batches
from twodtm.search.fallback import BatchFallback
from twodtm.search.inputs import SearchInputs
from twodtm.search.space import Chunk
from twodtm.search.statistics import SearchStatistics

__all__ = [
    "ChunkCallback",
    "DaskExecutor",
    "Executor",
    "InProcessExecutor",
    "LocalExecutor",
    "ProgressCallback",
    "SearchTask",
    "TaskFactory",
    "make_executor",
    "merge_all",
    "run_chunk",
    "worker_device",
]

ProgressCallback = Callable[[int], None]
ChunkCallback = Callable[[Chunk, SearchStatistics], None]
_PLUGIN_NAME = "twodtm-search-task"
_ABORT_TIMEOUT_S = 1.0


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


class TaskFactory(Protocol):
    """A picklable recipe that builds a ``SearchTask`` on a given device.

    ``key`` identifies the search: two factories with equal keys build the same
    task, so a worker may reuse the one it built before.
    """

    @property
    def key(self) -> str:
        """Identity of the search this factory builds."""
        ...

    def __call__(self, device: torch.device) -> SearchTask:
        """Build the task's tensors on ``device``."""
        ...


def run_chunk(
    task: SearchTask, chunk: Chunk, progress: ProgressCallback | None = None
) -> SearchStatistics:
    """Search one chunk from empty statistics; ``progress`` gets orientations done."""
    retain_freed_memory()
    size, angles = task.batch_size, task.euler_angles
    batches = (
        (start, euler_to_matrix(angles[start : min(start + size, chunk.stop)]))
        for start in range(chunk.start, chunk.stop, size)
    )
    with torch.inference_mode():
        return search_batches(
            task.inputs,
            batches,
            min(task.batch_size, chunk.size),
            task.crop,
            progress=progress,
        )


def merge_all(
    parts: Iterable[SearchStatistics], shape: tuple[int, int]
) -> SearchStatistics:
    """Merge partial statistics (on the CPU) in the order given."""
    total = SearchStatistics.empty(shape)
    for part in parts:
        total = total.merge(part.to("cpu"))
    return total


class Executor:
    """Base of the executors: ``map_chunks`` (given by each), ``run`` and ``with``."""

    def map_chunks(
        self,
        task: SearchTask | TaskFactory,
        chunks: Sequence[Chunk],
        progress: ProgressCallback | None = None,
    ) -> Iterator[tuple[Chunk, SearchStatistics]]:
        """Yield ``(chunk, statistics on the CPU)`` as each chunk finishes."""
        raise NotImplementedError

    def run(
        self,
        task: SearchTask | TaskFactory,
        chunks: Sequence[Chunk],
        progress: ProgressCallback | None = None,
        on_chunk_done: ChunkCallback | None = None,
    ) -> list[SearchStatistics]:
        """Search ``chunks``; return each chunk's statistics in completion order."""
        results = []
        for chunk, stats in self.map_chunks(task, chunks, progress):
            if on_chunk_done is not None:
                on_chunk_done(chunk, stats)
            results.append(stats)
        return results

    def close(self) -> None:
        """Release workers (nothing to release by default)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Runs chunks one after another in this process.

    Parameters
    ----------
    device : torch.device or str
        Where a ``TaskFactory`` builds its task; a ready ``SearchTask`` keeps its own.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def map_chunks(
        self,
        task: SearchTask | TaskFactory,
        chunks: Sequence[Chunk],
        progress: ProgressCallback | None = None,
    ) -> Iterator[tuple[Chunk, SearchStatistics]]:
        """Yield ``(chunk, statistics on the CPU)`` chunk after chunk."""
        ready = task if isinstance(task, SearchTask) else task(self.device)
        fallback = BatchFallback()  # halves the batch size on out-of-memory
        for chunk in chunks:
            stats = fallback.run_chunk(run_chunk, ready, chunk, progress)
            yield chunk, stats.to("cpu")


def worker_device(name: object, devices: Sequence[str] | None) -> torch.device:
    """Device of the Dask worker called ``name``.

    Local workers are named 0, 1, ...; worker k takes ``devices[k % len(devices)]``.
    Without a device list (workers of an external cluster) a worker takes its first
    visible GPU, or the CPU when it has none.
    """
    if not devices:
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    text = str(name)
    index = int(text) if text.isdigit() else sum(text.encode())
    return torch.device(devices[index % len(devices)])


class _WorkerTaskCache(WorkerPlugin):
    """Pins a worker to its device and caches the SearchTask it built last.

    Parameters
    ----------
    devices : sequence of str, optional
        Devices shared out among workers by name (see ``worker_device``).
    torch_threads : int, optional
        CPU threads torch may use in each worker (None: torch's default).
    """

    name = _PLUGIN_NAME

    def __init__(
        self, devices: Sequence[str] | None, torch_threads: int | None
    ) -> None:
        self.devices = tuple(devices) if devices else None
        self.torch_threads = torch_threads
        self.device = torch.device("cpu")
        self._key: str | None = None
        self._task: SearchTask | None = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.devices, self.torch_threads))

    def setup(self, worker: Any) -> None:
        """Choose this worker's device when the plugin is attached."""
        self.device = worker_device(worker.name, self.devices)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)

    def teardown(self, worker: Any) -> None:
        """Drop the cached task."""
        self._key, self._task = None, None

    def task_for(self, factory: TaskFactory) -> SearchTask:
        """Return the task of ``factory`` on this device, built at most once."""
        with self._lock:
            if self._task is None or self._key != factory.key:
                self._task = None  # free the previous search's tensors first
                self._task = factory(self.device)
                self._key = factory.key
            return self._task


def _search_chunk_on_worker(factory: TaskFactory, chunk: Chunk) -> SearchStatistics:
    """Search ``chunk`` on the current worker; statistics come back on the CPU."""
    cache = get_worker().plugins.get(_PLUGIN_NAME)
    if not isinstance(cache, _WorkerTaskCache):
        raise RuntimeError(
            "worker lacks the twodtm plugin; submit through DaskExecutor"
        )
    return run_chunk(cache.task_for(factory), chunk).to("cpu")


class DaskExecutor(Executor):
    """Runs chunks on a Dask cluster: a new ``LocalCluster`` or a running scheduler.

    Use it as a context manager (or call ``start`` and ``close``); the cluster then
    serves every search run through it, e.g. all micrographs of a batch.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``), e.g. of a
        ``dask_jobqueue.SLURMCluster``. None starts a ``LocalCluster``.
    n_workers : int
        Worker processes of the ``LocalCluster`` (ignored with ``scheduler``).
    devices : sequence of str, optional
        Devices shared out among local workers by worker number. None: each worker
        takes its first visible GPU, or the CPU.
    max_retries : int
        Times a chunk that raised (e.g. CUDA out of memory) is retried, and times
        a chunk whose worker died is rescheduled on a ``LocalCluster``.
    torch_threads : int, optional
        CPU threads of torch in each worker (None: torch's default).
    """

    def __init__(
        self,
        scheduler: str | None = None,
        n_workers: int = 2,
        devices: Sequence[str] | None = None,
        max_retries: int = 2,
        torch_threads: int | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.devices = tuple(devices) if devices else None
        self.max_retries = max_retries
        self.torch_threads = torch_threads
        self._client: Any = None
        self._cluster: Any = None

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (starting the cluster on first use)."""
        if self._client is None:
            self.start()
        return self._client

    def start(self) -> None:
        """Connect to the scheduler, or start the local cluster, and set workers up."""
        if self.scheduler is not None:
            self._client = Client(self.scheduler)
        else:
            self._cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                scheduler_kwargs={"allowed_failures": self.max_retries},
            )
            self._client = Client(self._cluster)
        plugin = _WorkerTaskCache(self.devices, self.torch_threads)
        self._client.register_plugin(plugin)

    def close(self) -> None:
        """Disconnect, and shut the local cluster down if this executor started it."""
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client, self._cluster = None, None

    def abort(self) -> None:
        """Stop now (Ctrl-C): kill the local workers, then close without waiting.

        A graceful close lets each worker finish its chunk and takes seconds
        (3.4 s measured for two idle CPU workers); their results would be thrown
        away anyway. Workers of a remote scheduler are left to it (their chunks
        are cancelled).
        """
        if self._cluster is not None:
            for nanny in list(self._cluster.workers.values()):
                pid = getattr(getattr(nanny, "process", None), "pid", None)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if self._client is not None:
            self._client.close(timeout=_ABORT_TIMEOUT_S)
        if self._cluster is not None:
            self._cluster.close(timeout=_ABORT_TIMEOUT_S)
        self._client, self._cluster = None, None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.abort()
        else:
            self.close()

    def map_chunks(
        self,
        task: SearchTask | TaskFactory,
        chunks: Sequence[Chunk],
        progress: ProgressCallback | None = None,
    ) -> Iterator[tuple[Chunk, SearchStatistics]]:
        """Yield ``(chunk, statistics on the CPU)`` in the order chunks finish.

        Raises
        ------
        SearchFailedError
            A chunk failed ``max_retries + 1`` times, or its workers kept dying.
        """
        if isinstance(task, SearchTask):
            raise TypeError("DaskExecutor needs a TaskFactory; workers build the task")
        client = self.client
        pending = {
            client.submit(
                _search_chunk_on_worker,
                task,
                chunk,
                retries=self.max_retries,
                pure=False,
            ): chunk
            for chunk in chunks
        }
        try:
            for future in as_completed(list(pending)):
                chunk = pending.pop(future)
                yield chunk, _chunk_result(future, chunk, self.max_retries)
                if progress is not None:
                    progress(chunk.size)
        finally:
            client.cancel(list(pending))


def _chunk_result(future: Any, chunk: Chunk, retries: int) -> SearchStatistics:
    try:
        stats: SearchStatistics = future.result()
    except Exception as err:
        raise SearchFailedError(
            f"orientations {chunk.start}-{chunk.stop - 1} failed after {retries} "
            f"retries ({type(err).__name__}: {err}); the checkpoint keeps the finished "
            "chunks: fix the cause (e.g. lower compute.batch_size for out-of-memory) "
            "and run the same command again to resume."
        ) from err
    finally:
        future.release()
    return stats


class LocalExecutor(DaskExecutor):
    """A Dask ``LocalCluster`` on this machine with one worker process per device.

    Parameters
    ----------
    devices : sequence of str
        ``["cuda:0", "cuda:1"]`` gives one worker per GPU; ``["cpu"]`` with
        ``n_workers=N`` gives N CPU workers sharing the cores.
    n_workers : int, optional
        Worker processes (default: one per device).
    max_retries : int
        As for ``DaskExecutor``.
    torch_threads : int, optional
        CPU threads of torch per worker. Default on the CPU: this process's torch
        threads shared out among the workers. CPU FFT results depend on the thread
        count in their last bits, so maps are bit-identical to an in-process run
        with as many threads as each worker has.
    """

    def __init__(
        self,
        devices: Sequence[str] = ("cpu",),
        n_workers: int | None = None,
        max_retries: int = 2,
        torch_threads: int | None = None,
    ) -> None:
        count = n_workers or len(devices)
        on_cpu = all(torch.device(d).type == "cpu" for d in devices)
        if torch_threads is None and on_cpu:
            torch_threads = max(1, torch.get_num_threads() // count)
        super().__init__(None, count, devices, max_retries, torch_threads)


def make_executor(
    kind: str,
    devices: Sequence[str],
    workers: int | None = None,
    scheduler: str | None = None,
    max_retries: int = 2,
) -> Executor:
    """Build the executor a run asks for.

    Parameters
    ----------
    kind : {"auto", "in-process", "local", "dask"}
        "auto" picks "dask" when a ``scheduler`` is given, "local" for more than one
        device or worker, and "in-process" otherwise.
    devices : sequence of str
        Resolved device names (``"cpu"``, ``"cuda:1"``); the first one runs an
        in-process search.
    workers : int, optional
        Local worker processes (default: one per device; two for "dask").
    scheduler : str, optional
        Address of a running Dask scheduler.
    max_retries : int
        Retries of a failed chunk.
    """
    if kind == "auto":
        if scheduler is not None:
            kind = "dask"
        elif len(devices) > 1 or (workers or 1) > 1:
            kind = "local"
        else:
            kind = "in-process"
    if kind == "in-process":
        return InProcessExecutor(devices[0] if devices else "cpu")
    if scheduler is not None:
        return DaskExecutor(scheduler, max_retries=max_retries)
    count = workers or (max(2, len(devices)) if kind == "dask" else None)
    return LocalExecutor(devices or ("cpu",), count, max_retries)
