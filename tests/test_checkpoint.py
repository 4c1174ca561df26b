"""Checkpoints: exact round trip, corruption detected, resume bit-identical."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

import twodtm.programs._match_size
import twodtm.search.options
from _scale_data import small_config
from twodtm.config import MatchConfig, dump_yaml, parse_config
from twodtm.errors import CheckpointError, SearchFailedError
from twodtm.io.results import MAP_NAMES, MatchResult
from twodtm.programs._match_task import load_inputs, prepare_task
from twodtm.programs.match import CHECKPOINT_NAME, build_search_space, run_match
from twodtm.progress import PlainProgress
from twodtm.search.checkpoint import (
    Checkpoint,
    fingerprint,
    load_checkpoint,
    require_same_search,
    save_checkpoint,
)
from twodtm.search.executors import InProcessExecutor, SearchTask, TaskFactory
from twodtm.search.memory import FALLBACK_PADDING, device_bytes, template_bytes
from twodtm.search.space import Chunk
from twodtm.search.statistics import SearchStatistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[MatchConfig, MatchResult]:
    """A 360-orientation x 3-defocus search in 90 chunks, and its result."""
    root = tmp_path_factory.mktemp("search")
    config = small_config(root, out_of_plane_step=40.0, chunk_size=4)
    data = config.model_dump(mode="json")
    data["orientation_search"]["in_plane_step"] = 30.0
    config = parse_config(MatchConfig, data)
    return config, run_match(config, root / "reference")


def _assert_same_maps(a: MatchResult, b: MatchResult) -> None:
    for name in MAP_NAMES:
        assert np.array_equal(a.maps[name], b.maps[name]), name


def _random_checkpoint(seed: int = 0) -> Checkpoint:
    g = torch.Generator().manual_seed(seed)
    stats = SearchStatistics(
        mip=torch.randn(5, 7, generator=g),
        best_index=torch.randint(0, 1000, (5, 7), generator=g),
        sum=torch.randn(5, 7, generator=g, dtype=torch.float64),
        sum_sq=torch.rand(5, 7, generator=g, dtype=torch.float64),
        count=42,
    )
    chunks = (Chunk(0, 4), Chunk(4, 8), Chunk(8, 10))
    settings = {"a": 1, "b": {"c": [1.5, 2.5]}}
    return Checkpoint(
        fingerprint(settings), settings, chunks, frozenset(chunks[1:]), stats
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    original = _random_checkpoint()
    save_checkpoint(tmp_path / "c", original)
    loaded = load_checkpoint(tmp_path / "c")
    assert loaded.fingerprint == original.fingerprint
    assert loaded.settings == original.settings
    assert loaded.chunks == original.chunks
    assert loaded.done == original.done
    assert loaded.remaining == [Chunk(0, 4)]
    for name in ("mip", "best_index", "sum", "sum_sq"):
        a, b = getattr(loaded.statistics, name), getattr(original.statistics, name)
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    assert loaded.statistics.count == 42


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip_payload", "flip_digest", "empty", "not_a_checkpoint"],
)
def test_damaged_checkpoint_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c"
    save_checkpoint(path, _random_checkpoint())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "flip_payload":
        raw[-50] ^= 0x01
    elif damage == "flip_digest":
        raw[25] = ord("0") if raw[25] != ord("0") else ord("1")
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = bytearray(b"PK\x03\x04 a zip, not ours" * 10)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="--restart") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_changed_settings_are_named() -> None:
    saved = _random_checkpoint()
    require_same_search(saved, {"b": {"c": [1.5, 2.5]}, "a": 1}, "c")  # same, reordered
    with pytest.raises(CheckpointError, match=r"changed: b\.c"):
        require_same_search(saved, {"a": 1, "b": {"c": [1.5, 3.0]}}, "c")


class _FailingAfter(InProcessExecutor):
    """Searches ``n`` chunks, then fails the way a worker that keeps dying does."""

    def __init__(self, n: int) -> None:
        super().__init__("cpu")
        self.n = n
        self.searched: list[Chunk] = []

    def map_chunks(
        self,
        task: SearchTask | TaskFactory,
        chunks: Sequence[Chunk],
        progress: object = None,
    ) -> Iterator[tuple[Chunk, SearchStatistics]]:
        for k, pair in enumerate(super().map_chunks(task, chunks)):
            if k == self.n:
                raise SearchFailedError("chunk kept failing")
            self.searched.append(pair[0])
            yield pair


def test_failed_run_leaves_valid_checkpoint_and_resumes_identically(
    tmp_path: Path, search: tuple[MatchConfig, MatchResult]
) -> None:
    config, reference = search
    out = tmp_path / "run"
    failing = _FailingAfter(5)
    with pytest.raises(SearchFailedError):
        run_match(config, out, executor=failing)
    saved = load_checkpoint(out / CHECKPOINT_NAME)
    assert saved.done == frozenset(failing.searched)
    assert len(saved.done) == 5
    assert not (out / "result.json").exists()

    resumed = _FailingAfter(10**6)
    result = run_match(config, out, executor=resumed)
    assert set(resumed.searched).isdisjoint(saved.done)
    assert len(resumed.searched) + 5 == len(saved.chunks)
    _assert_same_maps(result, reference)
    assert not (out / CHECKPOINT_NAME).exists()


def test_changed_config_is_refused_unless_restart(
    tmp_path: Path, search: tuple[MatchConfig, MatchResult]
) -> None:
    config, reference = search
    out = tmp_path / "run"
    with pytest.raises(SearchFailedError):
        run_match(config, out, executor=_FailingAfter(3))
    data = config.model_dump(mode="json")
    data["defocus_search"]["step"] = 800.0
    changed = parse_config(MatchConfig, data)
    with pytest.raises(CheckpointError, match=r"defocus_search\.step.*--restart"):
        run_match(changed, out)
    # Run-only settings (workers, interval) may change between runs.
    data = config.model_dump(mode="json")
    data["compute"]["checkpoint_interval_minutes"] = 5.0
    result = run_match(parse_config(MatchConfig, data), out)
    _assert_same_maps(result, reference)


def test_corrupt_checkpoint_is_never_used(
    tmp_path: Path, search: tuple[MatchConfig, MatchResult]
) -> None:
    config, reference = search
    out = tmp_path / "run"
    with pytest.raises(SearchFailedError):
        run_match(config, out, executor=_FailingAfter(3))
    path = out / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        run_match(config, out)
    _assert_same_maps(run_match(config, out, restart=True), reference)


_KILLED_RUN = """
import logging, sys
import torch
torch.set_num_threads(1)
from twodtm.config import load_match_config
from twodtm.programs.match import run_match
handler = logging.FileHandler(sys.argv[2])
log = logging.getLogger("twodtm.search")
log.addHandler(handler)
log.setLevel(logging.DEBUG)
run_match(load_match_config(sys.argv[1]))
"""


def _chunk_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "searched orientations" in line]


def test_sigkill_then_resume_is_bit_identical(
    tmp_path: Path,
    search: tuple[MatchConfig, MatchResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, reference = search
    out = tmp_path / "killed"
    data = config.model_dump(mode="json")
    data["output"]["directory"] = str(out)
    data["compute"]["checkpoint_interval_minutes"] = 0.0  # after every chunk
    config = parse_config(MatchConfig, data)
    (tmp_path / "match.yaml").write_text(dump_yaml(config))
    (tmp_path / "run.py").write_text(_KILLED_RUN)
    log = tmp_path / "run.log"
    process = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "run.py"),
            str(tmp_path / "match.yaml"),
            str(log),
        ]
    )
    checkpoint = out / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the search never wrote a checkpoint"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it was killed"

    saved = load_checkpoint(checkpoint)
    first_run = _chunk_lines(log.read_text())
    assert 1 <= len(saved.done) < len(saved.chunks)
    assert len(first_run) - len(saved.done) in (0, 1)  # merged but not yet saved

    with caplog.at_level(logging.DEBUG, logger="twodtm.search"):
        result = run_match(config)
    second_run = _chunk_lines(caplog.text)
    assert len(second_run) == len(saved.chunks) - len(saved.done)
    assert len(first_run) + len(second_run) <= len(saved.chunks) + 1
    _assert_same_maps(result, reference)
    _assert_same_maps(MatchResult.load(out), reference)
    assert not checkpoint.exists()


# --- the template padding: decided once per search ---------------------------


def _only_the_fallback_fits(config: MatchConfig) -> int:
    """Free bytes in which the template fits padded by 1.5 but not by 2."""
    t, n_filters = 16, 3  # the blob template; 3 defocus values
    assert load_inputs(config).template.shape == (t, t, t)
    rest = device_bytes(n_filters, (64, 64), t, 2.0, batch_size=0)
    rest -= template_bytes(t, 2.0)
    free = rest + template_bytes(t, FALLBACK_PADDING)
    assert rest + template_bytes(t, 2.0) > free
    return free


def _with(config: MatchConfig, section: str, key: str, value: object) -> MatchConfig:
    data = config.model_dump(mode="json")
    data[section][key] = value
    return parse_config(MatchConfig, data)


def test_padding_is_lowered_once_for_the_whole_search(
    tmp_path: Path,
    search: tuple[MatchConfig, MatchResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, reference = search
    assert config.preprocessing.template_padding == 2.0
    free = _only_the_fallback_fits(config)
    # A device deciding on its own would lower 2 to 1.5 here: prepare_task keeps
    # the padding of the config it is given (p = 32 for t = 16 padded by 2).
    monkeypatch.setattr(twodtm.search.options, "available_bytes", lambda d: free)
    task = prepare_task(
        config, load_inputs(config), build_search_space(config), torch.device("cpu")
    )
    assert int(task.inputs.template_dft.shape[-3]) == 32

    # The search decides it once, from the devices' free memory, and says so.
    monkeypatch.setattr(twodtm.programs._match_size, "available_bytes", lambda d: free)
    short = _with(config, "compute", "confirm_long_run", True)  # host check
    notes = io.StringIO()
    result = run_match(short, tmp_path / "low", progress=PlainProgress(notes))
    assert "template padding 1.5 instead of 2 for the whole search" in notes.getvalue()
    assert f"{template_bytes(16, 2.0) / 1024**3:.3g} GB" in notes.getvalue()
    recorded = json.loads((tmp_path / "low" / "result.json").read_text())
    assert recorded["config"]["preprocessing"]["template_padding"] == 1.5
    assert "template_padding: 1.5" in recorded["config_yaml"]
    assert result.metadata.config["preprocessing"]["template_padding"] == 1.5

    # Every chunk ran at 1.5: bit for bit the search asked for at 1.5 (with the
    # memory back), and not the one at 2.
    monkeypatch.undo()
    asked = _with(config, "preprocessing", "template_padding", FALLBACK_PADDING)
    _assert_same_maps(result, run_match(asked, tmp_path / "asked"))
    assert not np.array_equal(result.maps["mip"], reference.maps["mip"])


def test_checkpoint_at_another_padding_is_refused_not_mixed(
    tmp_path: Path,
    search: tuple[MatchConfig, MatchResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, reference = search
    out = tmp_path / "run"
    with pytest.raises(SearchFailedError):
        run_match(config, out, executor=_FailingAfter(3))  # at padding 2
    saved = load_checkpoint(out / CHECKPOINT_NAME)
    free = _only_the_fallback_fits(config)
    monkeypatch.setattr(twodtm.programs._match_size, "available_bytes", lambda d: free)
    short = _with(config, "compute", "confirm_long_run", True)
    with pytest.raises(CheckpointError, match=r"preprocessing\.template_padding"):
        run_match(short, out)
    assert load_checkpoint(out / CHECKPOINT_NAME).done == saved.done
    # with the memory back, the padding-2 search resumes as it began
    monkeypatch.undo()
    _assert_same_maps(run_match(config, out), reference)
