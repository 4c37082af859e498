"""Utility statistics over seeds: the mean with a Student-t confidence interval, and Welch's t-test against the
non-private baseline. Pure functions of numbers (numpy/scipy.special only; no I/O).

A profile trains each privacy budget with n seeds; the report states the mean test MCC with a 95% t-interval over
those n runs (n said beside it) and the two-sided p-value of Welch's unequal-variance t-test against the
non-private runs. The seed paper (Ziller et al., section 2.3) compares the private and non-private models with a
t-test in the same way ("no statistically significant difference ... p-values: HAM10000: 0.36", Student's t-test);
Welch's version does not assume equal variances, which DP noise makes implausible.

Both are statistical statements about the training procedure (seed-to-seed variation); they are **empirical**
numbers with an interval, not bounds. With one seed there is no interval and no test (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dpaudit.errors import check_probability, invalid

#: Two-sided level of the intervals the report prints.
CONFIDENCE = 0.95
#: Below this p-value the report calls a difference to the non-private baseline distinguishable.
ALPHA = 0.05


def _t_quantile(p: float, dof: float) -> float:
    """Quantile of Student's t distribution (scipy.special.stdtrit; avoids importing scipy.stats)."""
    from scipy.special import stdtrit

    return float(stdtrit(dof, p))


def _t_sf(t: float, dof: float) -> float:
    """Upper tail P(T > t) of Student's t (scipy.special.stdtr is the CDF)."""
    from scipy.special import stdtr

    return float(stdtr(dof, -t))


def _finite(values: Sequence[float | None], field: str) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        x = float(v)
        if math.isnan(x):
            continue
        if not math.isfinite(x):
            raise invalid(field, v, "finite numbers", "check the utility values in profile.json")
        out.append(x)
    return out


@dataclass(frozen=True)
class MeanInterval:
    """Mean of n values with a two-sided Student-t confidence interval (``low``/``high`` None when n < 2).

    The interval is mean +- t_{1-a/2, n-1} * s / sqrt(n), s the sample standard deviation (n - 1 in the
    denominator): exact coverage for normally distributed values.
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int
    std: float | None
    confidence: float = CONFIDENCE
    label: str = "empirical"


def mean_interval(values: Sequence[float | None], *, confidence: float = CONFIDENCE) -> MeanInterval:
    """The mean and its Student-t interval over the finite values (None and NaN are skipped).

    >>> r = mean_interval([0.5, 0.7])
    >>> round(r.mean, 3), round(r.low, 3), round(r.high, 3), r.n
    (0.6, -0.671, 1.871, 2)
    """
    confidence = check_probability("confidence", confidence, fix="pass e.g. 0.95")
    vals = _finite(values, "values")
    n = len(vals)
    if n == 0:
        return MeanInterval(None, None, None, 0, None, confidence)
    mean = math.fsum(vals) / n
    if n == 1:
        return MeanInterval(mean, None, None, 1, None, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = _t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half, n, std, confidence)


@dataclass(frozen=True)
class WelchTest:
    """Welch's two-sample t-test (unequal variances), two-sided.

    ``difference`` is mean(a) - mean(b); ``p_value`` None when either sample has fewer than 2 values (no variance
    estimate) or both have zero variance with equal means.
    """

    difference: float | None
    t: float | None
    dof: float | None
    p_value: float | None
    n_a: int
    n_b: int

    def distinguishable(self, alpha: float = ALPHA) -> bool | None:
        """True when p < alpha, False when not, None when the test could not be run."""
        return None if self.p_value is None else self.p_value < alpha


def welch_test(a: Sequence[float | None], b: Sequence[float | None]) -> WelchTest:
    """Welch (Biometrika 34, 1947) t-test of equal means, with the Welch-Satterthwaite degrees of freedom.

    t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b),
    dof = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)),
    p = 2 P(T_dof > |t|). Equal to ``scipy.stats.ttest_ind(a, b, equal_var=False)`` (the test checks it).
    """
    xa, xb = _finite(a, "a"), _finite(b, "b")
    na, nb = len(xa), len(xb)
    if na == 0 or nb == 0:
        return WelchTest(None, None, None, None, na, nb)
    ma, mb = math.fsum(xa) / na, math.fsum(xb) / nb
    diff = ma - mb
    if na < 2 or nb < 2:
        return WelchTest(diff, None, None, None, na, nb)
    va = math.fsum((x - ma) ** 2 for x in xa) / (na - 1) / na
    vb = math.fsum((x - mb) ** 2 for x in xb) / (nb - 1) / nb
    se2 = va + vb
    if se2 == 0:
        # Both samples constant: equal means are indistinguishable (p = 1), different ones certain (p = 0).
        return WelchTest(diff, None, None, 1.0 if diff == 0 else 0.0, na, nb)
    t = diff / math.sqrt(se2)
    dof = se2 ** 2 / ((va ** 2 / (na - 1) if va else 0.0) + (vb ** 2 / (nb - 1) if vb else 0.0))
    p = min(1.0, 2.0 * _t_sf(abs(t), dof))
    return WelchTest(diff, t, dof, p, na, nb)
