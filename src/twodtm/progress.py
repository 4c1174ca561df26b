"""Progress of long runs (shared by the programs): plain log lines or a rich bar.

Every long program reports through a ``ProgressReporter``: ``start`` a task (a
label, its total work in some unit), ``advance`` it as work finishes (units and
the correlations they took), ``finish`` it (a summary line), and ``note`` lines
such as the size of a search. Two reporters show it:

- ``PlainProgress`` writes one line at a steady pace, at most every ``interval_s``
  seconds (``TWODTM_PROGRESS_INTERVAL``, default 30) and at each 5 % of the work
  reached at least 5 s after the last line, whichever comes first:
  ``match: 1,200/55,032 orientations (2.2%), 3.1e+04 corr/s, 0:29:10 left``.
  It is what a SLURM log or a pipe gets.
- ``BarProgress`` draws the rich progress bar on a terminal.

The local refinement, which ``refine``, ``optimize-template`` and ``constrained``
run inside their own loops, reports to the reporter made current with
``reporting``: each call announces its work (``expect_work``), so the total of a
pixel-size sweep grows as the sweep reaches each size. Without one, nothing is
shown. The maths (``twodtm.search``, ``twodtm.local``) never draws anything; the
programs (``twodtm.programs``) and the command line (``twodtm.cli``) choose the
reporter.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = [
    "BarProgress",
    "HookProgress",
    "PlainProgress",
    "ProgressReporter",
    "Snapshot",
    "as_reporter",
    "expect_work",
    "format_duration",
    "reporting",
]

_INTERVAL_ENV = "TWODTM_PROGRESS_INTERVAL"
_DEFAULT_INTERVAL_S = 30.0
_DEFAULT_STEP = 0.05
_MIN_GAP_S = 5.0
_Clock = Callable[[], float]


@dataclass(frozen=True)
class Snapshot:
    """Where a task stands.

    Attributes
    ----------
    label : str
        What runs (``match``, ``refine``, ``match mic_003 (3 of 10)``).
    unit : str
        What ``done`` and ``total`` count (``orientations``, ``particle passes``).
    done, total : int
        Work done (including work done before a resume) and in all.
    resumed : int
        Work that was done before this run started (from a checkpoint).
    correlations : float
        Correlations computed by this run (one per pixel of each correlation map).
    elapsed : float
        Seconds since the task started.
    """

    label: str
    unit: str
    done: int
    total: int
    resumed: int
    correlations: float
    elapsed: float

    @property
    def fraction(self) -> float:
        """Fraction of the work done, 0..1 (0 for an empty total)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def correlations_per_second(self) -> float:
        """Correlations of this run per second so far."""
        return self.correlations / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Time to finish at this run's pace so far; None before any work."""
        ran = self.done - self.resumed
        if ran <= 0 or self.elapsed <= 0:
            return None
        return max(0, self.total - self.done) * self.elapsed / ran


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``D d H:MM:SS`` from a day on), rounded to the second.

    Examples
    --------
    >>> format_duration(59.6), format_duration(3725), format_duration(90061)
    ('0:01:00', '1:02:05', '1 d 1:01:01')
    """
    whole = int(round(max(0.0, seconds)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} d {text}" if days else text


def _progress_line(s: Snapshot) -> str:
    """One progress line: done/total, percentage, correlations per second, time left."""
    left = s.seconds_left
    remaining = "time left unknown" if left is None else f"{format_duration(left)} left"
    return (
        f"{s.label}: {s.done:,}/{s.total:,} {s.unit} ({100 * s.fraction:.1f}%), "
        f"{s.correlations_per_second:.3g} corr/s, {remaining}"
    )


def _summary_line(s: Snapshot) -> str:
    """Format the line ending a task: work, correlations, time taken and pace."""
    return (
        f"{s.label}: finished {s.done:,}/{s.total:,} {s.unit} in "
        f"{format_duration(s.elapsed)}; {s.correlations:,.0f} correlations, "
        f"{s.correlations_per_second:.3g} corr/s"
    )


def _stopped_line(s: Snapshot) -> str:
    """Format the line ending a task that raised (interrupted, failed)."""
    return (
        f"{s.label}: stopped at {s.done:,}/{s.total:,} {s.unit} after "
        f"{format_duration(s.elapsed)}"
    )


class ProgressReporter:
    """Counts a task's work and time; shows nothing (subclasses show it).

    Parameters
    ----------
    clock : callable, optional
        Seconds, monotonic (default ``time.monotonic``).
    """

    def __init__(self, clock: _Clock = time.monotonic) -> None:
        self._clock = clock
        self._label = ""
        self._unit = ""
        self._total = 0
        self._done = 0
        self._resumed = 0
        self._correlations = 0.0
        self._started = 0.0
        self._running = False

    def start(
        self, label: str, total: int, unit: str = "orientations", done: int = 0
    ) -> None:
        """Begin a task of ``total`` units, ``done`` of them done before (a resume)."""
        if self._running:
            self.finish()
        self._label, self._unit = label, unit
        self._total, self._done, self._resumed = int(total), int(done), int(done)
        self._correlations = 0.0
        self._started = self._clock()
        self._running = True
        self._started_task()

    def add_work(self, units: int) -> None:
        """Grow the total (work that became known after the start)."""
        self._total += int(units)
        self._changed()

    def advance(self, units: int, correlations: float = 0.0) -> None:
        """Count ``units`` more done, which took ``correlations`` correlations."""
        self._done += int(units)
        self._correlations += float(correlations)
        self._changed()

    def finish(self) -> None:
        """End the task (a summary line); nothing when no task runs."""
        if self._running:
            self._running = False
            self._finished(self.snapshot(), stopped=False)

    def stop(self) -> None:
        """End the task because the run raised (a 'stopped at' line)."""
        if self._running:
            self._running = False
            self._finished(self.snapshot(), stopped=True)

    def note(self, text: str) -> None:
        """Show one line of information (e.g. the size of a search)."""

    def snapshot(self) -> Snapshot:
        """Where the current (or last) task stands."""
        return Snapshot(
            label=self._label,
            unit=self._unit,
            done=self._done,
            total=self._total,
            resumed=self._resumed,
            correlations=self._correlations,
            elapsed=max(0.0, self._clock() - self._started),
        )

    @property
    def running(self) -> bool:
        """Whether a task is started and not finished."""
        return self._running

    def _started_task(self) -> None:
        """Show that a task started (subclasses)."""

    def _changed(self) -> None:
        """Show new counts (subclasses)."""

    def _finished(self, snapshot: Snapshot, stopped: bool) -> None:
        """Show the end of a task (subclasses)."""

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.stop()


def _interval_from_environment(default: float = _DEFAULT_INTERVAL_S) -> float:
    """Seconds between plain progress lines: ``TWODTM_PROGRESS_INTERVAL`` or default."""
    text = os.environ.get(_INTERVAL_ENV, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if value >= 0 else default


class PlainProgress(ProgressReporter):
    """Plain progress lines for job logs and pipes.

    A line when a task starts, then whenever ``interval_s`` seconds have passed
    since the last line or the work done reaches the next multiple of ``step``
    at least ``min_gap_s`` seconds after the last line (checked as work is
    reported; a search of seconds logs its start, its end and the summary, not
    twenty lines), and a summary when it ends.

    Parameters
    ----------
    stream : file, optional
        Where lines go (default: ``sys.stderr`` at the time of writing).
    interval_s : float, optional
        Most seconds between lines (default: ``TWODTM_PROGRESS_INTERVAL``, else
        30).
    step : float
        Fraction of the work between lines (0.05: a line each 5 %).
    min_gap_s : float
        Fewest seconds between two lines of steps (the end always gets one).
    clock : callable, optional
        Seconds, monotonic.

    Examples
    --------
    Four orientations, two every 10 s, a line at each half of the work:

    >>> import io
    >>> out, now = io.StringIO(), [0.0]
    >>> with PlainProgress(out, interval_s=600, step=0.5, clock=lambda: now[0]) as p:
    ...     p.start("match", 4)
    ...     for _ in range(2):
    ...         now[0] += 10.0
    ...         p.advance(2, correlations=2e6)
    >>> print(out.getvalue(), end="")
    match: 0/4 orientations (0.0%), 0 corr/s, time left unknown
    match: 2/4 orientations (50.0%), 2e+05 corr/s, 0:00:10 left
    match: 4/4 orientations (100.0%), 2e+05 corr/s, 0:00:00 left
    match: finished 4/4 orientations in 0:00:20; 4,000,000 correlations, 2e+05 corr/s
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        step: float = _DEFAULT_STEP,
        min_gap_s: float = _MIN_GAP_S,
        clock: _Clock = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.min_gap_s = min_gap_s
        self._stream = stream
        self.interval_s = (
            _interval_from_environment() if interval_s is None else interval_s
        )
        self.step = step
        self._last_line = 0.0
        self._next_fraction = step

    def note(self, text: str) -> None:
        """Write ``text`` as a line."""
        self._write(text)

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def _started_task(self) -> None:
        snap = self.snapshot()
        self._next_fraction = (int(snap.fraction / self.step) + 1) * self.step
        self._line(snap)

    def _changed(self) -> None:
        if not self.running:
            return
        snap = self.snapshot()
        since = self._clock() - self._last_line
        stepped = snap.fraction >= self._next_fraction - 1e-12 and (
            since >= min(self.min_gap_s, self.interval_s) or snap.fraction >= 1.0
        )
        if since >= self.interval_s or stepped:
            self._line(snap)

    def _line(self, snap: Snapshot) -> None:
        self._write(_progress_line(snap))
        self._last_line = self._clock()
        while self._next_fraction <= snap.fraction + 1e-12:
            self._next_fraction += self.step

    def _finished(self, snapshot: Snapshot, stopped: bool) -> None:
        self._write(_stopped_line(snapshot) if stopped else _summary_line(snapshot))


