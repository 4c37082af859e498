"""dpaudit.bounds._special (numpy-only special functions) against mpmath at 50 digits and against scipy.special.

Tolerances: against mpmath (the exact value), 2e-15 relative for Phi, its upper tail and log Phi (Cody's
approximations are near-minimax to 18 digits; what is left is the rounding of a few float operations). Against
scipy, 5e-13 relative: scipy's ndtr itself is off by up to ~2.6e-13 near x = -37.7 (it rounds x / sqrt 2 before
the exponential; measured against mpmath here too), so the comparison with scipy checks agreement at scipy's own
accuracy, and the mpmath comparison checks the digits.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy import fft as sp_fft
from scipy import special as sp

from dpaudit.bounds import _special as S
from dpaudit.bounds.pld import _fast_fft_size

EXACT_RTOL = 2e-15
SCIPY_RTOL = 5e-13


def _points(rng: np.random.Generator) -> np.ndarray:
    """Both sides of every interval boundary of Cody's approximations (|x| / sqrt 2 = 0.46875, 4), the -1 switch
    of log_ndtr, the deep lower tail down to where Phi underflows (-38.4), and random points between."""
    edges = np.array([0.46875, 4.0]) * math.sqrt(2)
    near = np.concatenate([edges, -edges, [-1.0, 0.0]])
    near = np.concatenate([near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf)])
    return np.concatenate([near, rng.uniform(-38.4, 9.0, 300), rng.uniform(-3.0, 3.0, 100)])


def _mp_rel(value: float, exact: mpmath.mpf) -> float:
    return float(abs((mpmath.mpf(value) - exact) / exact))


def test_ndtr_and_upper_tail_against_mpmath():
    mpmath.mp.dps = 50
    x = _points(np.random.default_rng())
    ours, upper = S.ndtr(x), S.ndtr(-x)
    for xi, v, u in zip(x.tolist(), ours.tolist(), upper.tolist(), strict=True):
        exact = mpmath.ncdf(mpmath.mpf(xi))
        if exact > mpmath.mpf("1e-300"):  # (below, the float result is subnormal: absolute precision only)
            assert _mp_rel(v, exact) <= EXACT_RTOL, xi
        exact_upper = mpmath.ncdf(-mpmath.mpf(xi))
        if exact_upper > mpmath.mpf("1e-300"):
            assert _mp_rel(u, exact_upper) <= EXACT_RTOL, xi


def test_log_ndtr_against_mpmath_far_into_the_tail():
    mpmath.mp.dps = 50
    rng = np.random.default_rng()
    x = np.concatenate([_points(rng), -rng.uniform(38.0, 1e4, 50), [-1e5, -1e150, 40.0, 1e3]])
    ours = S.log_ndtr(x)
    for xi, v in zip(x.tolist(), ours.tolist(), strict=True):
        exact = mpmath.log(mpmath.ncdf(mpmath.mpf(xi)))
        if exact == 0:
            assert v == 0.0
        else:
            assert _mp_rel(v, exact) <= EXACT_RTOL, xi


@pytest.mark.parametrize("name", ["ndtr", "log_ndtr"])
def test_against_scipy_on_a_dense_grid(name):
    x = np.concatenate([np.linspace(-40.0, 40.0, 40001), _points(np.random.default_rng())])
    ours, ref = getattr(S, name)(x), getattr(sp, name)(x)
    normal = np.abs(ref) > 1e-300
    np.testing.assert_allclose(ours[normal], ref[normal], rtol=SCIPY_RTOL, atol=0)
    # where scipy flushes to 0 (it stops at the normal range), ours may still hold a subnormal
    assert np.all(np.abs(ours[~normal]) < 1e-300)


def test_special_values():
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0])
    np.testing.assert_array_equal(S.ndtr(x), [0.0, 1.0, np.nan, 0.5, 0.5])
    np.testing.assert_array_equal(S.log_ndtr(x), [-np.inf, 0.0, np.nan, math.log(0.5), math.log(0.5)])
    assert S.log_ndtr(-1e300) == -np.inf
    # numpy floats for scalars, arrays of the input's shape otherwise, as scipy's ufuncs
    assert type(S.ndtr(0.3)) is np.float64 and type(S.log_ndtr(-3.0)) is np.float64
    assert S.ndtr(np.zeros((2, 3))).shape == (2, 3)


def test_ndtri_against_scipy_including_tails():
    p = np.concatenate([np.geomspace(1e-300, 0.5, 400), 1 - np.geomspace(1e-16, 0.5, 100)])
    np.testing.assert_allclose(S.ndtri(p), sp.ndtri(p), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(
        S.ndtri(np.array([0.0, 1.0, -0.5, 1.5, np.nan])), [-np.inf, np.inf, np.nan, np.nan, np.nan]
    )
    # round trip through ndtr (the GDP closed form gamma = Phi(Phi^-1(kappa) + mu) relies on it); Phi amplifies a
    # relative error of its argument x by about x^2 (50 at kappa = 1e-12), hence 1e-13
    kappa = np.geomspace(1e-12, 0.5, 50)
    np.testing.assert_allclose(S.ndtr(S.ndtri(kappa)), kappa, rtol=1e-13)
    assert type(S.ndtri(0.1)) is np.float64


def test_gammaln_xlogy_xlog1py_logsumexp_against_scipy():
    v = np.concatenate([np.arange(0.0, 100.0), [0.5, 1e-300, 1e10, -2.5, -2.0, np.inf]])
    np.testing.assert_allclose(S.gammaln(v), sp.gammaln(v), rtol=1e-14, atol=1e-14)
    j, q = np.arange(5.0), np.array([0.0, 0.3, 1.0])
    for qq in q:
        np.testing.assert_array_equal(np.isnan(S.xlogy(j, qq)), np.isnan(sp.xlogy(j, qq)))
        np.testing.assert_allclose(S.xlogy(j, qq), sp.xlogy(j, qq), rtol=1e-15)
        np.testing.assert_allclose(S.xlog1py(j[::-1], -qq), sp.xlog1py(j[::-1], -qq), rtol=1e-15)
    a = np.random.default_rng().normal(0, 300, 1000)
    assert S.logsumexp(a) == pytest.approx(float(sp.logsumexp(a)), rel=1e-15)
    assert S.logsumexp(np.array([-np.inf, -np.inf])) == -np.inf


def test_fft_sizes_are_scipys_fast_lengths():
    for n in [*range(1, 3000), *range(10**6, 10**6 + 500), 1 << 24]:
        assert _fast_fft_size(n) == sp_fft.next_fast_len(n, real=True), n
