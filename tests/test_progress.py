"""Progress without a terminal: plain lines at a steady pace, and a final summary.

The pace (every ``interval_s`` or each 5 % of the work) and the figures of each
line are checked against a fake clock; then ``twodtm match`` runs with its output
going to a pipe, as in a SLURM job or ``twodtm demo | tee``, and its lines are
read back: done counts rise to the total, which is the grid's size, and a summary
ends the search.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _scale_data import write_inputs
from twodtm.cli.app import console, make_progress
from twodtm.ctf import Optics
from twodtm.local import (
    LocalGrid,
    LocalSettings,
    Pose,
    fit_particles,
    make_template,
    prepare_micrograph,
    small_rotations,
)
from twodtm.orientations import orientation_grid
from twodtm.preprocess import FilterSettings
from twodtm.programs.demo import SearchSettings, run_demo_verbose
from twodtm.progress import (
    BarProgress,
    HookProgress,
    PlainProgress,
    ProgressReporter,
    as_reporter,
    expect_work,
    format_duration,
    reporting,
)
from twodtm.search.size import count_orientations
from twodtm.simulate import SimulationParams

_LINE = re.compile(
    r"^(?P<label>.+?): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>[a-z ]+) "
    r"\((?P<percent>[\d.]+)%\), (?P<rate>[\d.e+]+) corr/s, "
    r"(?:(?P<left>[\d: d]+) left|time left unknown)$"
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _seconds(text: str) -> int:
    days, _, clock = text.rpartition(" d ")
    h, m, s = (int(v) for v in clock.split(":"))
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def _parsed(text: str) -> list[re.Match[str]]:
    return [m for m in map(_LINE.match, text.splitlines()) if m is not None]


def test_format_duration() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(3 * 3600 + 25 * 60 + 7) == "3:25:07"
    assert format_duration(2 * 86400 + 3661) == "2 d 1:01:01"


def test_lines_at_each_five_percent_with_the_right_figures() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PlainProgress(out, interval_s=1e9, clock=clock)
    progress.start("match", 200, "orientations")
    for _ in range(100):  # 2 orientations (6 correlations) a second
        clock.now += 1.0
        progress.advance(2, 6.0)
    progress.finish()
    lines = out.getvalue().splitlines()
    found = _parsed(out.getvalue())
    assert len(found) == 21  # the start, then 5 %, 10 %, ... 100 %
    assert [_number(m["done"]) for m in found] == list(range(0, 201, 10))
    assert {_number(m["total"]) for m in found} == {200}
    assert found[0].group(0).endswith("time left unknown")
    for m in found[1:]:
        done = _number(m["done"])
        assert float(m["percent"]) == pytest.approx(100 * done / 200, abs=0.05)
        assert float(m["rate"]) == pytest.approx(6.0)
        assert _seconds(m["left"]) == (200 - done) // 2
    assert lines[-1] == (
        "match: finished 200/200 orientations in 0:01:40; 600 correlations, 6 corr/s"
    )


def test_a_search_of_seconds_logs_its_start_and_end_only() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PlainProgress(out, interval_s=30.0, clock=clock)
    progress.start("match", 200, "orientations")
    for _ in range(100):  # 200 orientations in 2 s: every 5 % step within 5 s
        clock.now += 0.02
        progress.advance(2, 6.0)
    progress.finish()
    assert [_number(m["done"]) for m in _parsed(out.getvalue())] == [0, 200]
    assert len(out.getvalue().splitlines()) == 3  # start, 100 %, summary


def test_steps_wait_five_seconds_after_the_last_line() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PlainProgress(out, interval_s=30.0, clock=clock)
    progress.start("match", 100, "orientations")
    for _ in range(100):  # 1 % a second: 5 % steps, each 5 s after the last
        clock.now += 1.0
        progress.advance(1, 1.0)
    done = [_number(m["done"]) for m in _parsed(out.getvalue())]
    assert done == list(range(0, 101, 5))
    clock2, out2 = _Clock(), io.StringIO()
    fast = PlainProgress(out2, interval_s=30.0, clock=clock2)
    fast.start("match", 100, "orientations")
    for _ in range(100):  # 1 % in 0.5 s: a line at the first 5 % step after 5 s
        clock2.now += 0.5
        fast.advance(1, 1.0)
    done = [_number(m["done"]) for m in _parsed(out2.getvalue())]
    assert done == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_a_line_every_interval_when_work_is_slow() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PlainProgress(out, interval_s=30.0, clock=clock)
    progress.start("refine", 10_000, "particle passes")
    for _ in range(100):  # 1 % in 100 s: the 30 s interval sets the pace
        clock.now += 1.0
        progress.advance(1, 5.0)
    found = _parsed(out.getvalue())
    assert [_number(m["done"]) for m in found] == [0, 30, 60, 90]


def test_resumed_work_counts_only_this_runs_pace() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PlainProgress(out, interval_s=0.0, clock=clock)
    progress.start("match", 100, "orientations", done=60)
    clock.now += 10.0
    progress.advance(10, 10.0)
    last = _parsed(out.getvalue())[-1]
    assert _number(last["done"]) == 70
    assert _seconds(last["left"]) == 30  # 10 per 10 s, 30 left
    assert float(last["rate"]) == pytest.approx(1.0)


def test_a_failed_task_ends_with_a_stopped_line() -> None:
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), PlainProgress(out) as progress:
        progress.start("match", 50, "orientations")
        progress.advance(5)
        raise KeyboardInterrupt
    assert (
        out.getvalue()
        .splitlines()[-1]
        .startswith("match: stopped at 5/50 orientations after")
    )


def test_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("TWODTM_PROGRESS_INTERVAL", "2.5")
    assert PlainProgress().interval_s == 2.5
    monkeypatch.setenv("TWODTM_PROGRESS_INTERVAL", "soon")
    assert PlainProgress().interval_s == 30.0


def test_bar_on_a_terminal_plain_lines_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(console, "_force_terminal", True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(make_progress(), BarProgress)
    monkeypatch.setenv("TWODTM_PROGRESS", "plain")
    assert isinstance(make_progress(), PlainProgress)
    monkeypatch.delenv("TWODTM_PROGRESS")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(make_progress(), PlainProgress)  # stdout to a file or pipe


def test_hooks_and_the_current_reporter() -> None:
    seen: list[tuple[int, int]] = []
    hook = as_reporter(lambda done, total: seen.append((done, total)))
    assert isinstance(hook, HookProgress)
    hook.start("match", 8)
    hook.advance(3)
    hook.advance(5)
    assert seen == [(0, 8), (3, 8), (8, 8)]
    assert type(as_reporter(None)) is ProgressReporter

    out = io.StringIO()
    expect_work(5).advance(5)  # no current reporter: nothing shown, no error
    with PlainProgress(out, interval_s=0.0) as plain, reporting(plain, "optimize"):
        expect_work(4, note="size: 4 particles").advance(4, 8.0)
        expect_work(4).advance(2, 4.0)  # a second sweep point grows the total
    lines = out.getvalue().splitlines()
    assert lines[0] == "size: 4 particles"
    assert [
        (_number(m["done"]), _number(m["total"])) for m in _parsed(out.getvalue())
    ] == [
        (0, 4),
        (4, 4),
        (4, 8),
        (6, 8),
    ]
    assert lines[-1].startswith("optimize: finished 6/8 particle passes")


# --- twodtm match with its output in a pipe ----------------------------------------

_RUNNER = """
import sys
from twodtm.cli import main
sys.argv = ["twodtm", *sys.argv[1:]]
main()
"""


def _tiny_config(root: Path, name: str = "micrograph") -> Path:
    micrograph, template = write_inputs(root, name)
    data = {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": {"pixel_size": 1.0, "defocus_u": 8000.0, "defocus_v": 7800.0},
        "defocus_search": {"min": -400.0, "max": 400.0, "step": 400.0},
        "orientation_search": {"in_plane_step": 45.0, "out_of_plane_step": 60.0},
        "compute": {"batch_size": 2, "chunk_size": 4},
        "output": {"directory": str(root / "out")},
    }
    path = root / "match.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _twodtm(*args: str, interval: str = "1e9") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TWODTM_PROGRESS_INTERVAL": interval}
    env.pop("TWODTM_PROGRESS", None)
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_match_into_a_pipe_prints_size_progress_and_summary(tmp_path: Path) -> None:
    """Two micrographs (batch mode) searched with stderr into a pipe."""
    total = len(orientation_grid(45.0, 60.0))
    config = _tiny_config(tmp_path, "m1")
    write_inputs(tmp_path, "m2", seed=1)
    spec = str(tmp_path / "m*.mrc")
    run = _twodtm("match", str(config), "--micrographs", spec, "--no-report")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    found = _parsed(run.stderr)
    labels = ["match m1 (1 of 2)", "match m2 (2 of 2)"]
    assert sorted({m["label"] for m in found}) == labels
    for label in labels:
        mine = [m for m in found if m["label"] == label]
        done = [_number(m["done"]) for m in mine]
        assert done[0] == 0 and done[-1] == total
        steps = [b - a for a, b in zip(done, done[1:], strict=False)]
        assert min(steps) >= 1  # done only grows
        # a line at most each 5 %; a search of seconds gets only start and end
        assert len(done) <= 21
        assert {_number(m["total"]) for m in mine} == {total}
        # before the search: its size, memory and estimated time
        size = next(
            k for k, line in enumerate(lines) if line.startswith(f"{label} size: ")
        )
        assert size < lines.index(mine[0].group(0))
        assert f"{total:,} orientations x 3 planes" in lines[size]
        assert f"= {3 * total:,} correlations per pixel" in lines[size]
        assert f"{3 * total * 64 * 64:.3g} in all over 64x64 px" in lines[size]
        assert lines[size + 1].startswith(f"{label} memory: about ")
        assert lines[size + 2].startswith(f"{label} time: about ")
        summary = [line for line in lines if line.startswith(f"{label}: finished")]
        assert len(summary) == 1
        assert summary[0].startswith(f"{label}: finished {total:,}/{total:,} ")
        assert f"; {3 * total:,} correlations" in summary[0]
    assert "2 searched, 0 skipped" in run.stderr
    assert (tmp_path / "out" / "m2" / "result.json").exists()


# --- the demo and the local refinement -------------------------------------------


def test_demo_reports_its_phases_size_and_search(tmp_path: Path) -> None:
    tiny = SimulationParams((128, 128), 1, dose=30.0, seed=5)
    coarse = SearchSettings(in_plane_step=30.0, out_of_plane_step=30.0)
    out = io.StringIO()
    with PlainProgress(out, interval_s=1e9) as progress:
        run_demo_verbose(tmp_path, False, progress, params=tiny, search=coarse)
    lines = out.getvalue().splitlines()
    total = count_orientations(30.0, 30.0, "O")
    assert lines[0].startswith("demo: simulating a (128, 128) px micrograph")
    assert any(line.startswith(f"match size: {total:,} orientations") for line in lines)
    done = [_number(m["done"]) for m in _parsed(out.getvalue())]
    assert done[0] == 0 and done[-1] == total
    assert f"match: finished {total:,}/{total:,} orientations" in out.getvalue()
    assert lines[-1] == "demo: picking and scoring the particles"


def test_refinement_counts_particle_passes_and_correlations(blob) -> None:
    g = torch.Generator().manual_seed(3)
    optics = Optics(pixel_size=1.0, defocus_u=9000.0, defocus_v=9000.0)
    micrograph = prepare_micrograph(
        torch.randn(96, 96, generator=g), optics, FilterSettings()
    )
    template = make_template(blob, 1.0)
    starts = [
        Pose(30.0 + 10 * k, 40.0, (10.0, 20.0, 30.0), 9000.0, 1.0) for k in range(3)
    ]
    grid = LocalGrid(2.0, 1.0, 2.0, 1.0)
    settings = LocalSettings(
        grid=grid, defocus_offsets=(-100.0, 0.0, 100.0), iterations=2
    )
    out = io.StringIO()
    with PlainProgress(out, interval_s=0.0) as progress, reporting(progress, "refine"):
        fit_particles(micrograph, template, starts, settings)
    found = _parsed(out.getvalue())
    assert [(_number(m["done"]), _number(m["total"])) for m in found] == [
        (0, 6),
        (3, 6),
        (6, 6),
    ]
    first = len(small_rotations(grid)) * 3  # orientations x defocus, per particle
    second = len(small_rotations(grid.halved())) * 3
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(
        f"local search size: 3 particles x {len(small_rotations(grid))} orientations"
    )
    correlations = 3 * (first + second)
    assert lines[-1].startswith("refine: finished 6/6 particle passes in 0:00:")
    assert f"; {correlations:,} correlations" in lines[-1]
