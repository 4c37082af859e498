"""Approximations of the ReRo curve: Edgeworth ("paper mode") and the Gaussian-DP CLT. Neither is a bound.

The seed paper (Ziller et al., Table 3) computed its worst-case and relaxed columns with an Edgeworth
approximation of the composed log-likelihood ratio (the approach of Wang, Mahloujifar, Wu, Jia, Mittal,
"A Randomized Approach to Tight Privacy Accounting", NeurIPS 2023, arXiv 2304.07927, Section 4). This module
reproduces those numbers; they are *approximations*: for RadImageNet at epsilon 32 the table's 13.18% is above
the tight bound 9.96%, elsewhere they can fall below it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import integrate, optimize, special

from dpaudit.bounds._mechanism import StepPair

#: Below this many steps the standardised sum is too far from normal for a five-cumulant expansion.
MIN_STEPS = 30


def _raw_moments(pair: StepPair, under: str, orders: int = 5) -> np.ndarray:
    """E[L^r], r = 1..orders, of the per-step log-likelihood ratio under P or Q, by adaptive quadrature."""
    sigma = pair.noise_multiplier
    means = pair.means
    weights = np.exp(pair.log_weights)

    def density(x: float) -> float:
        if under == "P":
            comps = [(0.0, 1.0)]
        else:
            comps = list(zip(means, weights, strict=True))
        total = 0.0
        for m, w in comps:
            total += w * math.exp(-0.5 * ((x - m) / sigma) ** 2)
            if pair.relaxed:
                total += w * math.exp(-0.5 * ((x + m) / sigma) ** 2)
        return total / (sigma * math.sqrt(2 * math.pi))

    lo = 0.0 if pair.relaxed else -40 * sigma
    hi = pair.records_per_patient + 40 * sigma
    # Split at the component means so quad sees each bump.
    points = sorted({p for p in [0.0, *means.tolist()] if lo < p < hi})
    out = np.empty(orders)
    for r in range(1, orders + 1):
        def integrand(x: float, r: int = r) -> float:
            return float(pair.loss(np.array([x]))[0]) ** r * density(x)

        with warnings.catch_warnings():
            # quad flags round-off when the loss is ~1e-5 (large sigma); 1e-10 relative is far more than needed.
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            val, _ = integrate.quad(integrand, lo, hi, points=points or None, limit=400, epsabs=0.0, epsrel=1e-10)
        out[r - 1] = val
    return out


def _cumulants(raw: np.ndarray) -> np.ndarray:
    """First five cumulants from the first five raw moments."""
    m1, m2, m3, m4, m5 = raw
    k1 = m1
    k2 = m2 - m1 ** 2
    k3 = m3 - 3 * m2 * m1 + 2 * m1 ** 3
    k4 = m4 - 4 * m3 * m1 - 3 * m2 ** 2 + 12 * m2 * m1 ** 2 - 6 * m1 ** 4
    k5 = (m5 - 5 * m4 * m1 - 10 * m3 * m2 + 20 * m3 * m1 ** 2 + 30 * m2 ** 2 * m1 - 60 * m2 * m1 ** 3
          + 24 * m1 ** 5)
    return np.array([k1, k2, k3, k4, k5])


def _hermite(n: int, x: np.ndarray) -> np.ndarray:
    """Probabilists' Hermite polynomial He_n."""
    return special.eval_hermitenorm(n, x)


def edgeworth_cdf(x: np.ndarray, lam3: float, lam4: float, lam5: float) -> np.ndarray:
    """Edgeworth expansion of the CDF of a standardised sum with standardised cumulants lam3, lam4, lam5
    (terms to order n^{-3/2}; e.g. Hall, "The Bootstrap and Edgeworth Expansion", 1992, Section 2.2)."""
    x = np.asarray(x, dtype=float)
    corr = (lam3 / 6 * _hermite(2, x)
            + lam4 / 24 * _hermite(3, x) + lam3 ** 2 / 72 * _hermite(5, x)
            + lam5 / 120 * _hermite(4, x) + lam3 * lam4 / 144 * _hermite(6, x) + lam3 ** 3 / 1296 * _hermite(8, x))
    return special.ndtr(x) - np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * corr


def edgeworth_gamma(pair: StepPair, steps: int, kappa: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Paper mode: solve F_P(t) = 1 - kappa for the threshold t of the composed loss, gamma = 1 - F_Q(t).

    Returns NaN (with a note saying why) where the expansion breaks down: T < 30, a threshold outside the range
    where the expanded CDF is monotone, or a result outside [kappa, 1].
    """
    notes: list[str] = []
    if steps < MIN_STEPS:
        return np.full(kappa.shape, np.nan), [f"Edgeworth needs T >= {MIN_STEPS} steps (got {steps}): no value"]
    cum_p = _cumulants(_raw_moments(pair, "P")) * steps
    cum_q = _cumulants(_raw_moments(pair, "Q")) * steps

    def standard(c: np.ndarray) -> tuple[float, float, float, float, float]:
        s = math.sqrt(c[1])
        return c[0], s, c[2] / s ** 3, c[3] / s ** 4, c[4] / s ** 5

    mp, sp, l3p, l4p, l5p = standard(cum_p)
    mq, sq, l3q, l4q, l5q = standard(cum_q)
    out = np.full(kappa.shape, np.nan)
    bad = 0
    for i, k in enumerate(kappa):
        def gap(z: float, k: float = k) -> float:
            return float(edgeworth_cdf(np.array([z]), l3p, l4p, l5p)[0]) - (1 - k)

        z0 = float(special.ndtri(1 - k))
        try:
            # Search outward from the normal quantile for the sign change nearest to it.
            lo, hi = z0 - 0.5, z0 + 0.5
            for _ in range(40):
                if gap(lo) < 0 < gap(hi):
                    break
                lo, hi = lo - 0.5, hi + 0.5
            z = optimize.brentq(gap, lo, hi, xtol=1e-12)
        except ValueError:
            bad += 1
            continue
        t = mp + sp * z
        zq = (t - mq) / sq
        g = 1.0 - float(edgeworth_cdf(np.array([zq]), l3q, l4q, l5q)[0])
        if not (k <= g <= 1.0):
            bad += 1
            continue
        out[i] = g
    if bad:
        notes.append(f"the Edgeworth expansion breaks down at {bad} of {kappa.size} kappa values: no value there")
    return out, notes


def clt_gamma(pair: StepPair, steps: int, kappa: np.ndarray) -> np.ndarray:
    """Gaussian-DP CLT: gamma = Phi(Phi^{-1}(kappa) + mu).

    Worst case, k = 1: mu = q sqrt(T (e^{1/sigma^2} - 1)) (Dong, Roth, Su 2022, arXiv 1905.02383v3, Cor. 5.4).
    Otherwise (relaxed, or k > 1): mu = T (E_Q L - E_P L) / sqrt(T Var_P L), the CLT of the composed loss.
    """
    if not pair.relaxed and pair.records_per_patient == 1:
        mu = pair.sampling_probability * math.sqrt(steps * math.expm1(1 / pair.noise_multiplier ** 2))
    else:
        cp = _cumulants(_raw_moments(pair, "P"))
        cq = _cumulants(_raw_moments(pair, "Q"))
        mu = steps * (cq[0] - cp[0]) / math.sqrt(steps * cp[1])
    return special.ndtr(special.ndtri(kappa) + mu)
