"""Host memory (shared, private): keep freed memory so large CPU FFTs stop faulting.

torch's CPU FFT (MKL) takes a work buffer the size of the transform on every call.
At 4096^2 that is 128 MB, above glibc's largest mmap threshold (32 MB), so every
buffer is a fresh mapping whose pages fault in one by one: measured 90 ms of
system time in a 170 ms complex transform. Two settings remove it:

* MKL's own memory manager is switched off (``MKL_DISABLE_FAST_MM``), so MKL
  allocates through malloc; the variable is read when MKL loads, so it must be in
  the environment before torch is imported (``prepare_environment``, called by the
  command line before anything imports torch, and inherited by worker processes);
* glibc serves large blocks from its heap and keeps them when freed
  (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD`` -1: never trim), so the next buffer
  reuses pages already mapped (``retain_freed_memory``, called where a search
  starts). glibc still falls back to mmap where its heap cannot grow.

The cost is a resident size that stays at its peak until the process ends. Set
``TWODTM_SYSTEM_ALLOCATOR=1`` to leave both untouched. Elsewhere than Linux with
glibc both functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

__all__ = ["prepare_environment", "retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = -1  # M_TRIM_THRESHOLD -1 disables trimming (mallopt(3))


def _enabled() -> bool:
    return sys.platform.startswith("linux") and not os.environ.get(
        "TWODTM_SYSTEM_ALLOCATOR"
    )


def prepare_environment() -> None:
    """Switch MKL's memory manager off if torch is not loaded yet (else no-op)."""
    if _enabled() and "torch" not in sys.modules:
        os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")


@cache
def retain_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse (once per process).

    Returns
    -------
    bool
        Whether the allocator was changed (False off glibc or when opted out).
    """
    if not _enabled():
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _NEVER))
