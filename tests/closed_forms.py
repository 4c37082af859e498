"""Closed forms the tests check dpaudit's numbers against (independent of its PLD and RDP code)."""

from __future__ import annotations

import math

from scipy import optimize, stats


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon at ``delta`` of a Gaussian mechanism with sensitivity / noise ``mu`` (T steps of noise sigma
    at q = 1: mu = sqrt(T) / sigma): the analytic Gaussian curve, Balle and Wang, ICML 2018, Theorem 8,
    delta(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2), solved for eps by Brent's method to 1e-12
    (in double precision; at delta 1e-14 and mu 0.6 to 1.6 it agrees with a 40-digit mpmath solve to 1e-10)."""
    f = lambda e: stats.norm.cdf(-e / mu + mu / 2) - math.exp(e) * stats.norm.cdf(-e / mu - mu / 2) - delta  # noqa: E731
    return optimize.brentq(f, 0.0, 100.0, xtol=1e-12)
