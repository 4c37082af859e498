"""Freed memory kept for reuse during the bounds' compositions (dpaudit.heap): only where memory comes from changes.

References: the same computation without the block (bit for bit), the in-place spectrum power against the copying
one (bit for bit), and glibc's allocator serving large arrays inside the block from any thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import dpaudit.bounds.pld as pld
from dpaudit import heap
from dpaudit.bounds import epsilon_bound, rero_bound
from dpaudit.bounds.pld import _int_power, _spectrum_power, clear_caches


@pytest.mark.parametrize("steps", (2, 3, 99, 300, 1000, 65537))
def test_in_place_power_is_the_copying_one_bit_for_bit(steps: int) -> None:
    # Every frequency live (|z| near 1, as a spike-like step's spectrum at T 300) and some dead ones.
    rng = np.random.default_rng(steps)
    for scale in (1e-9, 1.0):
        z = np.exp(1j * rng.uniform(-np.pi, np.pi, 4097)) * (1.0 - rng.uniform(0.0, scale / steps, 4097))
        want = _spectrum_power(z.copy(), steps)
        got = _spectrum_power(z.copy(), steps, overwrite=True)
        assert np.array_equal(got.view(np.float64), want.view(np.float64))
        assert np.array_equal(_int_power(z.copy(), steps, overwrite=True).view(np.float64),
                              _int_power(z, steps).view(np.float64))


def test_the_block_nests_and_restores() -> None:
    with heap.reuse_freed_memory():
        with heap.reuse_freed_memory():
            assert heap._depth in (0, 2)  # 0 off glibc: nothing is counted
        assert heap._depth in (0, 1)
    assert heap._depth == 0
    with pytest.raises(ZeroDivisionError), heap.reuse_freed_memory():
        raise ZeroDivisionError
    assert heap._depth == 0


def test_large_arrays_inside_the_block_from_threads() -> None:
    # With mmap off, a thread's own arena cannot hold 200 MB: glibc must fall back to the main heap, not fail.
    sums = []

    def work() -> None:
        a = np.ones(25_000_000)
        sums.append(float(a.sum()))

    with heap.reuse_freed_memory():
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        work()
    assert sums == [25_000_000.0] * 3


def test_bounds_are_the_same_bit_for_bit_without_the_block(monkeypatch) -> None:
    # The slowest epsilon corner of bench_bounds (window 9.6e6 points) is too slow for the default run; a smaller
    # window of the same kind (spike-like step at small q, every frequency live) and a relaxed ReRo run.
    def values():
        clear_caches()
        eps = epsilon_bound(0.5, 1e-5, 30, 1e-5).value
        clear_caches()
        gamma = rero_bound(1.0, 0.01, 1000, [1e-6, 1e-3, 0.1], threat_model="relaxed", records_per_patient=2).gamma
        return eps, [float(g) for g in gamma]

    with_block = values()
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    monkeypatch.setattr(pld, "_spectrum_power", lambda z, steps, masses=None, width=None, overwrite=False:
                        _spectrum_power(z, steps, masses, width))
    assert values() == with_block
