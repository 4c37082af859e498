"""Freed memory kept for reuse while a large computation runs (glibc's allocator; elsewhere nothing changes).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives it back to
the kernel at ``free``. The bounds' compositions (:mod:`dpaudit.bounds.pld`) make and drop arrays of tens to
hundreds of MiB several times per FFT (the spectrum, its power, the composed masses), so every one of them was
faulted in page by page and zeroed by the kernel again: at sigma 0.5, q 1e-6, T 300 (an FFT window of 9.6e6
points) 2.6 s of the 4.2 s the epsilon took were system time. :func:`reuse_freed_memory` has glibc serve them from
its heap and keep what is freed there while the block runs (``mallopt``: ``M_MMAP_MAX`` 0, no trimming), then
restores a threshold policy and gives the freed memory back (``malloc_trim``). Only where memory comes from changes:
every computed number is the same bit for bit. The peak resident memory can be higher by up to about a fifth (a
freed block too small for the next request stays in the heap beside the new one): 647 -> 789 MB for epsilon at
sigma 0.5, q 1e-6, T 1e6; 509 -> 556 MB for the relaxed bound at k 5 there.

The settings restored are the steady state glibc's own adaptive rule reaches once the process has freed an array
of 32 MiB or more (which such a block always has): an mmap threshold of 32 MiB and a trim threshold of twice it
(glibc's ``malloc.c``: ``mp_.mmap_threshold``, ``mp_.trim_threshold``; any ``mallopt`` call ends the adaptation,
so it cannot be handed back as it was). Blocks may nest and run in several threads: the outermost one sets and
restores.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterator

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: glibc's default cap on simultaneous mmapped chunks, and its adaptive mmap threshold's ceiling on 64-bit systems.
DEFAULT_MMAP_MAX = 65536
ADAPTIVE_MMAP_CEILING = 32 * 1024 * 1024
#: The trim threshold while a block runs: the largest ``mallopt`` takes (an int), i.e. never trim.
KEEP_ALL = 2**31 - 1

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | bool | None = False  # False: not looked up yet; None: not glibc


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (``gnu_get_libc_version`` present), else None."""
    global _libc
    if _libc is False:
        found = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)
                version = libc.gnu_get_libc_version
                version.restype = ctypes.c_char_p
                version.argtypes = []
                if version():
                    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    libc.mallopt.restype = ctypes.c_int
                    libc.malloc_trim.argtypes = [ctypes.c_size_t]
                    libc.malloc_trim.restype = ctypes.c_int
                    found = libc
            except (OSError, AttributeError):  # musl, or no C library symbols: leave the allocator alone
                found = None
        _libc = found
    return _libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Run the block with glibc keeping freed memory for reuse (see the module notes); a no-op off glibc.

    >>> with reuse_freed_memory():
    ...     sum(range(10))
    45
    """
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_MMAP_THRESHOLD, ADAPTIVE_MMAP_CEILING)
                libc.mallopt(M_TRIM_THRESHOLD, 2 * ADAPTIVE_MMAP_CEILING)
                libc.malloc_trim(0)
