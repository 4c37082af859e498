"""The per-step pair of output distributions of one DP-SGD step, and the validation of its parameters.

One step releases the sum of the clipped gradients plus N(0, sigma^2) noise (clip norm normalised to 1). Seen in
the direction of the target's gradient, the adversary observes a scalar X with

* null hypothesis (target absent): P = N(0, sigma^2);
* alternative (target present): Q = sum_j Binom(k, q)(j) N(j, sigma^2), with k the number of records a patient
  contributes (k = 1: Q = (1 - q) N(0, sigma^2) + q N(1, sigma^2), the Poisson-subsampled Gaussian).

The *worst-case* threat model (Balle, Cherubin, Hayes 2022; Hayes, Mahloujifar, Balle 2023) uses this pair. The
*relaxed* threat model (Kaissis, Ziller, Kolek, Riess, Rueckert, NeurIPS 2023) observes only |X| (the adversary
knows the norm of the target's contribution, not its direction): P = law of |X| under N(0, sigma^2), Q = law of |X|
under the mixture. In both, the log-likelihood ratio L(x) = log dQ/dP(x) is increasing in x on the support, which
lets every computation here work with tails in x.

Nothing here does I/O; numbers are numpy float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from dpaudit.config import DELTA_EXAMPLE
from dpaudit.config import check_noise_multiplier as check_sigma
from dpaudit.errors import check_int, check_probability, invalid

THREAT_MODELS = ("worst_case", "relaxed")


def _mass_normal(a: np.ndarray, b: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    """N(mean, sigma^2)-mass of (a, b], from the tail that keeps full relative precision: upper-tail
    differences when the interval lies above the mean, CDF differences otherwise."""
    za = (a - mean) / sigma
    zb = (b - mean) / sigma
    s = np.where(za >= 0, -1.0, 1.0)
    return s * (special.ndtr(s * zb) - special.ndtr(s * za))


def _log_mass_normal(a: np.ndarray, b: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    """log of the N(mean, sigma^2)-mass of (a, b], accurate far into the tails where the mass itself underflows
    (e.g. e^{-125000} at 500 standard deviations, sigma = 1e-3): the larger of the two log tails plus
    log(1 - e^{smaller - larger}), from the upper tail above the mean and the lower tail below it."""
    za = (np.asarray(a, dtype=float) - mean) / sigma
    zb = (np.asarray(b, dtype=float) - mean) / sigma
    above = za >= 0
    big = np.where(above, special.log_ndtr(-za), special.log_ndtr(zb))
    small = np.where(above, special.log_ndtr(-zb), special.log_ndtr(za))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = big + np.log(-np.expm1(small - big))
    return np.where(np.isneginf(big) | (small >= big), -math.inf, out)


def _cells_normal(xs: np.ndarray, mean: float, sigma: float, log: bool = False,
                  tail_values: np.ndarray | None = None) -> np.ndarray:
    """:func:`_mass_normal` (``log``: :func:`_log_mass_normal`) of the contiguous cells (xs[i], xs[i + 1]], equal to
    them bit for bit (``log``: to the last place) at half (a quarter of) the special-function calls: both take, at
    each boundary, the tail beyond it on the far side of the mean, ndtr(-|z|) (its log), once per boundary instead
    of once per cell it bounds; only the cell that contains the mean takes its upper end's CDF itself (the one cell
    whose two ends use different tails). ``tail_values``: ndtr(-|z|) at the boundaries, when already computed."""
    z = (np.asarray(xs, dtype=float) - mean) / sigma
    tail = special.ndtr(-np.abs(z)) if tail_values is None else tail_values
    if log:
        # log_ndtr(t) is log(ndtr(t)) for -20 < t <= 0 (scipy's own switch; the tail has full relative precision
        # there, far from underflow at -37): take the log of the tail already at hand (a last-place difference
        # between numpy's log and libm's), and log_ndtr's asymptotic series only beyond.
        with np.errstate(divide="ignore"):
            tail = np.log(tail)
        far = np.nonzero(np.abs(z) >= 20.0)[0]
        if far.size:
            tail[far] = special.log_ndtr(-np.abs(z[far]))
    za, zb = z[:-1], z[1:]
    ta, tb = tail[:-1], tail[1:]
    above = za >= 0
    # The cells below the mean read Phi(zb) - Phi(za), those above Phibar(za) - Phibar(zb): (big, small) are the
    # larger and the smaller of the two tails, as in _mass_normal / _log_mass_normal.
    big = np.where(above, ta, tb)
    small = np.where(above, tb, ta)
    across = np.nonzero(~above & (zb > 0))[0]  # the cell holding the mean: Phi(zb) itself, as _mass_normal takes it
    if across.size:
        big[across] = special.log_ndtr(zb[across]) if log else special.ndtr(zb[across])
    if not log:
        return np.where(above, -(small - big), big - small)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = big + np.log(-np.expm1(small - big))
    return np.where(np.isneginf(big) | (small >= big), -math.inf, out)


def _logsumexp0(a: np.ndarray) -> np.ndarray:
    """log sum exp over axis 0 (a lean version of scipy's, which dominates the run time on small arrays)."""
    top = np.max(a, axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - safe[None, ...]), axis=0)) + safe