def _correlation_bar(console: Console) -> Progress:
    """Make a rich bar: work done, correlations per second, time taken and left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class BarProgress(ProgressReporter):
    """The rich progress bar on a terminal; use it in a ``with`` block.

    Parameters
    ----------
    console : rich.console.Console
        Where the bar is drawn (and notes printed).
    clock : callable, optional
        Seconds, monotonic.
    """

    def __init__(self, console: Console, clock: _Clock = time.monotonic) -> None:
        super().__init__(clock)
        self.console = console
        self.bar = _correlation_bar(console)
        self._task: TaskID | None = None

    def note(self, text: str) -> None:
        """Print ``text`` above the bar."""
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _started_task(self) -> None:
        snap = self.snapshot()
        if self._task is not None:
            self.bar.remove_task(self._task)
        self._task = self.bar.add_task(
            snap.label, total=snap.total or None, completed=snap.done, rate=""
        )

    def _changed(self) -> None:
        if self._task is None or not self.running:
            return
        snap = self.snapshot()
        rate = f"{snap.correlations_per_second:,.0f} corr/s"
        self.bar.update(
            self._task, completed=snap.done, total=snap.total or None, rate=rate
        )

    def _finished(self, snapshot: Snapshot, stopped: bool) -> None:
        if self._task is not None:
            self.bar.update(self._task, completed=snapshot.done)

    def __enter__(self) -> BarProgress:
        self.bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        self.bar.stop()


class HookProgress(ProgressReporter):
    """Passes ``(done, total)`` to a plain callable, as ``match_template`` hooks get."""

    def __init__(self, hook: Callable[[int, int], None]) -> None:
        super().__init__()
        self._hook = hook

    def _started_task(self) -> None:
        self._changed()

    def _changed(self) -> None:
        snap = self.snapshot()
        self._hook(snap.done, snap.total)


def as_reporter(
    progress: ProgressReporter | Callable[[int, int], None] | None,
) -> ProgressReporter:
    """Return ``progress`` as a reporter: a plain callable gets ``(done, total)``."""
    if isinstance(progress, ProgressReporter):
        return progress
    return ProgressReporter() if progress is None else HookProgress(progress)


@dataclass(frozen=True)
class _Current:
    reporter: ProgressReporter
    label: str
    unit: str


_ACTIVE: contextvars.ContextVar[_Current | None] = contextvars.ContextVar(
    "twodtm_progress", default=None
)


def expect_work(units: int, note: str | None = None) -> ProgressReporter:
    """Announce ``units`` more work to the current reporter and return it.

    The first announcement starts the task named by ``reporting`` (and shows
    ``note``, e.g. the size of the work); later ones grow its total.
    """
    current = _ACTIVE.get()
    if current is None:
        return ProgressReporter()
    reporter = current.reporter
    if reporter.running:
        reporter.add_work(units)
    else:
        if note:
            reporter.note(note)
        reporter.start(current.label, units, current.unit)
    return reporter


@contextlib.contextmanager
def reporting(
    reporter: ProgressReporter, label: str, unit: str = "particle passes"
) -> Iterator[ProgressReporter]:
    """Make ``reporter`` current inside the block, for a task called ``label``."""
    token = _ACTIVE.set(_Current(reporter, label, unit))
    try:
        yield reporter
    finally:
        _ACTIVE.reset(token)
