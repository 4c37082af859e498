"""Soundness fuzzer for dpaudit's bounds: random DP-SGD points, each bound checked against an independent reference.

A bound that is secretly not a bound is the worst bug dpaudit can have; this script looks for one. Points are drawn
log-uniformly (sigma 0.05-50, q 1e-6-1, T 1-1e6, delta 1e-10-1e-2, kappa 1e-7-0.5), records_per_patient k from
1/2/5/10 and the threat model from worst_case/relaxed; point i of seed S is drawn from its own generator
``default_rng([S, i])``, so ``--seed S --only i`` reruns exactly that point. Checks at every point:

1. **epsilon** (``epsilon_bound``, k records moving together): a sound upper bound must be >= dp_accounting 0.6.0's
   OPTIMISTIC PLD (privacy buckets, losses rounded down: ``pessimistic_estimate=False``), whose hockey-stick curve
   lies below the exact one at every epsilon (rounding a loss down lowers E_Q[(1 - e^{eps - L})_+], composition
   keeps that, and truncated tails are dropped, which lowers it too), so its epsilon is a lower bound on the exact
   one. Every epsilon comparison is made in delta, where the reference's error is its round-off alone: an upper
   bound e fails when the optimistic PLD's delta at e exceeds target_delta by more than ``DELTA_RTOL`` relative
   plus ``DELTA_ATOL`` (the FFT round-off of a float64 PMF summed over the tail; violations within it are
   warnings). The optimistic value is far below the exact one at long runs (each step's loss is rounded down by
   up to the interval h, T h in all): that gap is reported as the reference's own width. dpaudit's value is
   compared with the PESSIMISTIC (connect-the-dots) reference at the same interval: the ratio is reported, and
   dpaudit is flagged *loose* when it lies more than ``LOOSE_RTOL`` above it while the reference's bracket
   (optimistic, pessimistic) is itself narrower than that (equal-or-finer accuracy); otherwise the point is noted
   ``ref_coarse``. A reference whose optimistic end lies above its pessimistic end contradicts itself and gives
   no verdict (counted as ``reference_inconsistent``). The reference pair is the Gaussian with sampling_prob q for k = 1, and for k > 1 dpaudit's pair
   (``bounds/_mechanism.py``: Q = sum_j Binom(k, q)(j) N(j, sigma^2) against P = N(0, sigma^2), each of the k
   records sampled independently) as ``from_mixture_gaussian_mechanism(sigma, [0..k], Binom(k, q))``. Also
   ``epsilon_pld_refined``'s bracket: its upper end is checked as above, and its lower end e fails when the
   pessimistic reference's delta at e is below target_delta (less the same slack: then the exact epsilon lies
   below e; a lower end of 0 needs no check: epsilon >= 0 by definition, both libraries clamp it there). Every
   epsilon failure read from dp_accounting is put to a **referee** (:func:`referee`): the exact delta(e) of the
   composed worst-case pair in both directions, by the inversion integral of the T-fold moment generating function
   on a line through the saddle point (no loss grid, no FFT). The failure stands unless the referee proves e on
   the claimed side of target_delta beyond its own error; a refuted failure is a warning ("reference refuted", the
   point counted in ``reference_refuted``). dp_accounting's reference is itself wrong at tiny delta: its
   "pessimistic" delta fell 0.5% below the exact one (sigma 10.57, q 0.25, T 23798, k 2, delta 1.3e-10, interval
   1.6e-4) and 1.5-2.3% below it (sigma 0.31, q 0.033, T 249183, delta 3.2e-10, intervals 6.25e-4 and 2.5e-3),
   1e-12..7e-12 absolute, the order of the FFT round-off its composed PMF carries (negative atoms summing to
   -7.5e-13..-7.5e-12: the float64 error of each Fourier coefficient grows T-fold in the power); and its
   get_epsilon_for_delta ignores the P-mass where e^{-loss} underflows (losses above ~745), returning an epsilon
   above one where its own delta is already below target (noted on the point, as the verdicts are read in
   delta). For k = 1 the RDP epsilon (``epsilon_rdp``) is checked as an upper bound the same way and must be
   >= the PLD bracket's lower end (RDP is looser, but an upper bound too). Every epsilon claim dp_accounting leaves
   open goes to the referee as well: at a point where it timed out, failed or contradicted itself (epsilon_bound
   and the bracket's lower end), and wherever its optimistic and pessimistic deltas straddle target_delta at the
   claim (too coarse to decide: a 10% underestimate of epsilon hid there at small q). The referee fails a claim it
   proves wrong; one it cannot judge is an "epsilon unjudged" warning, its points listed in ``epsilon_unjudged``.
   Each referee call runs in a child process with a wall-clock limit (``--referee-timeout``, default 20 s; a call
   at tiny sigma with k 10 took minutes): a claim whose referee runs past it is unjudged (never a pass, never a
   failure; its points also listed in ``referee_timed_out``), and a dp_accounting failure it could not refute
   in time stands.
2. **worst-case ReRo** gamma at kappa/10, kappa, 10 kappa (``rero_bound(..., threat_model="worst_case")``): >= the
   Neyman-Pearson power read from the optimistic reference PLD (REMOVE direction; the power is the conjugate of
   the hockey-stick curve, inf_eps delta(eps) + e^eps kappa, so a lower hockey-stick curve gives a lower power),
   less ``GAMMA_ATOL``, and its ``lower`` end <= the pessimistic power (Q-mass dp_accounting's truncations drop is
   put back at loss +infinity there, see :func:`np_power`); flagged loose above the pessimistic reference's power by more than ``LOOSE_RTOL``. Always:
   gamma in [kappa, 1], ``lower`` <= gamma, and gamma monotone in kappa (within the array) and, on a small sweep,
   in sigma (down: x1.25), q (up: x1.25, at most 1) and T (up: x2). Monotonicity fails when the two proven brackets
   contradict it (the lower end of the larger exact value above the upper end of the smaller); reported gammas
   that are merely out of order within their brackets are counted as ``order`` warnings.
3. **relaxed ReRo** (relaxed points): its bracket must not lie above the worst case's at the same point (a proven
   contradiction fails; an inverted pair of reported values is a warning), and gamma must be >= a Monte Carlo
   power of the relaxed adversary's own Neyman-Pearson test: the composed loss S (the |X| pair's log-likelihood
   ratio, written out here independently of dpaudit) is sampled under Q in two independent halves; the first
   fixes a threshold t where the importance-weighted P-tail E_Q[e^{-S} 1{S > t}] is kappa, the second estimates
   the test's level p and power g with their standard errors. Any test bounds the trade-off curve from below and
   the power curve is concave through the origin, so gamma(kappa) >= min(1, kappa / p) g; the check uses
   p + 4 se and g - 4 se (4 standard errors). Run only where samples x T fits ``--mc-work``.

The reference runs in a child process with a wall-clock limit (``--ref-timeout``, default 20 s): intervals 1e-2,
2.5e-3, ... are tried while the next is predicted to fit (each about 4x the cost of the last), down to 1e-3 x
epsilon / T or 1e-6; a reference that does not finish even at 1e-2 is skipped and counted.

Usage: ``python bench/fuzz_bounds.py --points 200 --seed 0 --budget-s 1500 --json fuzz.json``; one point again:
``python bench/fuzz_bounds.py --seed 0 --only 17``. Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from dpaudit.bounds import epsilon_bound, epsilon_rdp, rero_bound
from dpaudit.bounds.pld import WindowTooLargeError, clear_caches, epsilon_pld_refined
from dpaudit.bounds.schedule import Schedule

#: Relative slack on delta when the optimistic reference's delta is read at dpaudit's epsilon (float round-off).
DELTA_RTOL = 1e-6
#: Absolute slack on delta: the reference's FFT round-off (float64, ~1e-17..1e-16 per atom, summed over up to 1e6
#: atoms of the tail). Measured: at sigma 11.02, q 0.0043, T 18147, k 5, delta 5.2e-10 dp_accounting's pessimistic
#: epsilon moves non-monotonically by 2e-5 relative between intervals 2e-5, 1e-5, 9.8e-6 and 5e-6 (about 5e-14 in
#: delta). Violations within the slack are reported as warnings ("within round-off"), not failures.
DELTA_ATOL = 1e-13
GAMMA_ATOL = 1e-12
#: dpaudit claims 1e-4 (epsilon) and 5e-4 (ReRo) relative; more than this above an equally accurate reference is
#: reported as loose (not unsound, but a bound that gives away tightness it promises).
LOOSE_RTOL = 1e-3
#: The monotonicity sweep's factors.
SWEEP = {"sigma": 1.25, "q": 1.25, "steps": 2}


@dataclass(frozen=True)
class Point:
    index: int
    noise_multiplier: float
    sampling_probability: float
    steps: int
    target_delta: float
    kappa: float
    records_per_patient: int
    threat_model: str

    @property
    def kappas(self) -> np.ndarray:
        return np.array([self.kappa / 10, self.kappa, min(0.5, 10 * self.kappa)])

    def call(self) -> str:
        return (
            f"sigma={self.noise_multiplier!r}, q={self.sampling_probability!r}, T={self.steps}, "
            f"delta={self.target_delta!r}, kappa={self.kappa!r}, k={self.records_per_patient}, "
            f"threat_model={self.threat_model!r}"
        )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_point(seed: int, index: int, max_steps: int = 1_000_000) -> Point:
    rng = np.random.default_rng([seed, index])
    sigma = _log_uniform(rng, 0.05, 50.0)
    q = _log_uniform(rng, 1e-6, 1.0)
    steps = max(1, min(max_steps, round(_log_uniform(rng, 1.0, 1e6 + 1) - 0.5)))
    delta = _log_uniform(rng, 1e-10, 1e-2)
    kappa = _log_uniform(rng, 1e-7, 0.5)
    k = int(rng.choice([1, 2, 5, 10]))
    tm = str(rng.choice(["worst_case", "relaxed"]))
    return Point(index, sigma, q, steps, delta, kappa, k, tm)


# -- the reference: dp_accounting 0.6.0 ---------------------------------------------------------------------------


def _reference_pld(sigma: float, q: float, k: int, h: float, pessimistic: bool):
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    if k == 1:
        return pld_lib.from_gaussian_mechanism(
            sigma,
            sampling_prob=q,
            value_discretization_interval=h,
            use_connect_dots=pessimistic,
            pessimistic_estimate=pessimistic,
        )
    js = np.arange(k + 1)
    w = stats.binom.pmf(js, k, q)
    keep = w > 0
    return pld_lib.from_mixture_gaussian_mechanism(
        sigma,
        [float(j) for j in js[keep]],
        [float(x) for x in w[keep]],
        value_discretization_interval=h,
        use_connect_dots=pessimistic,
        pessimistic_estimate=pessimistic,
    )


def np_power(pmf, kappa: np.ndarray, pessimistic: bool) -> np.ndarray:
    """Neyman-Pearson power at level kappa of a dp_accounting PMF (REMOVE direction): atoms read from the highest
    loss down (Q-mass m, P-mass m e^{-loss}), the last one split (bench_bounds.reference_gamma's read).

    dp_accounting's truncations drop Q-mass (up to ~1e-9 of it at long runs: the composed PMF's Q-masses and
    infinity atom then sum to less than 1). Dropped mass only lowers the read, which keeps the optimistic read a
    lower bound; the pessimistic read adds it back as if it were at loss +infinity (Q-mass at no P-cost), the
    worst place it could be, else the "pessimistic" power can fall below the exact one near gamma = 1."""
    pmf = pmf.to_dense_pmf() if hasattr(pmf, "to_dense_pmf") else pmf
    probs = np.asarray(pmf._probs, dtype=float)
    losses = (pmf._lower_loss + np.arange(probs.size)) * pmf._discretization
    order = np.argsort(-losses, kind="stable")
    m, loss = probs[order], losses[order]
    cum_p = np.cumsum(m * np.exp(-loss))
    cum_q = np.cumsum(m)
    out = np.empty(kappa.size)
    for i, a in enumerate(kappa):
        j = int(np.searchsorted(cum_p, a))
        if j >= m.size:
            out[i] = pmf._infinity_mass + cum_q[-1]
            continue
        before_p = cum_p[j - 1] if j > 0 else 0.0
        before_q = cum_q[j - 1] if j > 0 else 0.0
        out[i] = pmf._infinity_mass + before_q + (a - before_p) * math.exp(loss[j])
    if pessimistic:
        out += max(0.0, 1.0 - pmf._infinity_mass - float(cum_q[-1]))
    return np.minimum(out, 1.0)


def _reference_at(point: Point, h: float) -> dict:
    s, q, t, k = point.noise_multiplier, point.sampling_probability, point.steps, point.records_per_patient
    out: dict = {"interval": h}
    for name, pess in (("opt", False), ("pess", True)):
        pld = _reference_pld(s, q, k, h, pess).self_compose(t)
        out[f"eps_{name}"] = float(pld.get_epsilon_for_delta(point.target_delta))
        out[f"gamma_{name}"] = np_power(pld._pmf_remove, point.kappas, pess).tolist()
        out[f"{name}_pld"] = (
            pld  # kept only in this process (deltas read at dpaudit's epsilons by the caller)
        )
    return out


def reference(point: Point, eps_hint: float, timeout: float) -> dict:
    """Optimistic and pessimistic epsilon and Neyman-Pearson powers (runs in a child process): intervals 1e-2,
    2.5e-3, ... while the next (about 4x the cost of the last) is predicted to fit in the time left, and no finer
    than 1e-3 x epsilon / T (the optimistic end's error is about T h / 2) or 1e-6."""
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    start = time.perf_counter()
    h_acc = max(1e-6, 1e-3 * max(eps_hint, 0.01) / point.steps) if math.isfinite(eps_hint) else 1e-4
    h = 1e-2
    while True:
        t0 = time.perf_counter()
        out = _reference_at(point, h)
        took = time.perf_counter() - t0
        left = timeout - (time.perf_counter() - start)
        if h / 4 < h_acc or 5 * took > 0.8 * left:
            return out
        h /= 4


def _reference_child(point, eps_ours, read_at, timeout, queue):
    try:
        r = reference(point, eps_ours, timeout)
        for name in ("opt", "pess"):
            pld = r.pop(f"{name}_pld")
            r[f"delta_{name}_at"] = {
                key: float(pld.get_delta_for_epsilon(e)) if math.isfinite(e) else 0.0
                for key, e in read_at.items()
            }
        queue.put(("ok", r))
    except Exception as e:  # the child reports any failure of the reference as a skip, with its message
        queue.put(("error", f"{type(e).__name__}: {e}"))


def _end_child(proc, timed_out: bool) -> None:
    """Reap a child: killed at once when it ran past its limit (it is still computing), else given 5 s to exit."""
    if not timed_out:
        proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
    proc.join()


def _in_child(target, args: tuple, timeout: float, what: str) -> tuple[str, object]:
    """Run ``target(*args, queue)`` in a forked child and return what it put on the queue, ``(status, payload)``
    (``"ok"`` or ``"error"``), or ``("timeout", "WHAT over N s")`` past ``timeout`` s (the child is then killed)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        status, payload = queue.get(timeout=timeout)
    except Exception:
        status, payload = "timeout", f"{what} over {timeout:g} s"
    _end_child(proc, status == "timeout")
    return status, payload


def run_reference(point: Point, eps_ours: float, read_at: dict, timeout: float) -> dict:
    """The reference in a child process (killed after ``timeout`` s); ``read_at``: name -> epsilon at which both
    reference PLDs' delta is read."""
    status, payload = _in_child(_reference_child, (point, eps_ours, read_at, timeout), timeout, "reference")
    return {"status": status, **(payload if status == "ok" else {"reason": payload})}


# -- the referee: the exact delta(eps) by inverting the composed loss's moment generating function ---------------


#: The referee's largest x grid (points): beyond it (sigma near 0.05 with a large tilt) it gives no verdict.
REFEREE_MAX_GRID = 2_000_000


def _pair_loss(x: np.ndarray, sigma: float, q: float, k: int) -> np.ndarray:
    """log dQ/dP at x for the worst-case pair, written out here independently of dpaudit's loss code:
    Q = sum_j Binom(k, q)(j) N(j, sigma^2), P = N(0, sigma^2)."""
    js = np.arange(k + 1, dtype=float)
    logw = stats.binom.logpmf(js, k, q)
    keep = np.isfinite(logw)
    js, logw = js[keep], logw[keep]
    return special.logsumexp(
        logw[:, None] + (2 * js[:, None] * x[None, :] - js[:, None] ** 2) / (2 * sigma * sigma), axis=0
    )


def _log_mgf(z: np.ndarray, sigma: float, q: float, k: int, direction: str, fine: int) -> np.ndarray:
    """log E[e^{z L}] of one step's privacy loss at complex z (Re z > 0): remove, L = log dQ/dP under Q, which is
    E_P[e^{(z + 1) L}]; add, L = log dP/dQ under P, E_P[e^{-z log dQ/dP}]. The integral over x is the trapezoid
    rule on a grid of step min(sigma / 40, sigma^2 / 60) / fine, exponentially accurate for an integrand analytic
    in a strip (the nearest singularity of log dQ/dP is pi sigma^2 off the real axis), over +-40 sigma around the
    tilted integrand's mass."""
    z = np.asarray(z, dtype=complex)
    lam = float(z.real.max())
    tilt = lam + 1.0 if direction == "remove" else -lam
    centre = max(0.0, tilt) * k
    hx = min(sigma / 40.0, sigma * sigma / 60.0) / fine
    lo, hi = min(-40 * sigma, centre - 40 * sigma), max(40 * sigma, centre + 40 * sigma) + k + hx
    if (hi - lo) / hx > REFEREE_MAX_GRID:
        raise ValueError(
            f"the referee's x grid would hold {(hi - lo) / hx:.3g} points (tiny sigma, large tilt)"
        )
    x = np.arange(lo, hi, hx)
    loss = _pair_loss(x, sigma, q, k)
    logp = -x * x / (2 * sigma * sigma) - 0.5 * math.log(2 * math.pi * sigma * sigma)
    mult = z + 1.0 if direction == "remove" else -z
    out = np.empty(z.size, dtype=complex)
    for i, m in enumerate(mult):
        a = logp + m * loss
        top = float(a.real.max())
        total = np.sum(np.exp(a - top)) * hx
        # a sum that cancels to 0 exactly (far out in t, M(z) -> 0): a finite, very negative log, e^it = 0
        out[i] = np.log(total) + top if total != 0 else complex(-1e200, 0.0)
    return out


def _exact_delta_once(
    eps: float,
    sigma: float,
    q: float,
    k: int,
    steps: int,
    direction: str,
    fine: int,
    reach: float | None = None,
):
    """delta(eps) = E[(1 - e^{eps - L_T})_+] of the T-fold composition, L_T the sum of T independent per-step
    losses, by the inversion integral (1 / 2 pi i) int_{lam - i inf}^{lam + i inf} M(z)^T e^{-z eps} dz / (z (z + 1))
    (the two-sided Laplace transform of (1 - e^{-u})_+ is 1 / (z (z + 1)) for Re z > 0), on the line through the
    saddle point lam > 0: exact for any lam; the trapezoid rule in t with step width / (8 fine) out to ``reach``
    widths (width: the saddle's 1 / sqrt(curvature)); ``reach`` None: where the integrand has died out (below
    REFEREE_DIED_OUT of its size at the saddle at 4 probes in a row, t = 40 widths x 2^{j/4}, at least 40, at most
    REFEREE_MAX_REACH widths). Where the loss is nearly a point mass (small q) the integrand decays on the scale of
    1 / (the bulk's spread), far beyond the saddle's width: sigma 1.107, q 3.8e-4, T 331 needs ~1000 widths.
    No grid in the loss, so no discretisation error and no FFT: the
    numbers it rests on are the per-step moment generating function's, to float64 round-off (times T). Returns
    (delta, the integrand's size at the far end relative to the saddle, a bound on delta where it underflows, else
    0, a bound on the part of the integral beyond the far end t_max, the Chernoff bound on delta), or None where it
    cannot be formed. The far part: |M(lam + it)| <= M(lam) and |z (z + 1)| >= t^2, so (1 / pi) int_{t_max}^inf
    |integrand| dt <= M(lam)^T e^{-lam eps} / (pi t_max); it matters where the loss is nearly a point mass (small
    q: |M(lam + it)|^T then stays near M(lam)^T far beyond the saddle's width, and the integrand decays only as
    1 / t^2). The Chernoff bound: (1 - e^{-u})_+ <= e^{lam u} sup_u (1 - e^{-u}) e^{-lam u} <= e^{lam u} / (1 + lam),
    so delta <= M(lam)^T e^{-lam eps} / (1 + lam) at any lam > 0."""

    def real_exponent(lam: float) -> float:
        k_lam = float(_log_mgf(np.array([lam]), sigma, q, k, direction, fine)[0].real)
        return steps * k_lam - lam * eps - math.log(lam * (lam + 1.0))

    from scipy import optimize

    res = optimize.minimize_scalar(
        lambda u: real_exponent(math.exp(u)), bounds=(-14.0, 6.0), method="bounded", options={"xatol": 1e-10}
    )
    lam = math.exp(res.x)
    step = 1e-4 * lam
    curv = (real_exponent(lam + step) - 2 * real_exponent(lam) + real_exponent(lam - step)) / (step * step)
    if not (math.isfinite(curv) and curv > 0):
        return None
    width = 1.0 / math.sqrt(curv)
    if reach is None:
        probe = 40.0 * 2.0 ** (np.arange(4 * int(math.log2(REFEREE_MAX_REACH / 40.0)) + 1) / 4.0)
        zp = lam + 1j * np.concatenate([[0.0], probe * width])
        lp = steps * _log_mgf(zp, sigma, q, k, direction, fine) - zp * eps - np.log(zp * (zp + 1.0))
        small = (lp[1:].real - lp[0].real) < math.log(REFEREE_DIED_OUT)
        runs = [j for j in range(probe.size) if small[j : j + 4].all()]
        reach = float(probe[runs[0]]) if runs else REFEREE_MAX_REACH
    ht = width / (8 * fine)
    t = np.arange(0.0, reach * width, ht)
    base0 = real_exponent(lam) + math.log(lam * (lam + 1.0))
    # (floored at e^-700: a larger, still valid bound that does not underflow)
    chernoff = min(1.0, math.exp(min(max(base0, -700.0), 700.0)) / (1.0 + lam))
    if base0 < -700.0:
        # delta underflows: reported as delta 0 with the Chernoff bound as its error.
        return 0.0, 0.0, chernoff, 0.0, chernoff, 0.0
    far = math.exp(min(base0, 700.0)) / (math.pi * t[-1])
    z = lam + 1j * t
    log_integrand = steps * _log_mgf(z, sigma, q, k, direction, fine) - z * eps - np.log(z * (z + 1.0))
    base = float(log_integrand[0].real)
    vals = np.exp(log_integrand - base).real
    weights = np.ones_like(t)
    weights[0] = 0.5
    # M(conj z) = conj M(z): the line integral is twice the real part over t >= 0.
    delta = float(np.sum(weights * vals) * ht / math.pi * math.exp(base))
    return (delta, float(abs(vals[-1])), 0.0, far, chernoff, reach) if math.isfinite(delta) else None


#: The integrand's size at the far end (relative to the saddle) below which the integral is taken as complete.
REFEREE_DIED_OUT = 1e-12
#: The t range's largest reach (saddle widths): 8 fine points a width, so at most 41k points at fine 2.
REFEREE_MAX_REACH = 40.0 * 2**6


def exact_delta(eps: float, sigma: float, q: float, k: int, steps: int, direction: str = "remove"):
    """The exact delta(eps) of the worst-case pair composed ``steps`` times in one direction, with an error
    estimate: (delta, err), err the change from a second evaluation at half both steps (x and t) plus
    (1e-12 + 1e-15 T) relative: the round-off of T log M(z), which both evaluations share (against the Gaussian
    mechanism's closed form in 50-digit arithmetic, k 1-5, delta 1e-5-1e-100: 1.4e-11-3.3e-11 relative at T 1e5-1e6,
    up to 8x the step change and 1e-12 alone). Where the integrand has not died out even at REFEREE_MAX_REACH
    widths, err carries the rigorous bound on the part beyond (:func:`_exact_delta_once`); the range is then
    clipped to [0, the Chernoff bound] and returned as its midpoint and half-width. None where either evaluation
    cannot be formed (then no verdict).
    An independent referee for dp_accounting where its FFT round-off (relative 1e-16 per Fourier coefficient,
    amplified T-fold by the power) is comparable to delta: checked against dp_accounting's PLDs in the tests."""
    try:
        a = _exact_delta_once(eps, sigma, q, k, steps, direction, 1)
        b = None if a is None else _exact_delta_once(eps, sigma, q, k, steps, direction, 2, a[5] or None)
    except ValueError:  # the grid would be too large: no verdict
        return None
    if a is None or b is None:
        return None
    if max(a[1], b[1]) <= REFEREE_DIED_OUT and not (b[0] <= 0 and b[2] == 0.0):
        return b[0], abs(a[0] - b[0]) + (1e-12 + 1e-15 * steps) * abs(b[0]) + max(a[2], b[2])
    err = abs(a[0] - b[0]) + (1e-12 + 1e-15 * steps) * abs(b[0]) + max(a[2], b[2]) + b[3]
    low, high = max(0.0, b[0] - err), min(b[0] + err, b[4], 1.0)
    if low > high:
        return None
    return (low + high) / 2, (high - low) / 2


def referee(point: Point, eps: float) -> dict | None:
    """Both directions' exact delta at ``eps`` (epsilon is their maximum, so delta at eps is the larger one):
    {"delta": the larger, "direction": its direction, "low"/"high": the larger delta's proven range (each
    direction's delta -+ its error, the larger of each)}; None where no verdict is possible."""
    out = {}
    for direction in ("remove", "add"):
        r = exact_delta(
            eps,
            point.noise_multiplier,
            point.sampling_probability,
            point.records_per_patient,
            point.steps,
            direction,
        )
        if r is None:
            return None
        out[direction] = r
    direction = max(out, key=lambda d: out[d][0])
    return {
        "delta": float(out[direction][0]),
        "direction": direction,
        "low": float(max(v - e for v, e in out.values())),
        "high": float(max(v + e for v, e in out.values())),
    }


class RefereeTimeout(Exception):
    """The referee did not finish within its wall-clock limit (``--referee-timeout``)."""


def _referee_child(point, eps, queue):
    try:
        queue.put(("ok", referee(point, eps)))
    except Exception as e:  # the child reports the referee's failure; the parent raises it as no verdict
        queue.put(("error", f"{type(e).__name__}: {e}"))


def run_referee(point: Point, eps: float, timeout: float | None) -> dict | None:
    """:func:`referee` in a child process killed after ``timeout`` s (:class:`RefereeTimeout`), the way the
    dp_accounting reference runs (:func:`run_reference`); ``timeout`` None, 0 or infinite: called here, no limit."""
    if not timeout or not math.isfinite(timeout):
        return referee(point, eps)
    status, payload = _in_child(_referee_child, (point, eps), timeout, "referee")
    if status == "timeout":
        raise RefereeTimeout(payload)
    if status == "error":
        raise RuntimeError(payload)
    return payload


# -- Monte Carlo of the relaxed adversary (independent of dpaudit's loss code) ---------------------------------------


def relaxed_loss(y: np.ndarray, sigma: float, q: float, k: int) -> np.ndarray:
    """log dQ/dP at y = |x| >= 0, P = |N(0, s^2)|, Q = |sum_j Binom(k, q)(j) N(j, s^2)| (Kaissis et al. 2023):
    log sum_j w_j (e^{(2 j y - j^2) / 2s^2} + e^{(-2 j y - j^2) / 2s^2}) / 2."""
    js = np.arange(k + 1, dtype=float)
    logw = stats.binom.logpmf(js, k, q)
    keep = np.isfinite(logw)
    js, logw = js[keep], logw[keep]
    s2 = sigma * sigma
    a = (2 * js[:, None] * y[None, :] - js[:, None] ** 2) / (2 * s2)
    b = (-2 * js[:, None] * y[None, :] - js[:, None] ** 2) / (2 * s2)
    terms = np.concatenate([logw[:, None] + a, logw[:, None] + b]) - math.log(2.0)
    return special.logsumexp(terms, axis=0)


def _sample_relaxed(point: Point, n: int, rng: np.random.Generator) -> np.ndarray:
    s, q, k, steps = (
        point.noise_multiplier,
        point.sampling_probability,
        point.records_per_patient,
        point.steps,
    )
    out = np.zeros(n)
    per = max(1, 1_000_000 // steps)
    for start in range(0, n, per):
        m = min(per, n - start)
        x = rng.binomial(k, q, size=(m, steps)) + s * rng.standard_normal((m, steps))
        out[start : start + m] = relaxed_loss(np.abs(x).ravel(), s, q, k).reshape(m, steps).sum(axis=1)
    return out


def wilson_lower(g: float, n: int, z: float) -> float:
    """The Wilson score lower confidence bound (z standard errors) on a success probability seen as g in n draws.
    Unlike g - z sqrt(g (1 - g) / n), it does not collapse to g where every draw succeeded: 20,000 hits of 20,000
    bound the power below by 1 / (1 + z^2 / n) = 0.9992 at z = 4, not by 1 (a power of 1 - 1e-5 gives 20,000 hits in
    82% of the runs; the collapsed floor failed sound gammas of 0.99999 at seed 31, points 44 and 54)."""
    z2 = z * z
    centre = g + z2 / (2 * n)
    spread = z * math.sqrt(max(g * (1.0 - g), 0.0) / n + z2 / (4 * n * n))
    return (centre - spread) / (1.0 + z2 / n)


def mc_relaxed_floor(point: Point, n: int, seed: int) -> np.ndarray:
    """A 4-standard-error lower confidence bound on the relaxed adversary's power at each of point.kappas."""
    rng = np.random.default_rng([seed, point.index, 7])
    first = np.sort(_sample_relaxed(point, n, rng))[::-1]
    p_tail = np.cumsum(np.exp(-first)) / n
    second = _sample_relaxed(point, n, rng)
    floors = np.zeros(point.kappas.size)
    for i, a in enumerate(point.kappas):
        j = int(np.searchsorted(p_tail, a))
        if j == 0:
            continue
        t = first[min(j, n) - 1]
        hit = second >= t
        w = np.where(hit, np.exp(-second), 0.0)
        p, se_p = w.mean(), w.std() / math.sqrt(n)
        p_hi, g_lo = p + 4 * se_p, wilson_lower(float(hit.mean()), n, 4.0)
        if g_lo > 0 and p_hi > 0:
            floors[i] = min(1.0, a / p_hi) * g_lo
    return floors


# -- one point -----------------------------------------------------------------------------------------------------


def _rero(point: Point, threat_model: str, **override):
    args = {
        "noise_multiplier": point.noise_multiplier,
        "sampling_probability": point.sampling_probability,
        "steps": point.steps,
        **override,
    }
    return rero_bound(
        args["noise_multiplier"],
        args["sampling_probability"],
        args["steps"],
        point.kappas,
        threat_model=threat_model,
        records_per_patient=point.records_per_patient,
    )


def check_point(point: Point, args) -> dict:
    fails: list[str] = []
    warns: list[str] = []
    rec: dict = {"point": asdict(point), "kappas": point.kappas.tolist()}
    s, q, t, d, k = (
        point.noise_multiplier,
        point.sampling_probability,
        point.steps,
        point.target_delta,
        point.records_per_patient,
    )
    clear_caches()
    t0 = time.perf_counter()
    # -- epsilon ---------------------------------------------------------------------------------------------
    eb = epsilon_bound(s, q, t, d, records_per_patient=k)
    eps = eb.value
    try:
        refined = epsilon_pld_refined(Schedule.single(s, q, t).run(k), None, d)
        bracket = (
            float(refined.lower[0]) if refined.lower is not None else -math.inf,
            float(refined.value[0]),
        )
    except WindowTooLargeError:
        bracket = (-math.inf, math.inf)
    rec.update(epsilon=eps, accountant=eb.accountant, epsilon_bracket=list(bracket))
    if k == 1:
        rdp = epsilon_rdp(s, q, t, d)
        rec["epsilon_rdp"] = rdp
        if rdp < bracket[0] * (1 - 1e-9):
            fails.append(f"epsilon_rdp {rdp!r} below the PLD bracket's lower end {bracket[0]!r}")
        elif rdp < eps * (1 - 1e-9):
            warns.append(f"epsilon_rdp {rdp!r} below epsilon_pld {eps!r} (inside the PLD bracket)")
    # -- ReRo ------------------------------------------------------------------------------------------------
    worst = _rero(point, "worst_case")
    rec["gamma_worst"] = worst.gamma.tolist()
    rec["gamma_worst_lower"] = worst.lower.tolist()
    bounds_here = {"worst_case": worst}
    if point.threat_model == "relaxed":
        rel = _rero(point, "relaxed")
        bounds_here["relaxed"] = rel
        rec["gamma_relaxed"] = rel.gamma.tolist()
        rec["gamma_relaxed_lower"] = rel.lower.tolist()
        if np.any(rel.lower > worst.upper + GAMMA_ATOL):
            fails.append(
                f"relaxed bracket lower {rel.lower.tolist()} above worst-case upper {worst.upper.tolist()}"
            )
        elif np.any(rel.gamma > worst.gamma + GAMMA_ATOL):
            warns.append(
                f"relaxed gamma {rel.gamma.tolist()} above worst-case gamma {worst.gamma.tolist()} "
                "(within their brackets)"
            )
    for name, b in bounds_here.items():
        g = b.gamma
        if np.any(g < point.kappas * (1 - 1e-12)) or np.any(g > 1.0) or not np.all(np.isfinite(g)):
            fails.append(f"{name} gamma {g.tolist()} outside [kappa, 1] (kappas {point.kappas.tolist()})")
        if np.any(b.lower > g + GAMMA_ATOL):
            fails.append(f"{name} lower {b.lower.tolist()} above gamma {g.tolist()}")
        if np.any(np.diff(g) < -GAMMA_ATOL):
            fails.append(f"{name} gamma not monotone in kappa: {g.tolist()} at {point.kappas.tolist()}")
    # -- monotonicity sweep (the point's own threat model) -------------------------------------------------------
    base = bounds_here[point.threat_model]
    sweeps = {
        "sigma": {"noise_multiplier": s * SWEEP["sigma"]},
        "q": {"sampling_probability": min(1.0, q * SWEEP["q"])},
        "steps": {"steps": min(args.max_steps, t * SWEEP["steps"])},
    }
    rec["sweep"] = {}
    for name, override in sweeps.items():
        if next(iter(override.values())) == {"sigma": s, "q": q, "steps": t}[name]:
            continue
        other = _rero(point, point.threat_model, **override)
        rec["sweep"][name] = other.gamma.tolist()
        # sigma up: gamma must go down (other <= base); q, T up: gamma must go up (other >= base).
        hi, lo = (base, other) if name == "sigma" else (other, base)
        if np.any(lo.lower > hi.upper + GAMMA_ATOL):
            fails.append(
                f"{point.threat_model} gamma not monotone in {name} ({override}): brackets "
                f"{lo.lower.tolist()}..{lo.upper.tolist()} vs {hi.lower.tolist()}..{hi.upper.tolist()}"
            )
        elif np.any(lo.gamma > hi.gamma + GAMMA_ATOL):
            warns.append(
                f"order: {point.threat_model} gamma {lo.gamma.tolist()} > {hi.gamma.tolist()} in {name} "
                f"({override}), within the brackets"
            )
    rec["ours_s"] = time.perf_counter() - t0
    # -- relaxed Monte Carlo ---------------------------------------------------------------------------------------
    if point.threat_model == "relaxed":
        n = int(min(args.mc_samples, args.mc_work // t))
        if n >= 2000:
            floor = mc_relaxed_floor(point, n, args.seed)
            rec["mc_relaxed_floor"] = floor.tolist()
            rec["mc_samples"] = n
            if np.any(floor > bounds_here["relaxed"].gamma + GAMMA_ATOL):
                fails.append(
                    f"relaxed gamma {bounds_here['relaxed'].gamma.tolist()} below the Monte Carlo "
                    f"4-se floor {floor.tolist()} (n = {n})"
                )
        else:
            rec["mc_relaxed_floor"] = None
    # -- dp_accounting reference ---------------------------------------------------------------------------------
    if args.ref_timeout > 0:
        t1 = time.perf_counter()
        read_at = {"epsilon": eps, "lower": bracket[0], "upper": bracket[1]}
        if k == 1:
            read_at["rdp"] = rec["epsilon_rdp"]
        ref = run_reference(point, eps, read_at, args.ref_timeout)
        rec["ref_s"] = time.perf_counter() - t1
        rec["reference"] = ref
        decided: set[str] = set()  # the epsilon claims dp_accounting's bracket decided (either way)
        if ref["status"] == "ok" and (
            ref["eps_opt"] > ref["eps_pess"] * (1 + DELTA_RTOL) + 1e-9
            or any(o > p + GAMMA_ATOL for o, p in zip(ref["gamma_opt"], ref["gamma_pess"], strict=True))
        ):
            # The reference contradicts itself (its optimistic end above its pessimistic end): no verdict from it.
            # Seen with from_mixture_gaussian_mechanism(pessimistic_estimate=False) at k = 10 and T = 83701, whose
            # composed optimistic PMF moves *away* from the pessimistic one as the interval shrinks.
            ref["status"] = "inconsistent"
            rec["notes"] = [*rec.get("notes", []), "reference inconsistent: optimistic above pessimistic"]
        if ref["status"] == "ok":
            eo, ep = ref["eps_opt"], ref["eps_pess"]
            rec["eps_ratio_pess"] = eps / ep if ep > 0 else (1.0 if eps == 0 else math.inf)
            ref_width = (ep - eo) / ep if ep > 0 and math.isfinite(ep) else math.inf
            rec["ref_eps_width"] = ref_width
            # Every epsilon comparison is made in delta, where the slack is the reference's round-off:
            # an upper bound e needs delta_opt(e) <= target_delta (else the exact delta at e exceeds it too), a
            # lower end e needs delta_pess(e) >= target_delta (else the exact epsilon lies below e).
            d_hi, d_lo = d * (1 + DELTA_RTOL) + DELTA_ATOL, d * (1 - DELTA_RTOL) - DELTA_ATOL
            dopt, dpess = ref["delta_opt_at"], ref["delta_pess_at"]
            for key, what in (
                ("epsilon", "epsilon_bound"),
                ("upper", "the bracket's upper end"),
                ("rdp", "epsilon_rdp"),
            ):
                if key in dopt and d < dopt[key] <= d_hi:
                    warns.append(
                        f"within round-off: {what} {read_at[key]!r}: optimistic delta {dopt[key]!r} > {d!r}"
                    )
                if key in dopt and dopt[key] > d_hi:
                    claim = (
                        f"{what} {read_at[key]!r} not an upper bound: dp_accounting's optimistic delta there "
                        f"{dopt[key]!r} > target_delta {d!r} (optimistic eps {eo!r}, pessimistic {ep!r}, "
                        f"interval {ref['interval']:.3g})"
                    )
                    _judge(point, read_at[key], claim, "upper", fails, warns, rec, args.referee_timeout)
                if key in dopt and (dopt[key] > d_hi or dpess[key] <= d_hi):
                    decided.add(key)
            if not (0 < bracket[0] < math.inf) or dpess["lower"] < d_lo or dopt["lower"] >= d_lo:
                decided.add("lower")
            if 0 < bracket[0] < math.inf and d_lo <= dpess["lower"] < d:
                warns.append(
                    f"within round-off: the bracket's lower end {bracket[0]!r}: pessimistic delta "
                    f"{dpess['lower']!r} < {d!r}"
                )
            if 0 < bracket[0] < math.inf and dpess["lower"] < d_lo:
                claim = (
                    f"epsilon bracket's lower end {bracket[0]!r} not a lower bound: dp_accounting's pessimistic "
                    f"delta there {dpess['lower']!r} < target_delta {d!r} (pessimistic eps {ep!r}, optimistic "
                    f"{eo!r}, interval {ref['interval']:.3g})"
                )
                _judge(point, bracket[0], claim, "lower", fails, warns, rec, args.referee_timeout)
            # The reference's own consistency: its epsilon is the smallest e with delta_pess(e) <= target_delta, so
            # no point below it may read a delta below the target. dp_accounting's get_epsilon_for_delta breaks
            # this where the losses pass ~745 (e^{-loss} underflows to 0 and it returns the loss at which the
            # Q-tail alone reaches delta); a note, as the verdicts above are read in delta.
            if any(
                0 < e < ep * (1 - DELTA_RTOL) and dpess[key] < d_lo
                for key, e in read_at.items()
                if key in dpess and math.isfinite(e)
            ):
                rec.setdefault("notes", []).append(
                    "reference's pessimistic epsilon above a point where its own delta is below target_delta"
                )
            if eps > ep * (1 + LOOSE_RTOL) + 1e-9:
                (
                    warns.append(
                        f"loose: epsilon {eps!r} > pessimistic reference {ep!r} x (1 + {LOOSE_RTOL:g})"
                    )
                    if ref_width <= LOOSE_RTOL
                    else rec.setdefault("notes", []).append("ref_coarse (epsilon)")
                )
            go, gp = np.array(ref["gamma_opt"]), np.array(ref["gamma_pess"])
            gw = worst.gamma
            rec["gamma_ratio_pess"] = (gw / np.maximum(gp, 1e-300)).tolist()
            if np.any(gw < go - GAMMA_ATOL):
                fails.append(
                    f"worst-case gamma {gw.tolist()} below dp_accounting's optimistic power "
                    f"{go.tolist()} (pessimistic {gp.tolist()}, interval {ref['interval']:.3g})"
                )
            if np.any(worst.lower > gp + GAMMA_ATOL):
                fails.append(
                    f"worst-case lower end {worst.lower.tolist()} above dp_accounting's pessimistic power "
                    f"{gp.tolist()} (both are proven; they contradict)"
                )
            loose = gw > gp * (1 + LOOSE_RTOL) + GAMMA_ATOL
            tight_ref = (gp - go) <= LOOSE_RTOL * gp
            if np.any(loose & tight_ref):
                warns.append(
                    f"loose: worst-case gamma {gw.tolist()} > pessimistic reference {gp.tolist()} "
                    f"x (1 + {LOOSE_RTOL:g})"
                )
        # Where dp_accounting gave no verdict on an epsilon claim (no reference: timed out, failed, inconsistent;
        # or its optimistic/pessimistic bracket too coarse: the claim lies between its two ends), the referee
        # judges it: a 10% underestimate of epsilon at small q hides inside a coarse interval's gap.
        claims = {"epsilon": "upper", "lower": "lower"}
        if ref["status"] == "ok":  # the bracket's upper end and RDP: checked by dp_accounting where it ran
            claims.update({key: "upper" for key in ("upper", "rdp") if key in read_at})
        for key, end in claims.items():
            e = read_at[key]
            if key in decided or not (0 < e < math.inf):
                continue
            why = (
                f"dp_accounting {ref['status']}"
                if ref["status"] != "ok"
                else f"dp_accounting undecided at interval {ref['interval']:.3g}"
            )
            _referee_check(point, key, e, end, why, fails, warns, rec, args.referee_timeout)
    rec["failures"] = fails
    rec["warnings"] = warns
    return rec


_CLAIM_NAMES = {
    "epsilon": "epsilon_bound",
    "upper": "the bracket's upper end",
    "rdp": "epsilon_rdp",
    "lower": "the bracket's lower end",
}


def _ask_referee(point: Point, eps: float, timeout: float | None, rec: dict, key: str) -> tuple[dict | None, str]:
    """:func:`run_referee` at ``eps``: ``(range, "no verdict")``, the range None where it gave none; ``(None,
    why)`` where it failed or ran past ``timeout`` (s; ``key`` is then listed in ``referee_timed_out``)."""
    try:
        return run_referee(point, eps, timeout), "no verdict"
    except RefereeTimeout as e:
        rec.setdefault("referee_timed_out", []).append(key)
        return None, str(e)
    except Exception as e:
        return None, f"referee failed: {type(e).__name__}: {e}"


def _referee_check(
    point: Point,
    key: str,
    eps: float,
    end: str,
    why: str,
    fails: list,
    warns: list,
    rec: dict,
    timeout: float | None = None,
):
    """The referee's verdict on an epsilon claim dp_accounting did not decide (``why``): ``end`` "upper" fails
    when the exact delta at eps is proven above target_delta (its range's low end above it), "lower" when it is
    proven below; a range that straddles target_delta (or no range) leaves the claim unjudged, said as a warning
    ("epsilon unjudged") and counted, never passed silently; so does a referee past its wall-clock limit
    ``timeout`` (s, :func:`run_referee`), the claim's key also listed in ``referee_timed_out``."""
    d = point.target_delta
    what = _CLAIM_NAMES[key]
    r, note = _ask_referee(point, eps, timeout, rec, key)  # no verdict: unjudged, said below
    rec.setdefault("referee_checks", []).append(
        {"claim": key, "epsilon": eps, "end": end, "why": why, "range": r}
    )
    if r is not None and end == "upper" and r["low"] > d:
        fails.append(
            f"{what} {eps!r} not an upper bound: the exact delta there is in [{r['low']!r}, {r['high']!r}] "
            f"({r['direction']}) > target_delta {d!r} (the referee; {why})"
        )
    elif r is not None and end == "lower" and r["high"] < d:
        fails.append(
            f"{what} {eps!r} not a lower bound: the exact delta there is in [{r['low']!r}, {r['high']!r}] "
            f"({r['direction']}) < target_delta {d!r} (the referee; {why})"
        )
    elif (
        r is None
        or (r["low"] <= d <= r["high"])
        or (end == "upper" and r["high"] > d)
        or (end == "lower" and r["low"] < d)
    ):
        rec.setdefault("epsilon_unjudged", []).append(key)
        span = note if r is None else f"exact delta in [{r['low']!r}, {r['high']!r}] around {d!r}"
        warns.append(f"epsilon unjudged: {what} {eps!r} ({why}; referee: {span})")


def _judge(
    point: Point,
    eps: float,
    claim: str,
    end: str,
    fails: list,
    warns: list,
    rec: dict,
    timeout: float | None = None,
) -> None:
    """A failure of an epsilon end claimed from dp_accounting, put to the referee (:func:`referee`, the exact delta
    at ``eps``): it stands unless the referee proves the end right (``end`` "upper": the exact delta at eps is at
    most target_delta; "lower": at least target_delta, so the exact epsilon is above eps). A refuted claim is the
    reference's own error (its FFT round-off at tiny delta) and is kept as a warning with both deltas. A referee
    past its wall-clock limit ``timeout`` (s) refutes nothing: dp_accounting's failure stands, said so."""
    d = point.target_delta
    r, note = _ask_referee(point, eps, timeout, rec, end)  # no verdict: the failure stands
    if r is None and note != "no verdict":
        claim += f"; {note}, no verdict"
    if r is not None:
        rec.setdefault("referee", []).append({"epsilon": eps, "end": end, **r})
    if r is not None and (r["high"] <= d if end == "upper" else r["low"] >= d):
        rec.setdefault("reference_refuted", []).append(end)
        warns.append(
            f"reference refuted: {claim}; but the exact delta there is {r['delta']!r} ({r['direction']}, "
            f"in [{r['low']!r}, {r['high']!r}]) {'<=' if end == 'upper' else '>='} {d!r}, the characteristic-"
            "function referee's verdict"
        )
        return
    if r is not None:
        claim += f"; the referee agrees: exact delta {r['delta']!r} in [{r['low']!r}, {r['high']!r}]"
    else:
        claim += "; no verdict from the referee"
    fails.append(claim)


def _fmt_point(rec: dict) -> str:
    p = rec["point"]
    return (
        f"#{p['index']}: sigma={p['noise_multiplier']:.6g} q={p['sampling_probability']:.6g} T={p['steps']} "
        f"delta={p['target_delta']:.3g} kappa={p['kappa']:.3g} k={p['records_per_patient']} {p['threat_model']}"
    )


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {key: _jsonable(v) for key, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--points", type=int, default=50, help="how many random points (stops earlier at --budget-s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="*", help="rerun only these point indices of --seed")
    parser.add_argument(
        "--budget-s", type=float, default=math.inf, help="stop drawing new points after this many s"
    )
    parser.add_argument("--json", help="write every point's record and the summary here")
    parser.add_argument("--max-steps", type=int, default=1_000_000, help="cap T (the test uses a small one)")
    parser.add_argument(
        "--ref-timeout",
        type=float,
        default=20.0,
        help="wall-clock limit of one dp_accounting reference (s); 0 skips the reference",
    )
    parser.add_argument(
        "--referee-timeout",
        type=float,
        default=20.0,
        help="wall-clock limit of one referee call (s; past it the claim is 'epsilon unjudged'); 0: no limit",
    )
    parser.add_argument(
        "--mc-samples", type=int, default=20_000, help="Monte Carlo samples per half (relaxed)"
    )
    parser.add_argument(
        "--mc-work", type=float, default=2e7, help="skip the Monte Carlo where samples x T exceeds"
    )
    args = parser.parse_args(argv)
    indices = args.only if args.only else range(args.points)
    start = time.perf_counter()
    records, failed, errors = [], [], []
    print(
        f"fuzz_bounds: seed {args.seed}, up to {len(indices)} points, budget {args.budget_s:g} s", flush=True
    )
    for i in indices:
        if time.perf_counter() - start > args.budget_s:
            print(f"budget reached after {len(records)} points", flush=True)
            break
        point = draw_point(args.seed, i, args.max_steps)
        try:
            rec = check_point(point, args)
        except Exception as e:  # an exception from dpaudit on valid input is itself a finding
            rec = {
                "point": asdict(point),
                "failures": [f"exception: {type(e).__name__}: {e}"],
                "warnings": [],
                "traceback": traceback.format_exc(),
            }
        records.append(rec)
        ref = rec.get("reference", {})
        status = "FAIL" if rec["failures"] else ("warn" if rec["warnings"] else "ok")
        extra = ""
        if ref.get("status") == "ok":
            extra = (
                f" eps {rec['epsilon']:.6g} (ref opt {ref['eps_opt']:.6g} pess {ref['eps_pess']:.6g}, "
                f"h {ref['interval']:.1e}) gamma/pess {max(rec['gamma_ratio_pess']):.6f}"
            )
        elif "epsilon" in rec:
            extra = f" eps {rec['epsilon']:.6g} (ref {ref.get('status', 'off')}: {ref.get('reason', '')})"
        print(
            f"{status:4} {_fmt_point(rec)}{extra} [{rec.get('ours_s', 0):.1f} s + ref {rec.get('ref_s', 0):.1f} s]",
            flush=True,
        )
        for f in rec["failures"]:
            print(f"     FAIL {f}", flush=True)
            failed.append((rec, f))
        for w in rec["warnings"]:
            print(f"     warn {w}", flush=True)
        if "traceback" in rec:
            errors.append(rec)
    ran_ref = [r for r in records if r.get("reference", {}).get("status") == "ok"]
    summary = {
        "seed": args.seed,
        "points": len(records),
        "failures": len(failed),
        "points_failed": sorted({r["point"]["index"] for r, _ in failed}),
        "warnings": sum(len(r["warnings"]) for r in records),
        "reference_ran": len(ran_ref),
        "reference_skipped": len(records) - len(ran_ref),
        "reference_refuted": [r["point"]["index"] for r in records if r.get("reference_refuted")],
        "reference_inconsistent": [
            r["point"]["index"] for r in records if r.get("reference", {}).get("status") == "inconsistent"
        ],
        "referee_checked": sum(1 for r in records if r.get("referee_checks")),
        "epsilon_unjudged": [r["point"]["index"] for r in records if r.get("epsilon_unjudged")],
        "referee_timed_out": [r["point"]["index"] for r in records if r.get("referee_timed_out")],
        "mc_ran": sum(1 for r in records if r.get("mc_relaxed_floor")),
        "max_eps_ratio_pess": max((r["eps_ratio_pess"] for r in ran_ref), default=None),
        "min_eps_ratio_pess": min((r["eps_ratio_pess"] for r in ran_ref), default=None),
        "max_gamma_ratio_pess": max((max(r["gamma_ratio_pess"]) for r in ran_ref), default=None),
        "min_gamma_ratio_pess": min((min(r["gamma_ratio_pess"]) for r in ran_ref), default=None),
        "wall_s": time.perf_counter() - start,
        "command": " ".join(["python", "bench/fuzz_bounds.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    print("\nsummary: " + json.dumps(_jsonable(summary)))
    for rec, f in failed:
        p = rec["point"]
        print(
            f"FAIL {_fmt_point(rec)}: {f}\n     rerun: python bench/fuzz_bounds.py --seed {args.seed} --only "
            f"{p['index']}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_jsonable({"summary": summary, "records": records}), fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