#: L(x) and L'(x) form (components x points) arrays, a handful per pass (:meth:`StepPair.loss`,
#: :meth:`StepPair._loss_and_slope`); runs of more points than this are taken in chunks of this many (temporaries of
#: 0.25 MB a component, in cache, not written out to memory and read back): 2.2-2.5x less time a pass on 2e5-1e6
#: points (relaxed, k 5, sigma 0.5, q 1e-6), the same numbers bit for bit (every operation is per point; the sums
#: run over the components).
LOSS_CHUNK = 1 << 15


def _loss_chunks(n: int, size: int = LOSS_CHUNK) -> list[slice]:
    """The ``size``-point slices of a run of n points, a leftover single point joined to the chunk before it: a
    (components x 1) array is summed along its contiguous axis in numpy's pairwise order, not row by row as a wider
    one, which rounds differently with 8 or more components (the same numbers as one pass only without it)."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]

#: Pairs of at least this many mixture components (k + 1) drop, block by block, the components whose terms cannot
#: reach the sum (:meth:`StepPair._rows_for`); below it every pass takes them all (the pruning's own cost, a few
#: passes over the k + 1 components per block, is then not worth it).
PRUNE_MIN_COMPONENTS = 64
#: Points per block of the pruned passes: a block's rows are the components whose term comes near the largest one
#: somewhere in the block's range of x, so a narrower block keeps fewer (the sorted tables and Newton iterates
#: span a few components per block), at a fixed cost of a few O(k) passes per block.
PRUNE_BLOCK = 256
#: A term at least this many nats below the largest one at the same x adds exactly 0 to the log-sum-exp and to
#: the slope's posterior weights: exp underflows to 0 below -745.14 (half the smallest subnormal, 4.9e-324 =
#: e^-744.44, rounds to 0); the 15 nats more cover the round-off of forming the bound (terms up to k^2 / sigma^2,
#: 1e14 at k 1e5, sigma 0.01, carry absolute round-off below 0.1 nat). Bit for bit up to k / sigma ~1e9 (checked:
#: k 3e5 at sigma 1e-4, k 1e6 at sigma 3e-4); at k 1e6, sigma 1e-4 (terms ~1e19 nats, round-off of thousands of
#: nats) a dropped term can differ from the top by less than its own rounding, and 18 of 1920 points moved by two
#: ulps of L: losses far past the 700-nat cap, counted as infinite either way, so no reported number changes.
PRUNE_NATS = 760.0


#: Newton's start for k > 1 from a cubic Hermite interpolant of the inverse on the table (:meth:`StepPair._hermite_start`)
#: rather than the linear one moved a grid step right: the same roots to the iteration's 1e-14 stop, in 2 passes
#: over the losses instead of 4 (relaxed k 10, sigma 0.5, q 1e-5: 320809 losses per step PLD).
HERMITE_START = True


@dataclass(frozen=True)
class StepPair:
    """The per-step (P, Q) pair of a DP-SGD step for one threat model.

    Attributes
    ----------
    noise_multiplier, sampling_probability:
        sigma and q of the step.
    records_per_patient:
        k: the target (a patient) contributes k aligned gradients, each sampled independently with probability q.
    threat_model:
        ``"worst_case"`` (the adversary sees X) or ``"relaxed"`` (the adversary sees |X|).
    """

    noise_multiplier: float
    sampling_probability: float
    records_per_patient: int = 1
    threat_model: str = "worst_case"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sampling_probability", check_q(self.sampling_probability))
        object.__setattr__(self, "records_per_patient", check_records_per_patient(self.records_per_patient))
        object.__setattr__(self, "threat_model", check_threat_model(self.threat_model))

    # -- the mixture ---------------------------------------------------------------------------------------------

    @property
    def means(self) -> np.ndarray:
        return np.arange(self.records_per_patient + 1, dtype=float)

    @functools.cached_property
    def log_weights(self) -> np.ndarray:
        """log Binom(k, q)(j), j = 0..k (with q = 1 the only non-zero weight is j = k)."""
        k, q = self.records_per_patient, self.sampling_probability
        j = np.arange(k + 1)
        log_binom = special.gammaln(k + 1) - special.gammaln(j + 1) - special.gammaln(k - j + 1)
        with np.errstate(divide="ignore"):
            return log_binom + special.xlogy(j, q) + special.xlog1py(k - j, -q)

    @property
    def relaxed(self) -> bool:
        return self.threat_model == "relaxed"

    @property
    def lower(self) -> float:
        """Left end of the observation's support (-inf for X, 0 for |X|)."""
        return 0.0 if self.relaxed else -math.inf

    # -- the log-likelihood ratio ---------------------------------------------------------------------------------

    def _log_terms(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The mixture's log terms log w_j + log N(x; j, sigma^2) - log N(x; 0, sigma^2) (components x points);
        ``rows``: only those components (in their order), each row the same numbers as in the whole array."""
        s2 = self.noise_multiplier ** 2
        j = self.means[:, None] if rows is None else self.means[rows][:, None]
        lw = self.log_weights[:, None] if rows is None else self.log_weights[rows][:, None]
        x = np.asarray(x, dtype=float)[None, :]
        if self.relaxed:
            # log cosh(z) = |z| + log1p(exp(-2|z|)) - log 2, stable for any z.
            z = np.abs(j * x / s2)
            return lw - j * j / (2 * s2) + z + np.log1p(np.exp(-2 * z)) - math.log(2.0)
        return lw + (2 * j * x - j * j) / (2 * s2)

    def loss(self, x: np.ndarray) -> np.ndarray:
        """L(x) = log dQ/dP (x), increasing in x on the support."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        if x.ndim != 1 or (x.size <= LOSS_CHUNK and not self._pruned):
            return _logsumexp0(self._log_terms(x))
        out = np.empty(x.size)
        for part in self._parts(x.size):  # (see LOSS_CHUNK and _rows_for: the same numbers)
            xp = x[part]
            out[part] = _logsumexp0(self._log_terms(xp, self._rows_for(xp)))
        return out

    # -- pruning the k + 1 components of a large-k pair ---------------------------------------------------------

    @property
    def _pruned(self) -> bool:
        return self.records_per_patient + 1 >= PRUNE_MIN_COMPONENTS

    def _parts(self, n: int) -> list[slice]:
        """The slices of n points that one pass takes: blocks of PRUNE_BLOCK on a pruned pair, else LOSS_CHUNK."""
        return _loss_chunks(n, PRUNE_BLOCK if self._pruned else LOSS_CHUNK)

    @functools.cached_property
    def _line_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(a_j, b_j) = (log w_j - j^2 / (2 sigma^2), j / sigma^2): the term of component j is the line
        u_j(v) = a_j + b_j v at v = x in the worst case, and lies in [u_j(|x|) - log 2, u_j(|x|)] in the relaxed
        model (log cosh z is within log 2 below |z|)."""
        s2 = self.noise_multiplier ** 2
        j = self.means
        return self.log_weights - j * j / (2 * s2), j / s2

    def _rows_for(self, x: np.ndarray) -> np.ndarray | None:
        """The components that can reach L(x) at some point of the block ``x`` (None: all of them).

        A component is dropped where its term is at least ``PRUNE_NATS`` below the largest term at every x of the
        block's range [v_a, v_b] (v = x, or |x| in the relaxed model): there exp(term - top) is exactly 0, so the
        log-sum-exp and the slope's weights are the same numbers, bit for bit, without it (numpy adds the rows of
        a block of two or more points one after the other, and adding 0 changes nothing). The test: with m_a and
        m_b the largest lines at v_a and v_b, top(v) >= max(u_ma(v), u_mb(v)) (minus log 2 in the relaxed model),
        so u_j(v) - top(v) is at most the concave, piecewise-linear u_j - max(u_ma, u_mb) (plus log 2), whose
        maximum over the range lies at v_a, v_b or where u_ma and u_mb cross. The largest term at any x of the
        block is never dropped (its difference is >= 0 there)."""
        if not self._pruned or x.size < 2 or not np.all(np.isfinite(x)):
            return None
        a, b = self._line_terms
        v = np.abs(x) if self.relaxed else x
        va, vb = float(v.min()), float(v.max())
        ua, ub = a + b * va, a + b * vb
        ma, mb = int(np.argmax(ua)), int(np.argmax(ub))
        if not (math.isfinite(ua[ma]) and math.isfinite(ub[mb])):
            return None  # terms past the float range (x near 1e300): every component, as before
        with np.errstate(invalid="ignore"):
            gap = np.maximum(ua - ua[ma], ub - ub[mb])
            if b[ma] != b[mb]:
                cross = (a[ma] - a[mb]) / (b[mb] - b[ma])
                if va < cross < vb:
                    uc = a + b * cross
                    gap = np.maximum(gap, uc - uc[ma])
        slack = math.log(2.0) if self.relaxed else 0.0
        rows = np.nonzero(~(gap + slack <= -PRUNE_NATS))[0]  # (a NaN is never dropped)
        return None if rows.size == a.size else rows

    @property
    def min_loss(self) -> float:
        """inf_x L(x): log(1 - q)^k in the worst case, L(0) in the relaxed model."""
        if self.relaxed:
            return float(self.loss(np.array([0.0]))[0])
        if self.sampling_probability == 1.0:
            return -math.inf
        return float(self.log_weights[0])

    def x_of_loss(self, eps: np.ndarray) -> np.ndarray:
        """The inverse of L: the x with L(x) = eps (``lower`` where eps <= min_loss)."""
        eps = np.asarray(eps, dtype=float)
        s2 = self.noise_multiplier ** 2
        q = self.sampling_probability
        if self.records_per_patient == 1:
            with np.errstate(divide="ignore", invalid="ignore"):
                # expm1(eps) + q = e^eps - (1 - q), computed without cancellation near eps = log(1 - q); above
                # eps = 30 as eps + log1p(-(1 - q) e^-eps), which cannot overflow for any eps. (Where no eps is
                # above 30, the usual case, only the first form is formed: the same numbers.)
                if eps.size and eps.max() <= 30.0:
                    log_excess = np.log(np.expm1(eps) + q) - math.log(q)
                else:
                    small = np.minimum(eps, 30.0)
                    log_excess = np.where(eps > 30.0, eps + np.log1p(-(1 - q) * np.exp(-np.maximum(eps, 30.0))),
                                          np.log(np.expm1(small) + q)) - math.log(q)
            if not self.relaxed:
                # L(x) = log(1 - q + q exp((2x - 1) / (2 sigma^2)))  =>  x = sigma^2 log((e^eps - 1 + q)/q) + 1/2.
                x = s2 * log_excess + 0.5
                return np.where(np.isnan(x), -math.inf, x)
            # l(y) = log(1 - q + q e^{-1/(2 sigma^2)} cosh(y / sigma^2))  (Kaissis et al. 2023, the |Y| pair):
            # y = sigma^2 arccosh(c), log c = log_excess + 1/(2 sigma^2); arccosh(c) = log c + log(1 + sqrt(1 - c^-2)).
            log_c = log_excess + 1 / (2 * s2)
            with np.errstate(invalid="ignore", over="ignore"):
                inv_c2 = np.exp(-2 * np.maximum(log_c, 0.0))
                y = s2 * (log_c + np.log1p(np.sqrt(np.maximum(1 - inv_c2, 0.0))))
            return np.where(np.isnan(log_c) | (log_c <= 0), 0.0, y)
        return self._x_of_loss_newton(eps)

    def _x_of_loss_newton(self, eps: np.ndarray) -> np.ndarray:
        """Invert L for k > 1. L is convex and increasing (a log-sum-exp of linear, or log-cosh, terms), so Newton's
        method started to the right of the root decreases monotonically to it.

        Starting points: L tabulated on a dense x grid and inverted by interpolation, moved right until L(x0) >=
        eps (the chord of a convex function lies above it, so the interpolated x is already to the right of the
        root, up to round-off); where the table does not reach, the analytic bound below. Only the entries not
        yet converged are iterated (typically 3-5 steps instead of ~200 from the analytic start; 1-2 from the Hermite
        start, :meth:`_hermite_start`)."""
        k, s2 = self.records_per_patient, self.noise_multiplier ** 2
        lw_k = self.log_weights[-1]
        flat = np.asarray(eps, dtype=float).ravel()
        below = flat <= self.min_loss
        if self.relaxed:
            # l(y) >= log w_k - k^2/(2 s2) + k y / s2 - log 2  gives a starting point with l(y0) >= eps.
            bound = np.maximum(s2 * (flat - lw_k + k * k / (2 * s2) + math.log(2.0)) / k, 0.0)
        else:
            # L(x) >= log w_k + (2 k x - k^2) / (2 s2).
            bound = (s2 * (flat - lw_k) + k * k / 2) / k
        grid, table, table_slope = self._newton_table
        inside = (flat > table[0]) & (flat < table[-1])
        x = np.where(inside, np.interp(flat, table, grid), bound)
        if np.any(inside):
            # one grid step to the right absorbs interpolation round-off; never beyond the analytic bound
            x = np.where(inside, np.minimum(x + (grid[1] - grid[0]), bound), x)
            if HERMITE_START:
                x = self._hermite_start(flat, inside, grid, table, table_slope, x, bound)
        x = np.where(below, self.lower, x)
        active = np.nonzero(~below)[0]
        for _ in range(200):
            if active.size == 0:
                break
            xa = x[active]
            value, slope = self._loss_and_slope(xa)
            step = (value - flat[active]) / np.maximum(slope, 1e-300)
            # Never right of the analytic bound (a start left of the root, where the slope is small, can step far
            # past it; from the right of the root Newton decreases and this is a no-op).
            x_new = np.minimum(xa - step, bound[active])
            if self.relaxed:
                x_new = np.maximum(x_new, self.lower)
            x[active] = x_new
            # 1e-14 relative: round-off makes the last step oscillate near 1e-15, and interval masses need no more
            done = np.abs(x_new - xa) <= 1e-14 * np.maximum(1.0, np.abs(xa))
            active = active[~done]
        return np.where(below, self.lower, x).reshape(np.shape(eps))

    @functools.cached_property
    def _newton_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x grid, L, L') on 4097 points over the support's reach, [-40 sigma, k + 40 sigma] ([0, ...] relaxed):
        the table Newton's starts are read from, formed once per pair (every inversion of the pair reads the same
        table; at k 1e5 forming it was most of the per-patient epsilon's time, 16 times over)."""
        k, sigma = self.records_per_patient, self.noise_multiplier
        grid = np.linspace(0.0 if self.relaxed else -40 * sigma, k + 40 * sigma, 4097)
        return (grid, *self._loss_and_slope(grid))

    def _loss_and_slope(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L(x), L'(x)): the Newton iteration's value and slope, and the table its start is read from."""
        if x.ndim != 1 or (x.size <= LOSS_CHUNK and not self._pruned):
            return self._loss_and_slope_pass(x)
        value, slope = np.empty(x.size), np.empty(x.size)
        for part in self._parts(x.size):  # (see LOSS_CHUNK and _rows_for: the same numbers)
            xp = x[part]
            value[part], slope[part] = self._loss_and_slope_pass(xp, self._rows_for(xp))
        return value, slope

    def _loss_and_slope_pass(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(L(x), L'(x)) in one pass over x (``rows``: the components :meth:`_rows_for` keeps)."""
        s2 = self.noise_multiplier ** 2
        j = self.means[:, None] if rows is None else self.means[rows][:, None]
        terms = self._log_terms(x, rows)
        value = _logsumexp0(terms)
        post = np.exp(terms - value[None, :])
        if self.relaxed:
            slope = np.sum(post * j / s2 * np.tanh(j * x[None, :] / s2), axis=0)
        else:
            slope = np.sum(post * j / s2, axis=0)
        return value, slope

    @staticmethod
    def _hermite_start(flat: np.ndarray, inside: np.ndarray, grid: np.ndarray, table: np.ndarray,
                       slope: np.ndarray, x: np.ndarray, bound: np.ndarray) -> np.ndarray:
        """Newton's starting points from the cubic Hermite interpolant of the inverse x(eps) on the table (values
        grid, slopes 1 / L'): within ~(grid step)^4 of the root where x(eps) is smooth, so Newton needs one step
        and its check instead of three and the check. Kept inside the table's cell that holds eps (a bracket of
        the root up to the table's round-off) and at most at the analytic bound; where either end's slope is not
        positive (the relaxed model's flat bottom at x = 0) the linear start ``x`` is kept. A start left of the
        root is safe: L is convex, so the first Newton step lands at or right of the root (and at most at the
        bound), and the iteration decreases from there as before."""
        idx = np.nonzero(inside)[0]
        e = flat[idx]
        i = np.clip(np.searchsorted(table, e, side="right") - 1, 0, table.size - 2)
        e0, e1 = table[i], table[i + 1]
        s0, s1 = slope[i], slope[i + 1]
        ok = (s0 > 0) & (s1 > 0) & (e1 > e0)
        width = np.where(ok, e1 - e0, 1.0)
        t = np.where(ok, (e - e0) / width, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            d0 = width / np.where(ok, s0, 1.0)
            d1 = width / np.where(ok, s1, 1.0)
        t2, t3 = t * t, t * t * t
        x0, x1 = grid[i], grid[i + 1]
        cubic = ((2 * t3 - 3 * t2 + 1) * x0 + (t3 - 2 * t2 + t) * d0 + (-2 * t3 + 3 * t2) * x1 + (t3 - t2) * d1)
        cubic = np.minimum(np.clip(cubic, x0, x1), bound[idx])
        out = x.copy()
        out[idx] = np.where(ok & np.isfinite(cubic), cubic, x[idx])
        return out

    def x_tail(self, budget: float) -> float:
        """An x beyond which the Q-mass (hence also the P-mass) of {X > x} ({|X| > x} relaxed) is <= budget."""
        k, sigma = self.records_per_patient, self.noise_multiplier
        # Every component N(j, sigma^2), j <= k, has tail <= Phibar((x - k) / sigma); |X| doubles it.
        share = budget / 2 if self.relaxed else budget
        return float(k + sigma * -special.ndtri(share))

    # -- masses -----------------------------------------------------------------------------------------------------

    def masses(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P-mass, Q-mass) of the observation set {a < X <= b} (of {a < |X| <= b} in the relaxed model)."""
        sigma = self.noise_multiplier
        w = np.exp(self.log_weights)
        if self.relaxed:
            def mass(m: float) -> np.ndarray:
                return _mass_normal(a, b, m, sigma) + _mass_normal(-b, -a, m, sigma)
        else:
            def mass(m: float) -> np.ndarray:
                return _mass_normal(a, b, m, sigma)
        p = mass(0.0)
        qm = np.zeros_like(p)
        for j, wj in enumerate(w):
            if wj > 0:
                qm = qm + wj * (p if j == 0 else mass(float(j)))
        return p, qm

    def cell_masses(self, xs: np.ndarray, log_p: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(P-mass, Q-mass, log P-mass or None) of the contiguous cells {xs[i] < X <= xs[i + 1]} (|X| relaxed; xs
        ascending, the ends may be infinite): :meth:`masses` and :meth:`log_p_masses` of (xs[:-1], xs[1:]), bit for
        bit, with each boundary's tail computed once (:func:`_cells_normal`)."""
        xs = np.asarray(xs, dtype=float)
        sigma = self.noise_multiplier
        w = np.exp(self.log_weights)
        tail = special.ndtr(-np.abs(xs / sigma))  # P's tails at the boundaries: for its masses and their logs
        if self.relaxed:
            flipped = -xs[::-1]

            def mass(m: float) -> np.ndarray:
                return (_cells_normal(xs, m, sigma, tail_values=tail if m == 0.0 else None)
                        + _cells_normal(flipped, m, sigma)[::-1])
        else:
            def mass(m: float) -> np.ndarray:
                return _cells_normal(xs, m, sigma, tail_values=tail if m == 0.0 else None)
        p = mass(0.0)
        qm = np.zeros_like(p)
        for j, wj in enumerate(w):
            if wj > 0:
                qm = qm + wj * (p if j == 0 else mass(float(j)))
        if not log_p:
            return p, qm, None
        lp = _cells_normal(xs, 0.0, sigma, log=True, tail_values=tail)
        return p, qm, lp + math.log(2.0) if self.relaxed else lp

    def log_p_masses(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """log P-mass of {a < X <= b} ({a < |X| <= b}, 0 <= a, in the relaxed model), exact in log space where
        the mass itself underflows (the remove-direction PLD needs e^eps P(.) at eps up to ``LOSS_CAP``)."""
        log_p = _log_mass_normal(a, b, 0.0, self.noise_multiplier)
        return log_p + math.log(2.0) if self.relaxed else log_p


# -- validation shared by every public function ------------------------------------------------------------------

def check_noise_multiplier(value: float) -> float:
    return check_sigma(value)  # the floor every command shares (dpaudit.config.MIN_NOISE_MULTIPLIER)


def check_q(value: float) -> float:
    return check_probability("sampling_probability", value, open_high=False,
                             fix="pass the expected batch size divided by the number of training records, e.g. --q 0.01")


def check_steps(value: int) -> int:
    return check_int("steps", value, fix="pass the number of DP-SGD steps, epochs * ceil(N / batch size)")


def check_delta(value: float) -> float:
    return check_probability("target_delta", value, fix=f"pass a delta well below 1/N, {DELTA_EXAMPLE}")


#: delta of every experiment of the seed paper (Ziller et al., section 4.4: "For all experiments, we used a
#: delta = 8e-7").
PAPER_DELTA = 8e-7


def default_delta(n_train: int | None) -> float:
    """The one default target_delta of every command: min(8e-7, 1 / (10 N)), the seed paper's delta tightened to stay
    well below 1/N for datasets above 125 000 records; 8e-7 when N is not known (the rule's value for any N up to
    125 000; callers say so).

    >>> default_delta(400), default_delta(10**6), default_delta(None)
    (8e-07, 1e-07, 8e-07)
    """
    if n_train is None:
        return PAPER_DELTA
    return min(PAPER_DELTA, 1.0 / (10 * check_int("n_train", n_train, fix="pass the number of training records")))


def default_delta_rule(n_train: int | None) -> str:
    """Where :func:`default_delta` came from, in words (for notes and warnings)."""
    if n_train is None:
        return ("target_delta = 8e-07 by default: the seed paper's delta, the default min(8e-7, 1/(10 N)) for any "
                "N up to 125 000; N_train is not known here (pass --n-train N or --delta)")
    return f"target_delta = {default_delta(n_train):g} by default: min(8e-7 (seed paper), 1/(10 N)) with N = {n_train}"


def check_records_per_patient(value: int) -> int:
    return check_int("records_per_patient", value,
                     fix="pass the number of images one patient contributes (1 for record-level guarantees)")


def check_threat_model(value: str) -> str:
    name = str(value).strip().lower().replace("-", "_")
    if name not in THREAT_MODELS:
        raise invalid("threat_model", value, "worst-case or relaxed", "pass --threat-model worst-case or relaxed")
    return name


def check_kappa(kappa: float | np.ndarray | list[float]) -> np.ndarray:
    """Validate kappa (a float or a sequence) and return a 1-d float array."""
    try:
        arr = np.atleast_1d(np.asarray(kappa, dtype=float))
    except (TypeError, ValueError):
        raise invalid("kappa", kappa, "a number in (0, 1) or a sequence of them") from None
    if arr.ndim != 1 or arr.size == 0:
        raise invalid("kappa", kappa, "a number in (0, 1) or a non-empty sequence of them")
    for v in arr:
        check_probability("kappa", float(v), fix="pass the blind-guess success probability, e.g. 1/N_train")
    return arr
