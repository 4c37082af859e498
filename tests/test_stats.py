"""Utility statistics: Student-t intervals and Welch's t-test, against scipy.stats and by simulated coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dpaudit.audit.stats import mean_interval, welch_test


def test_interval_matches_scipy(rng) -> None:
    for n in (2, 3, 5, 12):
        x = rng.normal(0.4, 0.1, n)
        r = mean_interval(list(x))
        lo, hi = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))  # independent reference
        assert r.n == n
        assert math.isclose(r.mean, x.mean(), rel_tol=1e-12)
        assert math.isclose(r.low, lo, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(r.high, hi, rel_tol=1e-9, abs_tol=1e-12)


def test_interval_edge_cases() -> None:
    assert mean_interval([]).mean is None
    one = mean_interval([0.7, None, float("nan")])
    assert one.n == 1 and one.mean == 0.7 and one.low is None and one.high is None
    const = mean_interval([0.5, 0.5, 0.5])
    assert const.low == const.high == 0.5


def test_interval_coverage_by_simulation(rng) -> None:
    """95% intervals from 3 normal draws cover the true mean 95% of the time (binomial tolerance, 4 sigma)."""
    trials, n, mu = 4000, 3, 0.3
    draws = rng.normal(mu, 0.2, (trials, n))
    covered = sum(r.low <= mu <= r.high for r in (mean_interval(list(row)) for row in draws))
    sd = math.sqrt(0.95 * 0.05 / trials)
    assert abs(covered / trials - 0.95) < 4 * sd


@pytest.mark.parametrize("na, nb", [(2, 2), (2, 5), (3, 3), (10, 4)])
def test_welch_matches_scipy(rng, na, nb) -> None:
    a, b = rng.normal(0.5, 0.1, na), rng.normal(0.6, 0.3, nb)
    w = welch_test(list(a), list(b))
    ref = sps.ttest_ind(a, b, equal_var=False)  # independent reference
    assert math.isclose(w.t, ref.statistic, rel_tol=1e-9)
    assert math.isclose(w.p_value, ref.pvalue, rel_tol=1e-8)
    assert math.isclose(w.difference, a.mean() - b.mean(), rel_tol=1e-12, abs_tol=1e-15)


def test_welch_without_variance_estimate() -> None:
    w = welch_test([0.5], [0.6, 0.7])
    assert w.p_value is None and w.distinguishable() is None and math.isclose(w.difference, -0.15)
    assert welch_test([0.5, 0.5], [0.5, 0.5]).p_value == 1.0
    assert welch_test([0.5, 0.5], [0.7, 0.7]).p_value == 0.0


def test_welch_false_positive_rate_by_simulation(rng) -> None:
    """Under equal means (unequal variances) p < 0.05 in about 5% of samples (Welch is near exact here)."""
    trials = 3000
    hits = 0
    for _ in range(trials):
        a, b = rng.normal(0.0, 1.0, 4), rng.normal(0.0, 3.0, 6)
        hits += welch_test(list(a), list(b)).p_value < 0.05
    sd = math.sqrt(0.05 * 0.95 / trials)
    assert abs(hits / trials - 0.05) < 4 * sd + 0.01  # Welch's dof approximation is slightly off at n = 4


def test_nonfinite_values_are_refused() -> None:
    from dpaudit.errors import ConfigError

    with pytest.raises(ConfigError, match="values"):
        mean_interval([0.1, float("inf")])
    assert np.isfinite(welch_test([1, 2], [3, 4]).p_value)
