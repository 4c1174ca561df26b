"""Executors: in-process, local workers and a Dask cluster give the same bits."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from _scale_data import small_config
from twodtm.config import MatchConfig, parse_config
from twodtm.errors import SearchFailedError
from twodtm.io.results import MAP_NAMES, MatchResult
from twodtm.programs.match import MatchTaskFactory, match_template
from twodtm.search.executors import (
    DaskExecutor,
    InProcessExecutor,
    LocalExecutor,
    make_executor,
    merge_all,
    run_chunk,
    worker_device,
)
from twodtm.search.space import Chunk
from twodtm.search.statistics import SearchStatistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[MatchConfig, MatchResult]:
    """A 176-orientation x 3-defocus search in 8-orientation chunks, in-process."""
    config = small_config(tmp_path_factory.mktemp("search"), out_of_plane_step=45.0)
    data = config.model_dump(mode="json")
    data["orientation_search"]["in_plane_step"] = 45.0
    config = parse_config(MatchConfig, data)
    return config, match_template(config, executor=InProcessExecutor("cpu"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalExecutor]:
    """Two CPU worker processes (started once: each imports torch)."""
    with LocalExecutor(("cpu",), n_workers=2, torch_threads=1) as executor:
        executor.start()
        yield executor


def _assert_same_maps(a: MatchResult, b: MatchResult) -> None:
    for name in MAP_NAMES:
        assert np.array_equal(a.maps[name], b.maps[name]), name


def _factory(config: MatchConfig) -> MatchTaskFactory:
    return MatchTaskFactory(config, key="test-" + str(config.micrograph))


def test_run_accepts_task_or_factory_and_merges_to_one_chunk(
    search: tuple[MatchConfig, MatchResult],
) -> None:
    config, _ = search
    task = _factory(config)(torch.device("cpu"))
    chunks = [Chunk(0, 5), Chunk(5, 17), Chunk(17, 20)]
    seen: list[int] = []
    parts = InProcessExecutor().run(task, chunks, seen.append)
    assert sum(seen) == 20
    whole = run_chunk(task, Chunk(0, 20))
    merged = merge_all(reversed(parts), task.crop)
    for name in ("mip", "best_index", "sum", "sum_sq"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert merged.count == whole.count == 20 * 3


def test_worker_device_shares_out_devices() -> None:
    devices = ("cuda:0", "cuda:1")
    assert [worker_device(k, devices) for k in range(3)] == [
        torch.device("cuda:0"),
        torch.device("cuda:1"),
        torch.device("cuda:0"),
    ]
    assert worker_device("SLURMCluster-3", ("cpu",)) == torch.device("cpu")


def test_make_executor_choice() -> None:
    assert isinstance(make_executor("auto", ["cpu"]), InProcessExecutor)
    local = make_executor("auto", ["cpu"], workers=3)
    assert isinstance(local, LocalExecutor)
    assert local.n_workers == 3
    remote = make_executor("auto", [], scheduler="tcp://10.0.0.1:8786")
    assert type(remote) is DaskExecutor
    assert remote.scheduler == "tcp://10.0.0.1:8786"


def test_two_local_workers_give_identical_maps(
    search: tuple[MatchConfig, MatchResult], cluster: LocalExecutor
) -> None:
    config, reference = search
    done: list[int] = []
    result = match_template(config, lambda d, _: done.append(d), executor=cluster)
    _assert_same_maps(result, reference)
    assert done[-1] == 176


def test_joining_a_running_scheduler_gives_identical_maps(
    search: tuple[MatchConfig, MatchResult], cluster: LocalExecutor
) -> None:
    config, reference = search
    address = cluster.client.scheduler.address
    with DaskExecutor(scheduler=address) as remote:
        result = match_template(config, executor=remote)
    _assert_same_maps(result, reference)


def test_chunk_that_keeps_failing_raises(
    tmp_path: Path, search: tuple[MatchConfig, MatchResult], cluster: LocalExecutor
) -> None:
    config, _ = search
    missing = config.model_copy(update={"micrograph": str(tmp_path / "gone.mrc")})
    with pytest.raises(SearchFailedError, match=r"orientations 0-7 failed.*resume"):
        list(cluster.map_chunks(_factory(missing), [Chunk(0, 8)]))


def test_killed_worker_chunk_is_retried(
    search: tuple[MatchConfig, MatchResult], cluster: LocalExecutor
) -> None:
    """Kill a worker busy with a chunk as soon as the first chunk is back."""
    config, reference = search
    client = cluster.client
    chunks = [Chunk(s, min(s + 22, 176)) for s in range(0, 176, 22)]
    parts: list[SearchStatistics] = []
    killed = []
    for chunk, stats in cluster.map_chunks(_factory(config), chunks):
        parts.append(stats)
        busy = [w for w, keys in client.processing().items() if keys]
        if not killed and busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        assert chunk in chunks
    assert killed, "no worker was busy to kill"
    assert len(parts) == len(chunks)
    merged = merge_all(parts, reference.maps["mip"].shape)
    assert np.array_equal(merged.mip.numpy(), reference.maps["mip"])
    assert merged.count == 176 * 3
