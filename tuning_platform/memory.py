"""The driver hands the memory it has freed back to the system while a long job runs.

glibc's malloc keeps the memory a process frees in its arenas, for the process to use again,
and gives back only what is left free at the top of its main heap. Tune's loop, the writer of
the trial runs and Optuna free a few hundred KB per trial between chunks that stay in use, so
the free memory keeps its pages: at 5,000 trivial trials the driver held about 90 MB of freed
but resident memory more for every 1,700 trials (benchmarks/README.md, 4b). `malloc_trim(0)`
returns the free pages of every arena (glibc 2.8 and later); Dask's workers do the same.

Off Linux, or on a C library without `malloc_trim` (musl), this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

logger = logging.getLogger(__name__)

# Seconds between two trims: one takes a few ms on a 1 GiB driver (benchmarks/README.md, 4b).
TRIM_EVERY_S = 10.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def return_freed_memory() -> bool:
    """Freed memory back to the system now; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class FreedMemoryReturned(Callback):
    """Freed memory back to the system every `every_s` seconds of a Tune run, at the end of a
    step of Tune's loop (the driver's main thread)."""

    def __init__(self, every_s: float = TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            return_freed_memory()
            self._last = time.monotonic()
