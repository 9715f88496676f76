"""Giving freed heap memory back to the OS between CPU training updates (glibc only; elsewhere a no-op).

CPU tensors come from glibc malloc. After the first large frees glibc raises its mmap threshold (up to 32 MiB),
so activations are carved from the arenas, and batches of varying shape leave freed chunks there that stay
resident. Pretraining config/pretraining/demo.yaml (max_tokens 400000, 1.1 M parameters) held about 160 MiB of
live heap but 1.8 GiB of free arena memory after 60 updates (RSS 2.2 GiB, still rising; genuine fairseq 0.12.2
peaks at 2.3 GiB over the same 60 updates). ``malloc_trim(0)`` returns the free pages (madvise), keeping the heap's
layout; fairseq has no counterpart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

#: resident growth (bytes) over the first update after the last trim that triggers the next one: a step's own
#: transients are refaulted after each trim (trimming after every update cost about 25 % more CPU per update), so
#: only growth is trimmed: in 60 demo updates 18 trims at max_tokens 400000 (peak RSS 2.5 -> 1.36 GiB), 6 at
#: 100000 (1.0 -> 0.85 GiB)
TRIM_AFTER_GROWTH = 256 * 2**20


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): sizes in bytes, summed over every arena."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load_glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc with ``mallinfo2`` and ``malloc_trim``; None otherwise (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_GLIBC = _load_glibc()


def resident_bytes() -> int:
    """This process's resident set (/proc/self/status VmRSS)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def release_free_heap() -> bool:
    """``malloc_trim(0)``: free arena pages back to the OS; False without glibc."""
    if _GLIBC is None:
        return False
    _GLIBC.malloc_trim(0)
    return True


class HeapTrimmer:
    """Called after every CPU update: trims when the resident set has grown by more than ``growth`` bytes since
    the end of the first update after the previous trim (that update refaults the step's own transients)."""

    def __init__(self, growth: int = TRIM_AFTER_GROWTH):
        self.growth = growth
        self.reference: Optional[int] = None
        self.trims = 0

    def after_update(self) -> bool:
        """Whether this update trimmed."""
        if _GLIBC is None:
            return False
        rss = resident_bytes()
        if self.reference is None:
            self.reference = rss
            return False
        if rss <= self.reference + self.growth:
            return False
        self.trims += release_free_heap()
        self.reference = None
        return True
