"""Bounds at small sampling probability (q <= 1e-4) and long runs, against dp_accounting 0.6.0.

There the per-step privacy loss spans micro-nats (it is about q (e^{x - 1/2} - 1) at sigma 1), so the grid steps are
1e-7..1e-9 nats. Two faults showed there: the connect-the-dots split of each loss interval lost its round-off
(about ulp / h of the interval's mass) to the infinity atom, which T = 1e6 steps added up (sigma 1, q 1e-6, T 1e6,
kappa 1e-6: 2.0e-4 for an exact 1.006e-6; epsilon 0.278 for 0.0027); and the refinement went on halving where the
lower end's FFT round-off guard, not the grid, kept the bracket open (minutes of rounds, each worse).

References: dp_accounting's pessimistic connect-the-dots PLD (``bench/bench_bounds.py``: ``reference_gamma`` and
``reference_epsilon``), a sound upper bound at any interval; at these q it converges from above only at intervals of
1e-5 and finer, so our upper end may lie below its value but never more than 1e-3 above, and our proven lower end
never above it.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from dpaudit.bounds import epsilon_bound, rero_bound
from dpaudit.bounds._mechanism import StepPair
from dpaudit.bounds.pld import INF_BUDGET, _step_pld, clear_caches

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytest.importorskip("dp_accounting")

KAPPA = 1e-6


def _reference_gamma(sigma: float, q: float, steps: int, interval: float) -> float:
    from bench_bounds import reference_gamma

    return reference_gamma(sigma, q, steps, KAPPA, interval)


@pytest.mark.parametrize(("sigma", "q", "steps", "interval"), [
    (1.0, 1e-6, 1_000_000, 2e-6),
    pytest.param(0.5, 1e-5, 10_000, 1e-5, marks=pytest.mark.slow),  # dp_accounting: 15 s at 1e-5
])
def test_worst_case_matches_dp_accounting_live(sigma: float, q: float, steps: int, interval: float) -> None:
    clear_caches()
    b = rero_bound(sigma, q, steps, KAPPA)
    ref = _reference_gamma(sigma, q, steps, interval)
    assert b.lower[0] <= ref  # both ends are sound: our lower end never above another sound upper bound
    assert b.gamma[0] <= ref * (1 + 1e-3)
    assert b.lower[0] <= b.gamma[0]
    assert b.gamma[0] - b.lower[0] <= 2e-3 * b.gamma[0]  # the bracket is honest and narrow (round-off floor: 1.4e-3)


#: dp_accounting 0.6.0 at interval 1e-5 (11 s): ``reference_gamma(0.5, 1e-5, 1_000_000, 1e-6, 1e-5)`` of
#: bench/bench_bounds.py; at 1e-4 it gives 3.44564e-6 (converging from above).
REF_S05_Q1E5_T1E6 = 3.4393360287215608e-06


def test_worst_case_long_run_matches_stored_dp_accounting() -> None:
    clear_caches()
    b = rero_bound(0.5, 1e-5, 1_000_000, KAPPA)
    assert b.lower[0] <= REF_S05_Q1E5_T1E6 <= b.gamma[0] * (1 + 1e-3)
    assert b.gamma[0] <= REF_S05_Q1E5_T1E6 * (1 + 1e-3)


def test_relaxed_below_worst_case_at_small_q() -> None:
    # sigma 5, q 1e-5, T 1e6, k 5: the relaxed bound was 6.9e-3 (round-off sent to the infinity atom), while the
    # worst-case adversary, which is stronger, is bounded by 1.05e-6.
    clear_caches()
    worst = rero_bound(5.0, 1e-5, 1_000_000, KAPPA, records_per_patient=5)
    relaxed = rero_bound(5.0, 1e-5, 1_000_000, KAPPA, threat_model="relaxed", records_per_patient=5)
    assert KAPPA <= relaxed.lower[0] <= relaxed.gamma[0] <= worst.gamma[0] < 1.06e-6
    assert relaxed.gamma[0] - relaxed.lower[0] <= 5e-4 * relaxed.gamma[0]


def test_monotone_in_q_and_sigma_at_small_q() -> None:
    clear_caches()
    by_q = [rero_bound(1.0, q, 1_000_000, KAPPA) for q in (1e-6, 1e-5, 1e-4)]
    for a, b in itertools.pairwise(by_q):
        assert a.gamma[0] <= b.gamma[0]
        assert a.lower[0] <= b.gamma[0]
    by_sigma = [rero_bound(s, 1e-5, 10_000, KAPPA) for s in (0.5, 1.0, 5.0)]
    for a, b in itertools.pairwise(by_sigma):
        assert b.gamma[0] <= a.gamma[0]
    eps = [epsilon_bound(s, 1e-6, 1_000_000, 1e-5).value for s in (1.0, 5.0)]
    assert eps[1] <= eps[0]


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 1e-6, 1_000_000), (5.0, 1e-6, 1_000_000)])
def test_epsilon_below_dp_accounting_live(sigma: float, q: float, steps: int) -> None:
    # epsilon 0.278 and 0.103 before (the infinity atom above delta); dp_accounting at 2e-6 gives 0.0033 and 0.00097,
    # still converging from above (its interval is as large as epsilon).
    from bench_bounds import reference_epsilon

    clear_caches()
    ours = epsilon_bound(sigma, q, steps, 1e-5)
    assert ours.accountant == "pld"
    assert ours.value <= reference_epsilon(sigma, q, steps, 1e-5, 2e-6)


#: dp_accounting 0.6.0 at interval 2e-6 (47 s): ``reference_epsilon(0.5, 1e-5, 10_000, 1e-5, 2e-6)`` of
#: bench/bench_bounds.py (0.0703918 at 1e-5: converged to 2e-5 relative).
REF_EPS_S05_Q1E5_T1E4 = 0.07038958737053432


def test_epsilon_matches_stored_dp_accounting() -> None:
    from dpaudit.bounds.pld import epsilon_pld_refined
    from dpaudit.bounds.schedule import Schedule

    clear_caches()
    r = epsilon_pld_refined(Schedule.single(0.5, 1e-5, 10_000).run(), None, 1e-5)
    assert r.lower[0] <= REF_EPS_S05_Q1E5_T1E4 * (1 + 2e-5)
    assert REF_EPS_S05_Q1E5_T1E4 <= r.value[0] * (1 + 1e-3) and r.value[0] <= REF_EPS_S05_Q1E5_T1E4 * (1 + 1e-3)


@pytest.mark.parametrize("direction", ["remove", "add"])
def test_split_keeps_the_mass_at_micro_nat_grid_steps(direction: str) -> None:
    # sigma 1, q 1e-6 at h = 4e-9 nats: the per-step infinity atom was 2.0e-10 (the split's round-off); it may hold
    # only the tail cut's mass (INF_BUDGET / T), and the finite atoms the rest of the Q-mass.
    pair = StepPair(1.0, 1e-6, 1, "worst_case")
    step = _step_pld(pair, 4e-9, direction, INF_BUDGET / 1_000_000)
    assert step.infinity_mass <= INF_BUDGET / 1_000_000
    assert math.isclose(float(np.sum(step.masses)) + step.infinity_mass, 1.0, rel_tol=0, abs_tol=1e-12)
