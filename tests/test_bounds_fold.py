"""Per-step grids longer than the composed FFT window: folded onto it (exact), or refused before they are formed.

At small q with k > 1 the per-step loss reaches 70 nats with vanishing mass while the composed loss stays within 26
nats by Chernoff (sigma 0.5, q 1e-6, k 5, T 1e4): the window used to be as long as the per-step grid, 2.6x the
Chernoff window. And a refinement round whose per-step grid could never fit a window formed it first (7e7 points,
600 MB at sigma 0.5, q 1e-6, T 1e6), only to be refused by the composition.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import dpaudit.bounds.pld as pld
from dpaudit.bounds._mechanism import StepPair
from dpaudit.bounds.pld import (
    INF_BUDGET,
    MAX_WINDOW,
    TAIL_BOUND,
    WindowTooLargeError,
    _fold,
    _step_pld,
    compose_parts,
)


def test_fold_keeps_the_circular_convolution() -> None:
    # The composition of folded sequences in a window of W points is the full convolution folded modulo W.
    rng = np.random.default_rng(3)
    x, y, width = rng.random(1000), rng.random(700), 256
    full = np.convolve(x, y)
    circular = np.fft.irfft(np.fft.rfft(_fold(x, width)) * np.fft.rfft(_fold(y, width)), n=width)
    np.testing.assert_allclose(circular, _fold(full, width), rtol=1e-12, atol=1e-12 * full.max())
    assert _fold(x, 2000) is x  # a grid that fits the window is used as it is


@pytest.mark.parametrize("optimistic", [False, True])
def test_folded_composition_reads_as_the_long_window(
    monkeypatch: pytest.MonkeyPatch, optimistic: bool
) -> None:
    pair, steps, h = StepPair(0.5, 1e-6, 5, "relaxed"), 10_000, 1e-4
    step = _step_pld(pair, h, "remove", INF_BUDGET / steps, optimistic)
    folded = compose_parts([(step, steps)])
    monkeypatch.setattr(pld, "FOLD_STEPS", False)
    long = compose_parts([(step, steps)])
    assert (
        step.masses.size >= pld.FOLD_SAVING * folded.masses.size
    )  # the grid (68 nats) is folded onto the Chernoff window
    assert long.masses.size >= step.masses.size
    assert (folded.lo, folded.offset) == (long.lo, long.offset)
    n = folded.masses.size
    # The same composed masses in the Chernoff window, up to the FFT's round-off and the mass outside the window
    # (Chernoff: at most TAIL_BOUND on each side), which wraps to other places in windows of other lengths.
    tol = 8 * max(folded.noise, long.noise)
    beyond = np.maximum(np.abs(folded.masses - long.masses[:n]) - tol, 0.0)
    assert float(beyond.sum()) <= 2 * TAIL_BOUND
    kappa = np.array([1e-6, 1e-3, 0.1])
    if optimistic:
        np.testing.assert_allclose(folded.power_lower(kappa), long.power_lower(kappa), rtol=1e-3)
        assert folded.epsilon_lower(1e-5) == pytest.approx(long.epsilon_lower(1e-5), rel=1e-4)
    else:
        np.testing.assert_allclose(folded.power(kappa), long.power(kappa), rtol=1e-4)
        assert folded.epsilon(1e-5) == pytest.approx(long.epsilon(1e-5), rel=1e-4)
        assert folded.infinity_mass == long.infinity_mass


@pytest.mark.parametrize("optimistic", [False, True])
@pytest.mark.parametrize("direction", ["remove", "add"])
def test_step_grid_past_the_window_is_refused_unformed(direction: str, optimistic: bool) -> None:
    # sigma 0.5, q 1e-6, T 1e6 at h = 1e-8: 7e8 points to 7 nats (5 GB), refused before any is formed.
    pair = StepPair(0.5, 1e-6)
    tracemalloc.start()
    try:
        with pytest.raises(WindowTooLargeError, match="grid points"):
            _step_pld(pair, 1e-8, direction, INF_BUDGET / 1_000_000, optimistic, MAX_WINDOW)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_fold_adds_the_stretches_as_the_padded_rows_sum() -> None:
    # _fold adds each further stretch of `width` atoms in turn, without forming the zero-padded (rows, width) copy
    # whose sum over rows it replaces: the same numbers bit for bit (x + 0 = x), for one row or many, a last stretch
    # full or partial, and masses spread over 1e-300..1 (the per-step grids' tails).
    rng = np.random.default_rng(11)

    def padded(masses, width):
        if masses.size <= width:
            return masses
        rows = np.zeros(-(-masses.size // width) * width)
        rows[:masses.size] = masses
        return rows.reshape(-1, width).sum(axis=0)

    for n, width in ((10, 3), (9, 3), (1001, 1000), (1000, 7), (100_003, 4096), (2_000_000, 737_280)):
        masses = rng.random(n) * np.exp(-rng.uniform(0.0, 690.0, n))
        assert np.array_equal(_fold(masses, width), padded(masses, width))
