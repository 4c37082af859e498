"""The special functions the bounds need, in numpy and the standard library only.

``scipy.special`` (and every other scipy submodule but the bare package) imports scipy's array-API layer, which
clones numpy's namespace and so imports ``numpy.f2py`` and ``charset_normalizer``: about 0.3 s of CPU on every start
of ``dpaudit bounds``, several times the work of a typical bound. The functions here are what the bounds use of it:

* the error function family by W. J. Cody's rational Chebyshev approximations (Cody, "Rational Chebyshev
  approximations for the error function", Math. Comp. 23 (1969) 631-637, the double-precision coefficients of his
  public-domain SPECFUN routine CALERF, 1990): near-minimax to at least 18 significant digits before rounding,
  and ``erfcx`` = e^{x^2} erfc(x) directly, so the log tail never underflows;
* ``ndtr`` and ``log_ndtr`` from them, as scipy builds its own (``log_ndtr`` below -1 as log(erfcx(-x/sqrt 2)/2) -
  x^2/2, scipy's Faddeeva route, exact in log space down to any x);
* ``ndtri`` by the standard library's ``statistics.NormalDist.inv_cdf`` (Wichura's AS 241, PPND16: about 16
  digits); it is used on scalars and short arrays (kappa values) only;
* ``gammaln``, ``xlogy``, ``xlog1py``, ``logsumexp`` by their definitions (``math.lgamma`` elementwise, short
  arrays only).

``tests/test_special.py`` checks each against ``scipy.special`` and against mpmath at 50 digits, tails included,
with the tolerances stated there. Every function accepts a scalar or an array and, like scipy's ufuncs, returns a
numpy float for a scalar and an array otherwise.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

# Cody (1969), CALERF's coefficients. Interval 1, |x| <= 0.46875: erf(x) = x A(x^2) / B(x^2).
_A = (
    3.16112374387056560e00,
    1.13864154151050156e02,
    3.77485237685302021e02,
    3.20937758913846947e03,
    1.85777706184603153e-1,
)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
# Interval 2, 0.46875 < x <= 4: erfcx(x) = C(x) / D(x).
_C = (
    5.64188496988670089e-1,
    8.88314979438837594e00,
    6.61191906371416295e01,
    2.98635138197400131e02,
    8.81952221241769090e02,
    1.71204761263407058e03,
    2.05107837782607147e03,
    1.23033935479799725e03,
    2.15311535474403846e-8,
)
_D = (
    1.57449261107098347e01,
    1.17693950891312499e02,
    5.37181101862009858e02,
    1.62138957456669019e03,
    3.29079923573345963e03,
    4.36261909014324716e03,
    3.43936767414372164e03,
    1.23033935480374942e03,
)
# Interval 3, x > 4: erfcx(x) = (1/sqrt(pi) - r P(r) / Q(r)) / x with r = 1 / x^2.
_P = (
    3.05326634961232344e-1,
    3.60344899949804439e-1,
    1.25781726111229246e-1,
    1.60837851487422766e-2,
    6.58749161529837803e-4,
    1.63153871373020978e-2,
)
_Q = (
    2.56852019228982242e00,
    1.87295284992346047e00,
    5.27905102951428412e-1,
    6.05183413124413191e-2,
    2.33520497626869185e-3,
)
_THRESH = 0.46875
_INV_SQRT_PI = 5.6418958354775628695e-1
_SQRT1_2 = math.sqrt(0.5)


def _cody_ratio(num: tuple[float, ...], den: tuple[float, ...], y: np.ndarray) -> np.ndarray:
    """CALERF's evaluation order: num[-1] y^n + num[0] y^(n-1) + ... + num[n-1], over the monic y^n + den[0] y^(n-1)
    + ... + den[n-1] (n = len(den)). In place: fresh temporaries of this size cost more than the arithmetic."""
    xnum = num[-1] * y
    xden = np.array(y, dtype=float)
    for a, b in zip(num[:-2], den[:-1], strict=True):
        xnum += a
        xnum *= y
        xden += b
        xden *= y
    xnum += num[-2]
    xden += den[-1]
    xnum /= xden
    return xnum


def _normal_tail_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a = |x|: (y, erfcx(y), 1 - Phi(a)) with y = a / sqrt 2; erfcx(y) only where y > 0.46875 (Cody's
    intervals 2 and 3; any finite value elsewhere).

    1 - Phi(a) = erfc(y) / 2 to full relative precision: below y = 0.46875 from Cody's erf; above, e^{-a^2/2}
    erfcx(y) / 2 with the Gaussian factor taken from a itself, split as in CALERF (s = a rounded down to 1/16, s^2
    exact), and only the slowly varying erfcx from the rounded y, so the rounding of a / sqrt 2 is not amplified by
    the exponential (scipy's ndtr loses up to ~2e-13 relative near x = -37 that way). Branch-free: every interval
    is evaluated on the whole (clamped) array and the right one selected, which is several times faster in numpy
    than gathering each interval's entries.
    """
    a = np.abs(x)
    y = a * _SQRT1_2
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        y_mid = np.minimum(y, 4.0)
        y_big = np.maximum(y, 4.0)
        r = 1.0 / (y_big * y_big)
        erfcx = np.where(
            y <= 4.0, _cody_ratio(_C, _D, y_mid), (_INV_SQRT_PI - r * _cody_ratio(_P, _Q, r)) / y_big
        )
        y_small = np.minimum(y, _THRESH)
        a_cap = np.minimum(a, 40.0)  # beyond 40, e^{-a^2/2} is 0 in floating point; keeps inf - inf out
        s = np.trunc(a_cap * 16.0) / 16.0
        gauss = np.exp(-0.5 * s * s) * np.exp(-0.5 * (a_cap - s) * (a_cap + s))
        tail = np.where(y <= _THRESH, 0.5 * (1.0 - _erf_small(y_small)), 0.5 * gauss * erfcx)
    return y, erfcx, tail


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf(x) for |x| <= 0.46875 (Cody's interval 1)."""
    return x * _cody_ratio(_A, _B, x * x)


def _as_result(values: np.ndarray, scalar: bool) -> np.ndarray:
    return values[()] if scalar else values


def ndtr(x: np.ndarray | float) -> np.ndarray:
    """The standard normal CDF Phi(x), accurate to full relative precision in the lower tail (Phi(x) for x << 0;
    use Phi(-x) for an upper tail)."""
    arr = np.asarray(x, dtype=float)
    _, _, tail = _normal_tail_parts(arr)
    return _as_result(np.where(arr < 0, tail, 1.0 - tail), arr.ndim == 0)


def log_ndtr(x: np.ndarray | float) -> np.ndarray:
    """log Phi(x), finite for every finite x: below x = -1, log(erfcx(y) / 2) - x^2/2 with y = -x / sqrt 2 (never
    underflows; scipy's Faddeeva construction of its log_ndtr); log Phi(x) on [-1, 0); log1p(-(1 - Phi(x))) above."""
    arr = np.asarray(x, dtype=float)
    _, erfcx, tail = _normal_tail_parts(arr)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        out = np.where(
            arr < -1.0,
            np.log(erfcx / 2.0) - 0.5 * arr * arr,
            np.where(arr < 0.0, np.log(tail), np.log1p(-tail)),
        )
    return _as_result(out, arr.ndim == 0)


_STANDARD_NORMAL = NormalDist()


def _ndtri_one(p: float) -> float:
    if p != p or p < 0.0 or p > 1.0:
        return math.nan
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    return _STANDARD_NORMAL.inv_cdf(p)


def ndtri(p: np.ndarray | float) -> np.ndarray:
    """The standard normal quantile Phi^{-1}(p) (-inf at 0, inf at 1, nan outside [0, 1]); elementwise, for
    scalars and short arrays."""
    arr = np.asarray(p, dtype=float)
    out = np.array([_ndtri_one(float(v)) for v in arr.ravel()], dtype=float).reshape(arr.shape)
    return _as_result(out, arr.ndim == 0)


def gammaln(x: np.ndarray | float) -> np.ndarray:
    """log |Gamma(x)| elementwise (``math.lgamma``; for short arrays such as binomial coefficients)."""
    arr = np.asarray(x, dtype=float)
    out = np.array([_gammaln_one(v) for v in arr.ravel().tolist()], dtype=float).reshape(arr.shape)
    return _as_result(out, arr.ndim == 0)


def _gammaln_one(v: float) -> float:
    if v != v or v == -math.inf:
        return math.nan
    if v <= 0 and v.is_integer():
        return math.inf  # the poles of Gamma
    return math.lgamma(v)


def xlogy(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """x log(y), and 0 where x = 0 (whatever y is, as scipy.special.xlogy)."""
    x_arr, y_arr = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(x_arr == 0, 0.0, x_arr * np.log(y_arr))
    return _as_result(out, out.ndim == 0)


def xlog1py(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """x log1p(y), and 0 where x = 0 (whatever y is, as scipy.special.xlog1py)."""
    x_arr, y_arr = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(x_arr == 0, 0.0, x_arr * np.log1p(y_arr))
    return _as_result(out, out.ndim == 0)


def logsumexp(a: np.ndarray) -> float:
    """log sum exp of all entries of ``a`` (-inf when every entry is -inf; inf when one is inf)."""
    arr = np.asarray(a, dtype=float)
    top = float(np.max(arr))
    if not math.isfinite(top):
        return top
    return float(np.log(np.sum(np.exp(arr - top))) + top)
