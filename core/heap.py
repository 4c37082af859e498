"""Freed memory kept for reuse while a large computation runs (glibc's allocator; elsewhere nothing changes), and
one BLAS thread (:func:`one_blas_thread`, :func:`computing_block`).

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

Training uses the same block (:func:`dpaudit.audit.train.train` over its seeds, each run inside it, and federated
rounds): a DP-SGD step makes and drops per-sample gradients (64 x 0.41 M parameters = 105 MB for ResNet-9) and
activations of 32 MiB apiece at 64 px, and the kernel faulted in and zeroed about 400 MB per step: 190-270 of
the 950-1180 CPU ms a DP step of ResNet-9 took at 64 px were system time, 25 to 30 of the 180-210 at 28 px
(``bench/bench_train.py``). The weights learnt are the same bit for bit (a test checks); the peak resident memory
of the demo profile went from 1.56-1.63 to 1.80-1.85 GB. The attack
(:func:`dpaudit.attacks.reconstruction.run_attack`) runs in it too: 1.25-1.39x its one-pass floor at 224 px
against 1.37-1.56x (``bench/bench_attack.py``).

The settings restored are a choice, since any ``mallopt`` call ends glibc's adaptation and the policy cannot be
handed back as it was: an mmap threshold of 32 MiB, the ceiling glibc's adaptive rule may rise to (its
``malloc.c``: freeing an mmapped chunk of at most 32 MiB raises ``mp_.mmap_threshold`` to its size), and a trim
threshold of twice it, as that rule sets; the default 128 KiB, kept fixed, would map and fault in every array above
it for the rest of the process. The freed memory is given back only where the block grew the resident set by
:data:`TRIM_GROWTH` or more (``malloc_trim`` walks every free chunk and costs tens of milliseconds on a heap
fragmented by many small objects, which a loop of small bounds would pay on every call).

Blocks may nest and run in several threads (and in a signal handler: the lock is re-entrant): the outermost one
sets and restores. A process forked while a block is open (in any thread) starts with none open and glibc's
settings restored (``os.register_at_fork``); a block the child inherits mid-way then ends without touching them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
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
#: The growth of the resident set over the outermost block from which its freed memory is given back at its end.
TRIM_GROWTH = 64 * 1024 * 1024

_lock = threading.RLock()
_depth = 0
#: Bumped in a forked child (:func:`_after_fork`): a block opened before the fork ends without touching the count.
_generation = 0
_resident_at_entry = 0
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


#: An open descriptor of ``/proc/self/statm`` (None: not opened yet, or reopened after a fork; -1: unreadable).
_statm_fd: int | None = None


def _resident_bytes() -> int:
    """The process's resident set in bytes (``/proc/self/statm``), 0 where it cannot be read.

    Read with ``os.pread`` from a descriptor kept open (``O_CLOEXEC``; a forked child opens its own, since the
    parent's names the parent's process): opening the file through Python's I/O stack for each read cost about
    75 us per read right after another library's large computation (its caches cold), twice per bound, against
    20 us this way."""
    global _statm_fd
    if _statm_fd is None:
        try:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            _statm_fd = -1
    if _statm_fd < 0:
        return 0
    try:
        return int(os.pread(_statm_fd, 256, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


#: Whether a block has set glibc's policy in this process (:func:`_restore`): from then on, outside blocks too,
#: arrays up to ``ADAPTIVE_MMAP_CEILING`` come from the heap and up to twice that of freed memory stays there.
_restored = False


def _restore(libc: ctypes.CDLL) -> None:
    global _restored
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_MMAP_THRESHOLD, ADAPTIVE_MMAP_CEILING)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * ADAPTIVE_MMAP_CEILING)
    _restored = True


#: :func:`heap_keeps` counts a computation whose arrays are at most this many bytes apiece as kept by the restored
#: policy: a round of the bounds' refinement makes and drops some 20 arrays of its window's size, 40 MiB at 2 MiB
#: apiece, below the restored trim threshold (64 MiB).
KEPT_ARRAY_BYTES = 2 * 1024 * 1024


def heap_keeps(array_bytes: int) -> bool:
    """Whether glibc already serves, and keeps for reuse, arrays of ``array_bytes`` apiece outside any block: after
    a block has set the policy (:func:`_restore`: mmap threshold 32 MiB, trim threshold 64 MiB) for arrays up to
    :data:`KEPT_ARRAY_BYTES`; never before (glibc's own adaptive threshold trims its heap's top at twice the
    largest array freed so far, and the next call faults it in again). Off glibc: True (there is no block)."""
    if _glibc() is None:
        return True
    return _restored and array_bytes <= KEPT_ARRAY_BYTES


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Run the block with glibc keeping freed memory for reuse (see the module notes); a no-op off glibc.

    >>> with reuse_freed_memory():
    ...     sum(range(10))
    45
    """
    global _depth, _resident_at_entry
    libc = _glibc()
    if libc is None:
        yield
        return
    generation = None
    try:
        with _lock:
            _depth += 1
            generation = _generation
            if _depth == 1:
                _resident_at_entry = _resident_bytes()
                libc.mallopt(M_MMAP_MAX, 0)
                libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
        yield
    finally:
        with _lock:
            if generation is not None and generation == _generation:
                # Restore before counting the block closed: an interrupt (a second Ctrl-C while the first unwinds)
                # between the two then leaves a block counted open over glibc's own policy, never the reverse.
                if _depth == 1:
                    _restore(libc)
                    if _resident_bytes() - _resident_at_entry >= TRIM_GROWTH:
                        libc.malloc_trim(0)
                _depth -= 1


