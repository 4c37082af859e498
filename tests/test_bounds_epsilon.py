"""epsilon by PLD and RDP, and the noise calibration for a target epsilon.

References: the spec's section 4 (numbers computed with dp_accounting 0.6.0 and Opacus 1.6), Opacus'
``RDPAccountant`` itself, dp_accounting 0.6.0's PLD, and the closed-form hockey-stick curve of the Gaussian
mechanism (Balle and Wang, ICML 2018, Theorem 8).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import optimize, special

from dpaudit.bounds import epsilon_pld, epsilon_rdp, noise_for_epsilon
from dpaudit.bounds.rdp import DEFAULT_ORDERS
from dpaudit.errors import ConfigError


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" at extreme settings
        return acc.get_epsilon(delta)


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of the mu-GDP Gaussian mechanism: delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""

    def gap(eps: float) -> float:
        return special.ndtr(-eps / mu + mu / 2) - math.exp(eps) * special.ndtr(-eps / mu - mu / 2) - delta

    return optimize.brentq(gap, 0.0, 200.0, xtol=1e-12)


# -- the spec's numbers (section 4) -------------------------------------------------------------------------------

@pytest.mark.parametrize(("delta", "pld_value", "rdp_value"), [(8e-7, 68.518, 75.264), (1e-5, 61.365, 68.876)])
def test_spec_epsilons_sigma_034(delta: float, pld_value: float, rdp_value: float) -> None:
    # spec section 4: sigma 0.34, q 0.002, T 20000 (dp_accounting 0.6.0 PLD; Opacus RDP default orders)
    assert epsilon_pld(0.34, 0.002, 20000, delta) == pytest.approx(pld_value, rel=1e-4)
    assert epsilon_rdp(0.34, 0.002, 20000, delta) == pytest.approx(rdp_value, rel=1e-5)


# -- RDP equals what Opacus reports -----------------------------------------------------------------------------

@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), [
    (0.34, 0.002, 20000, 8e-7), (1.0, 0.01, 1000, 1e-5), (9.97397, 1 / 106, 53000, 8e-7),
    (0.95816, 1 / 106, 53000, 8e-7), (0.6, 1.0, 10, 1e-5), (5.0, 0.5, 3, 1e-5), (0.5, 1e-5, 10**6, 1e-6),
])
def test_epsilon_rdp_matches_opacus(sigma: float, q: float, steps: int, delta: float) -> None:
    assert epsilon_rdp(sigma, q, steps, delta) == pytest.approx(_opacus_epsilon(sigma, q, steps, delta), rel=1e-7)


def test_epsilon_rdp_is_never_negative() -> None:
    """At a large delta and little privacy loss Opacus' conversion falls below 0 (-0.004 here: the soundness
    fuzzer's seed 34, point 38); an epsilon < 0 guarantee implies epsilon = 0, the value reported."""
    assert _opacus_epsilon(3.34582, 6.33939e-06, 2901, 0.00757) < 0
    assert epsilon_rdp(3.34582, 6.33939e-06, 2901, 0.00757) == 0.0


# -- PLD: sandwich against exact values and the reference library ------------------------------------------------

@pytest.mark.parametrize(("sigma", "steps", "delta"), [(0.8, 10, 1e-5), (2.0, 100, 1e-6), (5.0, 1, 1e-5)])
def test_epsilon_pld_gaussian_sandwich(sigma: float, steps: int, delta: float) -> None:
    # q = 1: the Gaussian mechanism with mu = sqrt(T)/sigma has a closed-form epsilon; ours is an upper bound.
    exact = _gaussian_epsilon(math.sqrt(steps) / sigma, delta)
    ours = epsilon_pld(sigma, 1.0, steps, delta)
    assert exact - 1e-9 <= ours <= exact * (1 + 1e-3)


def test_epsilon_pld_matches_dp_accounting() -> None:
    # dp_accounting 0.6.0, from_gaussian_mechanism(1.0, sampling_prob=0.01, value_discretization_interval=1e-4,
    # use_connect_dots=True, pessimistic_estimate=True).self_compose(1000).get_epsilon_for_delta(1e-5)
    reference = 1.8282436461219649
    assert epsilon_pld(1.0, 0.01, 1000, 1e-5) == pytest.approx(reference, rel=5e-4)


