"""Epsilon's deep reads: the crossing located on block sums first (:func:`_skip_blocks`), then one block read. Equal to
the plain chunk-by-chunk read up to the round-off of the carries, at both ends of the bracket, and epsilon equal to
the plain route within its proven bracket on a grid with its extremes (sigma 0.05 and 50, q 1e-6 and 1, T 1 and
1e6)."""

from __future__ import annotations

import itertools
import math

import pytest

import dpaudit.bounds.pld as pld
from dpaudit.bounds._mechanism import StepPair
from dpaudit.bounds.pld import clear_caches, composed_pld, epsilon_pld_refined

PLAIN = 1 << 62  # COARSE_READ past any window: the plain read


@pytest.mark.parametrize(("sigma", "q", "steps", "h"), [(0.5, 1e-6, 300, 2e-5), (1.0, 0.01, 1000, 1e-3),
                                                        (0.2, 0.1, 10, 1e-3), (5.0, 1e-3, 10_000, 1e-5)])
@pytest.mark.parametrize("optimistic", [False, True])
@pytest.mark.parametrize("delta", [1e-12, 1e-5, 0.3])
def test_deep_read_equals_the_plain_read(monkeypatch, sigma, q, steps, h, optimistic, delta) -> None:
    clear_caches()
    composed = composed_pld(StepPair(sigma, q), steps, h, "remove", optimistic)
    guard = composed.noise_guard if optimistic else 0.0
    with monkeypatch.context() as m:
        m.setattr(pld, "COARSE_READ", PLAIN)
        plain = composed._epsilon(delta, composed.infinity_mass, guard)
    for read, block in ((4096, 64), (4096, 4096), (1 << 16, 4096)):  # small blocks: many skipped, also past the end
        with monkeypatch.context() as m:
            m.setattr(pld, "COARSE_READ", read)
            m.setattr(pld, "COARSE_BLOCK", block)
            deep = composed._epsilon(delta, composed.infinity_mass, guard)
            hinted = composed._epsilon(delta, composed.infinity_mass, guard, composed.masses.size)
        for got in (deep, hinted):
            assert (got == plain) or math.isclose(got, plain, rel_tol=1e-9, abs_tol=1e-12)
    clear_caches()


@pytest.mark.parametrize(("sigma", "q", "steps"), list(itertools.product((0.05, 50.0), (1e-6, 1.0), (1, 1_000_000))))
def test_epsilon_equals_the_plain_read_within_its_bracket(monkeypatch, sigma, q, steps) -> None:
    clear_caches()
    deep = epsilon_pld_refined(StepPair(sigma, q), steps, 1e-5)
    with monkeypatch.context() as m:
        m.setattr(pld, "COARSE_READ", PLAIN)
        clear_caches()
        plain = epsilon_pld_refined(StepPair(sigma, q), steps, 1e-5)
    clear_caches()
    width = float(plain.value[0] - plain.lower[0]) if plain.lower is not None else 0.0
    assert abs(float(deep.value[0]) - float(plain.value[0])) <= width + 1e-12 * abs(float(plain.value[0]))


@pytest.mark.slow
def test_small_q_short_run_equals_the_plain_read(monkeypatch) -> None:
    # sigma 0.5, q 1e-6, T 300: the crossing lies at the bottom of a 1.2e7-atom window (5 nats at h 4e-7).
    clear_caches()
    deep = epsilon_pld_refined(StepPair(0.5, 1e-6), 300, 1e-5)
    with monkeypatch.context() as m:
        m.setattr(pld, "COARSE_READ", PLAIN)
        clear_caches()
        plain = epsilon_pld_refined(StepPair(0.5, 1e-6), 300, 1e-5)
    clear_caches()
    assert abs(float(deep.value[0]) - float(plain.value[0])) <= float(plain.value[0] - plain.lower[0])
