"""Seconds per engine stage: the one timing hook of ``search_orientations``.

A ``StageClock`` passed to ``engine.search_orientations`` adds the wall time of
each stage of the engine's loop to its total; on CUDA it synchronises the
device before and after every stage, so that each stage is charged its own
kernels (which slows the search: pass one only to measure). Without a clock the
engine runs exactly as it does unmeasured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

__all__ = ["STAGES", "StageClock", "timed"]

# The engine's stages, in the order of its loop.
STAGES = (
    "slice_extraction",
    "forward_fft",
    "norms",
    "multiply",
    "inverse_fft",
    "reduction",
)


class StageClock:
    """Accumulates seconds per stage of the engine (``STAGES``).

    Parameters
    ----------
    device : torch.device or str
        Device the engine runs on; CUDA is synchronised around every stage.

    Attributes
    ----------
    seconds : dict[str, float]
        Total wall time of each stage so far.

    Examples
    --------
    >>> clock = StageClock("cpu")
    >>> with clock.stage("multiply"):
    ...     _ = torch.ones(4) * 2
    >>> clock.seconds["multiply"] > 0.0, clock.seconds["inverse_fft"]
    (True, 0.0)
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the wall time of the ``with`` block to stage ``name``."""
        if name not in self.seconds:
            raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.seconds[name] += time.perf_counter() - start


def timed(clock: StageClock | None, name: str) -> AbstractContextManager[None]:
    """``clock.stage(name)``, or a context that does nothing without a clock."""
    return nullcontext() if clock is None else clock.stage(name)
