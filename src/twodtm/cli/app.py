"""The command line (cli): the typer application, its console and progress, the entry.

Each ``twodtm.cli.*_cmd`` module registers its program's commands on ``app``;
``main`` runs it and turns every ``twodtm.errors`` exception into one line and
an exit status (``BAD_INPUT``, ``FAILED``, ``INTERRUPTED``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import TextIO

import typer
from pydantic import ValidationError
from rich.console import Console

from twodtm.errors import TwodtmError
from twodtm.progress import BarProgress, PlainProgress, ProgressReporter
from twodtm.search.fallback import is_out_of_memory

__all__ = [
    "BAD_INPUT",
    "FAILED",
    "INTERRUPTED",
    "TERMINATED",
    "app",
    "console",
    "main",
    "make_progress",
]

BAD_INPUT = 2
FAILED = 1
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it
_MEMORY_ADVICE = (
    "lower compute.batch_size, search fewer defocus or pixel-size values, or use a "
    "device with more memory"
)
_INTERRUPTED_TEXT = (
    "interrupted (Ctrl-C) or terminated (SIGTERM); outputs are written "
    "atomically, so every file present is complete."
)

app = typer.Typer(
    name="twodtm",
    help="Two-dimensional template matching of cryo-EM micrographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


# "plain" asks for plain progress lines on a terminal too (e.g. `| tee log`).
_PROGRESS_ENV = "TWODTM_PROGRESS"


def make_progress() -> ProgressReporter:
    """Make the progress of a long run: the rich bar on a terminal, else plain lines.

    The bar needs stdout and stderr both on a terminal; a SLURM log, a pipe or a
    file gets plain lines on stderr at a steady pace (see ``twodtm.progress``).
    Use the result in a ``with`` block.
    """
    plain = os.environ.get(_PROGRESS_ENV, "").strip().lower() == "plain"
    if console.is_terminal and sys.stdout.isatty() and not plain:
        return BarProgress(console)
    return PlainProgress()


def _fail(message: str) -> None:
    """Print ``message`` as one red error line on stderr (no traceback)."""
    console.print(
        f"error: {message}",
        style="bold red",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    console.print(
        f"warning: {message}",
        style="yellow",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _validation_text(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or err.title
        parts.append(f"{where}: {item['msg']}")
    return "invalid value: " + "; ".join(parts)


def _run_app() -> int:
    """Run the app; return the exit status, turning bad input into one message."""
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == INTERRUPTED:  # typer turns Ctrl-C into exit 130
            _fail(_INTERRUPTED_TEXT)
        raise
    except KeyboardInterrupt:
        _fail(_INTERRUPTED_TEXT)
        return INTERRUPTED
    except TwodtmError as err:
        _fail(str(err))
        return BAD_INPUT
    except ValidationError as err:
        _fail(_validation_text(err))
        return BAD_INPUT
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _fail(
            f"{where}{err.strerror or err}; check the path, permissions and free space."
        )
        return FAILED
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        first_line = (str(err).strip().splitlines() or ["no details"])[0]
        _fail(f"out of memory ({first_line}); {_MEMORY_ADVICE}")
        return FAILED
    return 0


class _Interrupts:
    """Counts SIGINTs (Ctrl-C) and SIGTERMs; each raises KeyboardInterrupt.

    SIGTERM is what ``scancel``, a SLURM time limit (before its SIGKILL) and
    ``kill`` send: handled like Ctrl-C, the search saves its checkpoint and
    removes partial outputs on the way out instead of dying mid-write.
    """

    def __init__(self) -> None:
        self.received = 0
        self.terminated = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        self.terminated = self.terminated or signum == signal.SIGTERM
        raise KeyboardInterrupt

    @property
    def status(self) -> int:
        """Exit status of a run these signals ended."""
        return TERMINATED if self.terminated else INTERRUPTED


# Handled where their handler is still the default one: a SIGINT ignored by the
# parent (``nohup``, a background job) stays ignored.
_DEFAULT_HANDLERS = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
}


@contextlib.contextmanager
def _counting_interrupts() -> Iterator[_Interrupts]:
    """Count SIGINTs and SIGTERMs inside the block (see ``_Interrupts``)."""
    interrupts = _Interrupts()
    replaced = {}
    try:
        for signum, default in _DEFAULT_HANDLERS.items():
            previous = signal.getsignal(signum)
            if previous is default:
                signal.signal(signum, interrupts)
                replaced[signum] = previous
    except ValueError:  # not the main thread: signals are not ours to handle
        pass
    try:
        yield interrupts
    finally:
        for signum, previous in replaced.items():
            signal.signal(signum, previous)


def _exit_now(status: int) -> None:
    """End the process at once, after flushing what was printed.

    An interrupted run has already saved its checkpoint and removed partial
    outputs on the way out; what interpreter shutdown would add is waiting: for
    torch's compile threads (an inductor C++ compile in flight runs to its end,
    measured 5-60 s on a loaded machine) and collecting every object.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def main() -> None:
    """Entry point: run the app; bad input ends as one red line, never a traceback.

    Exit status: 2 for a ``TwodtmError`` or an invalid value, 1 for an operating
    system error (disk full, permission), 130 when interrupted with Ctrl-C, 143 with
    SIGTERM (``scancel``; the checkpoint is saved as for Ctrl-C). Warnings
    (e.g. a reduced batch size) are printed as one yellow line each. A run ended by
    a real SIGINT leaves the process at once (``_exit_now``).
    """
    with _counting_interrupts() as interrupts:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                status = _run_app()
        except SystemExit as exit_:
            if exit_.code == INTERRUPTED and interrupts.received:
                _exit_now(interrupts.status)
            raise
    if status == INTERRUPTED and interrupts.received:
        _exit_now(interrupts.status)
    raise SystemExit(status)