def test_pld_below_rdp_and_monotone() -> None:
    base = epsilon_pld(1.0, 0.01, 1000, 1e-5)
    assert base < epsilon_rdp(1.0, 0.01, 1000, 1e-5)
    assert epsilon_pld(1.2, 0.01, 1000, 1e-5) < base  # more noise
    assert epsilon_pld(1.0, 0.01, 2000, 1e-5) > base  # more steps
    assert epsilon_pld(1.0, 0.02, 1000, 1e-5) > base  # higher sampling rate
    assert epsilon_pld(1.0, 0.01, 1000, 1e-6) > base  # smaller delta


# -- noise calibration --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize(("target", "q", "steps"), [(8.0, 1 / 106, 53000), (1.0, 1e-3, 10000), (50.0, 0.002, 10000)])
def test_noise_for_epsilon_is_safe_and_tight(accountant: str, target: float, q: float, steps: int) -> None:
    delta = 1e-5
    sigma = noise_for_epsilon(target, q, steps, delta, accountant=accountant)
    eps = epsilon_pld if accountant == "pld" else epsilon_rdp
    assert eps(sigma, q, steps, delta) <= target  # never overshoots
    # Tight: 1% less noise breaks the target (the PLD search uses a grid about 2e-3 pessimistic).
    assert eps(sigma * 0.99, q, steps, delta) > target


def test_noise_for_epsilon_matches_opacus_calibration() -> None:
    # The seed paper's MSD Liver calibration: Opacus (RDP) gives sigma 1.66405 for epsilon 8 at delta 8e-7.
    sigma = noise_for_epsilon(8.0, 1 / 106, 53000, 8e-7, accountant="rdp")
    assert sigma == pytest.approx(1.66405, rel=2e-3)
    assert sigma >= 1.66405 * (1 - 1e-5) or epsilon_rdp(sigma, 1 / 106, 53000, 8e-7) <= 8.0


# -- bad inputs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "field"), [
    ((-1.0, 0.01, 100, 1e-5), "noise_multiplier"), ((1.0, 0.0, 100, 1e-5), "sampling_probability"),
    ((1.0, 1.5, 100, 1e-5), "sampling_probability"), ((1.0, 0.01, 0, 1e-5), "steps"),
    ((1.0, 0.01, 100, 0.0), "target_delta"), ((1.0, 0.01, 100, 1.0), "target_delta"),
])
def test_bad_inputs_name_the_field(args: tuple, field: str) -> None:
    for func in (epsilon_pld, epsilon_rdp):
        with pytest.raises(ConfigError, match=field):
            func(*args)


def test_noise_for_epsilon_rejects_unknown_accountant() -> None:
    with pytest.raises(ConfigError, match="accountant"):
        noise_for_epsilon(1.0, 0.01, 100, 1e-5, accountant="prv")


def test_epsilon_of_a_discrete_pld_below_its_lowest_atom() -> None:
    # Two atoms at losses 1 and 2 (Q-mass 1/2 each): below the lowest atom delta(eps) = 1 - e^eps (e^-1 + e^-2) / 2
    # (closed form), so at the target delta(0.5) the smallest eps is 0.5, not the lowest atom (what the reader
    # returned whenever the crossing lay below it: an upper end stays sound that way, a lower end does not).
    from dpaudit.bounds.pld import DiscretePld

    pld = DiscretePld(h=1.0, lo=1, masses=np.array([0.5, 0.5]), infinity_mass=0.0)
    target = 1 - math.exp(0.5) * (math.exp(-1) + math.exp(-2)) / 2
    assert pld.epsilon(target) == pytest.approx(0.5, rel=1e-12)
    assert pld.epsilon(1.0) == 0.0  # delta <= 1 everywhere
    empty = DiscretePld(h=1.0, lo=5, masses=np.zeros(3), infinity_mass=0.0, optimistic=True)
    assert empty.epsilon_lower(1e-5) == 0.0  # no finite mass: delta is 0, epsilon 0 (was the lowest grid point, 5)


