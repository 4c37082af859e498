"""The two-level composition's block size (bounds/pld.py, _block_size): the search for a block that divides T
tries at most DIVISOR_SEARCH candidates, so that a huge step count (a history of 1e30 steps) costs bounded work,
and gives the same block as before wherever the search was already that short (T up to about 1.9e8)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpaudit.bounds import pld
from dpaudit.bounds._mechanism import StepPair


def _uncapped(steps: int) -> int:
    """Regression reference: the search as it was before the cap (every candidate up to 30% above sqrt(T))."""
    block = round(math.sqrt(steps))
    return next((m for m in range(block, int(1.3 * block) + 1) if steps % m == 0), block)


class CountingSteps(int):
    """A step count that counts the remainders taken of it: the search's work, whatever the machine's speed."""

    calls = 0

    def __mod__(self, other: int) -> int:
        CountingSteps.calls += 1
        return int(self) % other


def test_the_block_is_the_same_as_before_wherever_the_search_was_short() -> None:
    rng = np.random.default_rng()
    # T from TWO_LEVEL_STEPS to the largest whose 30% range holds DIVISOR_SEARCH candidates, and primes (no divisor)
    limit = int((pld.DIVISOR_SEARCH / 0.3) ** 2)
    cases = [*range(pld.TWO_LEVEL_STEPS, 20_000), *rng.integers(20_000, limit, size=2000).tolist(), 1_000_003,
             999_999_937, limit]
    for steps in cases:
        assert pld._dividing_block(steps, round(math.sqrt(steps))) == _uncapped(steps), steps


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 0.01, 1000), (1.0, 0.001, 10_000), (0.8, 0.004, 250_000),
                                                   (2.0, 1e-4, 1_000_003), (1.0, 0.01, 36_000_000)])
def test_block_size_of_ordinary_runs_is_unchanged(sigma: float, q: float, steps: int) -> None:
    run = ((StepPair(sigma, q), steps),)
    for h in (1e-4, 1e-3, 1e-2):
        block = pld._block_size(run, h)
        assert block is None or block == _uncapped(steps)


def test_a_huge_step_count_costs_bounded_work_and_composes_every_step() -> None:
    steps = CountingSteps(int(1e30))  # as a history's JSON number 1e30 reads
    CountingSteps.calls = 0
    block = pld._dividing_block(steps, round(math.sqrt(steps)))
    assert CountingSteps.calls <= pld.DIVISOR_SEARCH
    # No divisor among the candidates: the block stays sqrt(T), and composed_run adds the T % m steps left over
    # (sound: every one of the T steps is composed, never fewer).
    assert block == round(math.sqrt(int(steps))) and (int(steps) // block) * block + int(steps) % block == int(steps)
    CountingSteps.calls = 0
    pld._block_size(((StepPair(1.0, 0.01), steps),), 1e-3)
    assert CountingSteps.calls <= pld.DIVISOR_SEARCH