def _after_fork() -> None:
    """In a forked child: no block is open (the threads that opened them are not in the child) and glibc's
    settings are restored; blocks inherited mid-way end without touching the count."""
    global _lock, _depth, _generation, _statm_fd
    _lock = threading.RLock()
    _generation += 1
    if _statm_fd is not None and _statm_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(_statm_fd)  # (the child's copy of the parent's descriptor, which reads the parent's statm)
    _statm_fd = None
    if _depth:
        _depth = 0
        if isinstance(_libc, ctypes.CDLL):
            _restore(_libc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


#: threadpoolctl's view of the BLAS libraries loaded when a block first ran (formed once: about 3 ms), or None.
_blas: list = []


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one thread in every BLAS library loaded (OpenBLAS, MKL, BLIS; ``threadpoolctl``), and
    their earlier settings back after it; a no-op where threadpoolctl is missing.

    The bounds' matrix-vector products (the accurate route's spectrum sums, the epsilon reader's block sums) are
    small or memory-bound: OpenBLAS woke its worker threads for each and they spun after it, which cost more than it
    saved: epsilon at sigma 0.5, q 1e-6, T 1e6 took 2.04 s wall and 2.34 s CPU on 2 cores, 1.31 s of both with one
    thread (the same numbers: each output element is summed by one thread either way). Blocks in several threads
    at once may hand each other back the earlier setting early (only slower, never different numbers)."""
    if not _blas:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas.append(None)
        else:
            import warnings

            with warnings.catch_warnings():  # (its note on two OpenMP runtimes loaded at once is not ours to print)
                warnings.simplefilter("ignore", RuntimeWarning)
                _blas.append(ThreadpoolController())
    controller = _blas[0]
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def computing_block() -> Iterator[None]:
    """:func:`reuse_freed_memory` and :func:`one_blas_thread` together: what the bounds' loops over many refinements
    run in (calibrations, :func:`dpaudit.bounds.bounds_summary`). A single refinement
    (:func:`dpaudit.bounds.pld.refine`) opens only the first, and only from its first round of FFT windows of
    ``HEAP_BLOCK_WINDOW`` points; BLAS is held to one thread around the bounds' matrix-vector products themselves."""
    with reuse_freed_memory(), one_blas_thread():
        yield