def _rdp_per_order(sigma: float, q: float) -> np.ndarray:
    """The per-step RDP order by order, as the accountant computed it before its orders were vectorised (regression
    reference: the same formulas, Mironov, Talwar, Zhang, arXiv 1908.10530v1, Section 3.3, one order at a time)."""
    out = []
    for alpha in DEFAULT_ORDERS:
        if q == 1.0:
            out.append(alpha / (2 * sigma ** 2))
        elif float(alpha).is_integer():
            i = np.arange(int(alpha) + 1, dtype=float)
            log_terms = (special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(alpha - i + 1)
                         + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma ** 2))
            out.append(float(special.logsumexp(log_terms)) / (alpha - 1))
        else:
            step = sigma / 10
            z = np.arange(-45 * sigma, alpha + 45 * sigma + step, step)
            if alpha > 90 * sigma:
                z = z[(np.abs(z) <= 45 * sigma) | (np.abs(z - alpha) <= 45 * sigma)]
            log_mix = np.logaddexp(math.log1p(-q), math.log(q) + (2 * z - 1) / (2 * sigma ** 2))
            log_f = -z * z / (2 * sigma ** 2) + alpha * log_mix
            log_a = float(special.logsumexp(log_f) + math.log(step) - 0.5 * math.log(2 * math.pi * sigma ** 2))
            out.append(log_a / (alpha - 1))
    return np.array(out)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), [
    (0.44783, 3328 / 1077000, 16150, 8e-7), (0.34, 0.002, 20000, 8e-7), (1.0, 0.01, 1000, 1e-5),
    (9.97397, 1 / 106, 53000, 8e-7), (0.6, 1.0, 10, 1e-5), (5.0, 0.5, 3, 1e-5), (0.02, 0.01, 100, 1e-5),
    (0.001, 0.3, 10, 1e-5),
])
def test_rdp_over_all_orders_at_once_equals_order_by_order(sigma: float, q: float, steps: int, delta: float) -> None:
    # All orders in one array: the same terms, summed in rows padded with zeros (e^-inf), so only the order of the
    # additions differs. Where RDP_alpha is large against its rounding (every point here) epsilon agrees to 1e-12;
    # per order the RDP agrees to 1e-12 wherever log A_alpha is not itself a rounding-level number.
    from dpaudit.bounds.rdp import rdp_per_step

    ours, reference = rdp_per_step(sigma, q), _rdp_per_order(sigma, q)
    big = np.abs(reference) > 1e-3
    np.testing.assert_allclose(ours[big], reference[big], rtol=1e-12)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-15)
    orders = np.asarray(DEFAULT_ORDERS)
    eps = (steps * reference - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders))
    assert epsilon_rdp(sigma, q, steps, delta) == pytest.approx(float(np.nanmin(eps)), rel=1e-12)


@pytest.mark.parametrize(("sigma", "steps"), [(5000.0, 1), (5000.0, 4), (20000.0, 9), (50.0, 1)])
def test_epsilon_is_within_its_stated_accuracy_of_the_closed_form(sigma: float, steps: int) -> None:
    """Below epsilon 1e-3 the refinement stops at EPSILON_ATOL (1e-7 nats) absolute instead of 1e-4 relative: the
    value stays a sound upper bound and within max(1e-4 relative, 1e-7) of the exact epsilon (q = 1: the Gaussian
    mechanism composed T times is mu-GDP with mu = sqrt(T) / sigma, Balle and Wang 2018, Theorem 8)."""
    from dpaudit.bounds.pld import EPSILON_ATOL, StepPair, clear_caches, epsilon_pld_refined

    delta = 1e-5
    exact = _gaussian_epsilon(math.sqrt(steps) / sigma, delta)
    clear_caches()
    got = epsilon_pld_refined(StepPair(sigma, 1.0), steps, delta)
    upper, lower = float(got.value[0]), float(got.lower[0])
    assert lower - 1e-12 <= exact <= upper + 1e-12  # the bracket holds the exact value
    assert upper - lower <= max(1e-4 * upper, EPSILON_ATOL) * (1 + 1e-9)
    assert upper == epsilon_pld(sigma, 1.0, steps, delta)


