"""The typer application, its console and progress bar, and the error-handling entry."""

from __future__ import annotations

import warnings
from typing import TextIO

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from twodtm.errors import TwodtmError
from twodtm.memory import is_out_of_memory

BAD_INPUT = 2
FAILED = 1
INTERRUPTED = 130
_MEMORY_ADVICE = (
    "lower compute.batch_size, search fewer defocus or pixel-size values, or use a "
    "device with more memory"
)
_INTERRUPTED_TEXT = (
    "interrupted (Ctrl-C); outputs are written atomically, so every file present "
    "is complete."
)

app = typer.Typer(
    name="twodtm",
    help="Two-dimensional template matching of cryo-EM micrographs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def correlation_progress() -> Progress:
    """Make a progress bar showing work done, correlations per second and time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def fail(message: str) -> None:
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
            fail(_INTERRUPTED_TEXT)
        raise
    except KeyboardInterrupt:
        fail(_INTERRUPTED_TEXT)
        return INTERRUPTED
    except TwodtmError as err:
        fail(str(err))
        return BAD_INPUT
    except ValidationError as err:
        fail(_validation_text(err))
        return BAD_INPUT
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        fail(
            f"{where}{err.strerror or err}; check the path, permissions and free space."
        )
        return FAILED
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        first_line = (str(err).strip().splitlines() or ["no details"])[0]
        fail(f"out of memory ({first_line}); {_MEMORY_ADVICE}")
        return FAILED
    return 0


def main() -> None:
    """Entry point: run the app; bad input ends as one red line, never a traceback.

    Exit status: 2 for a ``TwodtmError`` or an invalid value, 1 for an operating
    system error (disk full, permission), 130 when interrupted with Ctrl-C. Warnings
    (e.g. a reduced batch size) are printed as one yellow line each.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        status = _run_app()
    raise SystemExit(status)