def _hockey_stick(p_weights, p_means, sigma: float, eps: float) -> float:
    """H_{e^eps}(P || Q) = integral of (p - e^eps q)_+ for P = sum_j w_j N(m_j, sigma^2), Q = N(0, sigma^2), by
    quadrature (an independent reference: no PLD)."""
    from scipy import integrate, stats

    def f(x: float) -> float:
        p = sum(w * stats.norm.pdf(x, m, sigma) for w, m in zip(p_weights, p_means, strict=True))
        return max(p - math.exp(eps) * stats.norm.pdf(x, 0.0, sigma), 0.0)

    top = max(p_means) + 40 * sigma
    return integrate.quad(f, -40 * sigma, top, points=list(p_means), limit=400, epsabs=1e-13)[0]


@pytest.mark.parametrize(("sigma", "q", "k"), [(0.7, 0.05, 3), (1.5, 0.3, 5), (0.4, 0.01, 10)])
def test_the_dominating_schedule_dominates_the_k_record_pair(sigma: float, q: float, k: int) -> None:
    """dominating_schedule's claim, checked without its proof: one step's hockey-stick divergence of the k-record
    pair (P = sum_j Binom(j; k, q) N(j, sigma^2) against N(0, sigma^2)) is at most that of the dominating pair
    ((1 - q') N(0, sigma^2) + q' N(k, sigma^2), q' = 1 - (1 - q)^k) at every eps, by quadrature; and composed, the
    dominating mechanism's tight epsilon is at least the k-record one's."""
    from scipy import stats

    from dpaudit.bounds.pld import dominating_schedule, epsilon_bound
    from dpaudit.bounds.schedule import Schedule

    w = stats.binom.pmf(np.arange(k + 1), k, q)
    dom = dominating_schedule(Schedule.single(sigma, q, 100), k).phases[0]
    assert dom.noise_multiplier == pytest.approx(sigma / k) and dom.sampling_probability == pytest.approx(1 - w[0])
    for eps in (0.0, 0.5, 2.0, 5.0):
        ours = _hockey_stick(w, np.arange(k + 1.0), sigma, eps)
        dominating = _hockey_stick([w[0], 1 - w[0]], [0.0, float(k)], sigma, eps)
        assert ours <= dominating + 1e-12, (eps, ours, dominating)
    for steps in (10, 300):
        k_record = epsilon_bound(sigma, q, steps, 1e-5, records_per_patient=k)
        single = epsilon_bound(sigma / k, dom.sampling_probability, steps, 1e-5)
        assert k_record.accountant == "pld" and k_record.value <= single.value * (1 + 1e-4)


def test_k_record_epsilon_at_tiny_noise_is_the_dominating_rdp() -> None:
    """Where the loss cap makes the k-record PLD infinite, the RDP of the dominating mechanism is reported: finite,
    labelled rdp, and above the per-record epsilon."""
    from dpaudit.bounds.pld import dominating_schedule, epsilon_bound
    from dpaudit.bounds.schedule import Schedule

    got = epsilon_bound(0.103, 0.5, 17, 1e-5, records_per_patient=10)
    assert got.accountant == "rdp" and math.isfinite(got.value)  # was inf
    assert got.value == epsilon_rdp(target_delta=1e-5, schedule=dominating_schedule(Schedule.single(0.103, 0.5, 17), 10))
    assert got.value >= epsilon_bound(0.103, 0.5, 17, 1e-5).value


def test_an_unreachable_epsilon_names_the_smallest_reachable_one() -> None:
    """A target epsilon no searched noise multiplier meets is refused naming the epsilon (the command line names the
    flag that gave it) and the smallest epsilon reachable at these settings, rounded up; that one is then met."""
    import re

    from dpaudit.bounds import epsilon_pld, noise_for_epsilon
    from dpaudit.bounds.calibrate import SIGMA_RANGE
    from dpaudit.errors import NumericalError

    q, steps, delta = 0.045747, 22, 8e-7
    with pytest.raises(NumericalError) as info:
        noise_for_epsilon(1e-9, q, steps, delta)
    assert info.value.field == "epsilon" and info.value.value == 1e-9
    floor = float(re.search(r"at least (\S+) at sampling", str(info.value)).group(1))
    assert f"ask for an epsilon of {info.value.allowed.split()[2]} or more" in str(info.value)
    assert floor >= epsilon_pld(SIGMA_RANGE[1], q, steps, delta)  # rounded up: the floor itself is reachable
    sigma = noise_for_epsilon(floor, q, steps, delta)
    assert epsilon_pld(sigma, q, steps, delta) <= floor
