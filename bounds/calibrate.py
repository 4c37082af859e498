"""Inverse problems: the smallest noise multiplier (or the largest number of steps) that meets a target.

Every answer is the *safe end* of a bracket: the returned sigma satisfies the target by the same sound upper
bound that defines it (epsilon by PLD or RDP, the ReRo bound by the tight PLD route); the bracket's other end
(within ``rtol`` relative) does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from dpaudit.bounds._mechanism import (
    StepPair,
    check_delta,
    check_kappa,
    check_q,
    check_records_per_patient,
    check_steps,
    check_threat_model,
)
from dpaudit.bounds.pld import (
    WindowTooLargeError,
    epsilon_pld,
    epsilon_pld_refined,
    initial_h,
    upper_epsilon,
)
from dpaudit.bounds.rdp import epsilon_rdp
from dpaudit.bounds.rero import tight_gamma
from dpaudit.bounds.schedule import Phase, Schedule
from dpaudit.errors import NumericalError, check_positive, check_probability, invalid
from dpaudit.heap import computing_block
from dpaudit.numfmt import at_most, upper

ACCOUNTANTS = ("pld", "rdp")
#: Noise multipliers searched. Below 1e-3 the noise is invisible next to a clipped gradient (the seed paper's
#: epsilon = 1e9 needs sigma ~ 2e-3 at q = 1e-3, T = 1e4); a target met even there returns 1e-3 (safe, since its
#: epsilon is <= the target). Above 1e4 any target is met.
SIGMA_RANGE = (1e-3, 1e4)


class TargetUnreachable(NumericalError):
    """:func:`safe_smallest` found no x up to ``upper`` that meets the target; callers that know the target say which
    value to change (:func:`noise_for_epsilon`: the epsilon, named by the flag that gave it)."""

    def __init__(self, message: str, upper: float) -> None:
        super().__init__(message)
        self.upper = upper


def safe_smallest(meets: Callable[[float], bool], guess: float, *, rtol: float = 1e-3,
                  lower: float = SIGMA_RANGE[0], upper: float = SIGMA_RANGE[1], what: str = "noise_multiplier",
                  score: Callable[[float], float] | None = None) -> float:
    """The smallest x in [lower, upper] with ``meets(x)`` (assumed monotone: False below, True above), to ``rtol``.

    Brackets by geometric steps from ``guess``, then narrows in log x: by regula falsi (Illinois) on ``score``
    (negative where the target is met) when given, else by bisection. Returns the end of the final bracket that
    meets the target.
    """
    x = min(max(guess, lower), upper)
    cache: dict[float, float] = {}

    def value(v: float) -> float:
        if v not in cache:
            cache[v] = score(v) if score is not None else (-1.0 if meets(v) else 1.0)
        return cache[v]

    factor = 1.3
    if value(x) <= 0:
        hi = x
        lo = x / factor
        while value(lo) <= 0:
            hi = lo
            if lo <= lower:
                return lower
            lo = max(lo / factor, lower)
            factor *= 1.5
    else:
        lo = x
        hi = x * factor
        while value(hi) > 0:
            lo = hi
            if hi >= upper:
                raise TargetUnreachable(f"no {what} up to {upper:g} meets the target. Fix: relax the target", upper)
            hi = min(hi * factor, upper)
            factor *= 1.5
    # Illinois regula falsi in log x on a bracket [lo (fails), hi (meets)].
    a, b = math.log(lo), math.log(hi)
    fa, fb = value(lo), value(hi)
    side = 0
    while b - a > rtol:
        if score is not None and math.isfinite(fa) and math.isfinite(fb) and fa != fb:
            c = b - fb * (b - a) / (fb - fa)
            # keep the step inside the middle of the bracket so that it always shrinks
            c = min(max(c, a + 0.05 * (b - a)), b - 0.05 * (b - a))
        else:
            c = 0.5 * (a + b)
        fc = value(math.exp(c))
        if fc <= 0:
            b, fb = c, fc
            if side == -1 and score is not None:
                fa /= 2
            side = -1
        else:
            a, fa = c, fc
            if side == 1 and score is not None:
                fb /= 2
            side = 1
    return math.exp(b)


def _gdp_guess(target_epsilon: float, q: float, steps: int, delta: float) -> float:
    """A starting sigma from the Gaussian-DP central limit (Dong, Roth, Su 2022, arXiv 1905.02383v3, Cor. 5.4):
    mu = q sqrt(T (e^{1/sigma^2} - 1)), delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""

    def gap(log_mu: float) -> float:
        mu = math.exp(log_mu)
        d = special.ndtr(-target_epsilon / mu + mu / 2) - math.exp(min(target_epsilon, 700)) * special.ndtr(
            -target_epsilon / mu - mu / 2)
        return math.log(max(d, 1e-300)) - math.log(delta)

    # Bisection in log mu on [1e-3, 1e3] (gap is increasing in mu); only a starting point, 40 halvings is plenty.
    # (scipy.optimize.brentq would do, but importing scipy.optimize costs ~0.5 s on every start.)
    a, b = math.log(1e-3), math.log(1e3)
    if not gap(a) < 0 < gap(b):
        return 1.0
    for _ in range(40):
        mid = 0.5 * (a + b)
        if gap(mid) < 0:
            a = mid
        else:
            b = mid
    mu = math.exp(0.5 * (a + b))
    ratio = mu * mu / (q * q * steps)
    return 1.0 / math.sqrt(math.log1p(ratio)) if ratio > 0 else 1.0


@computing_block()  # one block for all its refinements (see dpaudit.heap)
def noise_for_epsilon(target_epsilon: float, sampling_probability: float, steps: int, target_delta: float,
                      accountant: str = "pld", *, rtol: float = 1e-3) -> float:
    """The smallest noise multiplier whose epsilon at ``target_delta`` is at most ``target_epsilon``.

    Parameters
    ----------
    target_epsilon:
        epsilon > 0 to meet.
    sampling_probability, steps, target_delta:
        q in (0, 1], T >= 1, delta in (0, 1).
    accountant:
        ``"pld"`` (tight, default: :func:`dpaudit.bounds.epsilon_pld`'s discretisation) or ``"rdp"`` (what Opacus'
        ``make_private_with_epsilon`` would use).
    rtol:
        Relative width of the final bracket in sigma.

    Returns
    -------
    float
        sigma at the safe end of the bracket: its epsilon (a sound upper bound by the chosen accountant) never
        exceeds ``target_epsilon``; sigma / (1 + rtol) does exceed it (by the same computation).

    Notes
    -----
    With ``"pld"`` the answer is min(sigma from the PLD, sigma from RDP), the same pairing as
    :func:`dpaudit.bounds.epsilon_pld` (RDP only wins at tiny sigma, where the PLD's loss cap makes it
    pessimistic). Sigma is searched in ``SIGMA_RANGE``; a target met even at its lower end returns that end.
    With ``"pld"`` each trial sigma is evaluated on one fixed pessimistic grid (a sound upper bound, about
    2e-3 relative above the converged value), which keeps T up to 10^6 fast; the answer is therefore a few
    tenths of a percent above the smallest sigma the converged PLD would allow.
    """
    target_epsilon = check_positive("target_epsilon", target_epsilon, fix="pass a positive epsilon, e.g. 8")
    q = check_q(sampling_probability)
    steps = check_steps(steps)
    delta = check_delta(target_delta)
    if accountant not in ACCOUNTANTS:
        raise invalid("accountant", accountant, "one of pld, rdp", "pass accountant='pld' or 'rdp'")

    def epsilon_of(sigma: float, directions: tuple[str, ...]) -> float:
        if accountant == "rdp":
            return epsilon_rdp(sigma, q, steps, delta)
        try:
            eps = _epsilon_pld_fixed_grid(StepPair(sigma, q), steps, delta, directions)
        except WindowTooLargeError:
            eps = math.inf
        # Where the PLD is infinite (loss cap, tiny sigma) or not computable, the RDP value stands in: a sound upper
        # bound as well, so a sigma accepted with it still meets the target (see the min below).
        return eps if math.isfinite(eps) else epsilon_rdp(sigma, q, steps, delta)

    # The remove direction dominates in all but extreme settings: search with it, then re-check with both
    # directions and continue from there if the add direction is the larger one.
    directions: tuple[str, ...] = ("remove",)

    def score(sigma: float) -> float:
        eps = epsilon_of(sigma, directions)
        return math.log(eps / target_epsilon) if eps > 0 else -math.inf

    sigma = _gdp_guess(target_epsilon, q, steps, delta)
    try:
        sigma = safe_smallest(lambda s: score(s) <= 0, sigma, rtol=rtol, score=score)
        if accountant == "pld" and q < 1.0 and epsilon_of(sigma, ("remove", "add")) > target_epsilon:
            directions = ("remove", "add")
            sigma = safe_smallest(lambda s: score(s) <= 0, sigma, rtol=rtol, score=score)
    except TargetUnreachable as exc:
        # The smallest epsilon any searched sigma reaches here (that of the largest), rounded up: a target at or above
        # it is met. The flag that gave the epsilon is named by the command line (field "epsilon").
        floor = upper(epsilon_of(exc.upper, ("remove", "add") if accountant == "pld" and q < 1.0 else directions), 3)
        raise invalid("epsilon", target_epsilon,
                      f"at least {floor} at sampling probability {q:g}, {steps} steps and delta {delta:g} (the "
                      f"epsilon of noise multiplier {exc.upper:g}, the largest searched)",
                      f"ask for an epsilon of {floor} or more; a smaller one needs a smaller sampling probability or "
                      "fewer steps (more training data, a smaller batch, fewer epochs)", cls=NumericalError) from None
    if accountant == "pld":
        # min(sigma from PLD, sigma from RDP): each meets the target by a sound accountant, so the smaller one does
        # too, and it is the auditor's choice (stronger attack, tighter training). RDP is smaller only where the
        # PLD's loss cap makes it pessimistic (tiny sigma, e.g. epsilon = 1e9); one RDP evaluation decides. This
        # matches epsilon_pld = min(PLD, RDP), so epsilon_pld(returned sigma) <= target_epsilon.
        below = sigma / (1 + rtol)
        if below >= SIGMA_RANGE[0] and epsilon_rdp(below, q, steps, delta) <= target_epsilon:

            def score_rdp(s: float) -> float:
                eps = epsilon_rdp(s, q, steps, delta)
                return math.log(eps / target_epsilon) if eps > 0 else -math.inf

            sigma = min(sigma, safe_smallest(lambda s: score_rdp(s) <= 0, below, rtol=rtol, score=score_rdp))
    return sigma


@dataclass(frozen=True)
class NoiseForEpsilon:
    """The noise multiplier for a target epsilon, and the epsilon to label it with.

    Attributes
    ----------
    target_epsilon:
        The epsilon asked for.
    noise_multiplier:
        :func:`noise_for_epsilon`'s answer (the safe end of its bracket).
    epsilon:
        The accountant's epsilon at ``noise_multiplier`` (a sound upper bound), computed only when the target lies
        beyond the search range (``at_floor``); otherwise ``target_epsilon`` (within ``rtol`` of the achieved value,
        never below it).
    at_floor:
        True when even the smallest noise multiplier searched (``SIGMA_RANGE[0]``) has epsilon below the target:
        the target is then not what this noise gives, and a result computed with it must be labelled with
        ``epsilon`` instead (labelling it with the target would claim less noise than was used, which
        under-states risk).
    """

    target_epsilon: float
    noise_multiplier: float
    epsilon: float
    accountant: str
    at_floor: bool

    @property
    def note(self) -> str | None:
        """Why the label differs from the target (None when it does not)."""
        if not self.at_floor:
            return None
        return (f"epsilon {self.target_epsilon:.4g} is beyond the noise search range: the smallest noise multiplier "
                f"searched, {SIGMA_RANGE[0]:g} (below it the noise is invisible next to a clipped gradient), already "
                f"gives epsilon {upper(self.epsilon)} ({self.accountant.upper()}, sound upper bound); results at this "
                f"budget are labelled with epsilon {upper(self.epsilon)}, the budget they were computed at")


def calibrate_epsilon(target_epsilon: float, sampling_probability: float, steps: int, target_delta: float,
                      accountant: str = "pld", *, rtol: float = 1e-3) -> NoiseForEpsilon:
    """:func:`noise_for_epsilon`, with the epsilon to label the result with when the target is out of range."""
    sigma = noise_for_epsilon(target_epsilon, sampling_probability, steps, target_delta, accountant, rtol=rtol)
    if sigma > SIGMA_RANGE[0]:
        return NoiseForEpsilon(float(target_epsilon), sigma, float(target_epsilon), accountant, False)
    eps = (epsilon_rdp(sigma, sampling_probability, steps, target_delta) if accountant == "rdp"
           else epsilon_pld(sigma, sampling_probability, steps, target_delta))
    at_floor = eps < float(target_epsilon) / (1 + rtol)
    return NoiseForEpsilon(float(target_epsilon), sigma, float(eps) if at_floor else float(target_epsilon),
                           accountant, at_floor)


def _epsilon_pld_fixed_grid(pair: StepPair, steps: int, delta: float,
                            directions: tuple[str, ...] = ("remove", "add")) -> float:
    """Sound PLD epsilon on one grid, twice as coarse as the first one :func:`epsilon_pld` tries (about 2e-3
    relative above the converged value), without refinement."""
    h = 2 * initial_h(pair, steps)
    run = ((pair, steps),)
    return max(upper_epsilon(run, h, d, delta)[0] for d in directions)


@dataclass(frozen=True)
class Calibration:
    """The smallest noise multiplier whose ReRo bound stays at or below ``max_rero``.

    Attributes
    ----------
    noise_multiplier:
        sigma at the safe end of the bracket (its bound ``achieved_rero`` <= ``max_rero``).
    achieved_rero:
        The tight (sound upper bound) gamma at that sigma.
    epsilon:
        Tight PLD epsilon of that sigma at ``target_delta`` (of the whole schedule) **per record** (one image): what
        ``dpaudit train --epsilon`` and ``profile --epsilons`` take, so training at a budget at or below it uses at
        least this noise.
    epsilon_patient:
        The same per patient (the ``records_per_patient`` images of one patient moving together, tight PLD):
        the guarantee of the unit the bound protects; None when ``records_per_patient`` is 1.
    schedule:
        The calibrated run: the fixed earlier phases, then (noise_multiplier, sampling_probability, steps).
    """

    noise_multiplier: float
    max_rero: float
    achieved_rero: float
    epsilon: float
    threat_model: str
    sampling_probability: float
    steps: int
    kappa: float
    target_delta: float
    records_per_patient: int = 1
    label: str = "sound upper bound"
    at_floor: bool = False
    schedule: Schedule | None = None
    epsilon_patient: float | None = None

    @property
    def epsilon_of_unit(self) -> float:
        """epsilon of the privacy unit: per patient when a patient holds several records, else per record."""
        return self.epsilon if self.epsilon_patient is None else self.epsilon_patient

    def __post_init__(self) -> None:
        if self.achieved_rero > self.max_rero:
            raise NumericalError(f"calibration overshoots: {self.achieved_rero} > {self.max_rero}")

    @property
    def note(self) -> str | None:
        """Why ``noise_multiplier`` is not the smallest meeting the target (None when it is)."""
        if not self.at_floor:
            return None
        return (f"the target {self.max_rero:.4g} is met even at the smallest noise multiplier searched, "
                f"{SIGMA_RANGE[0]:g} (ReRo bound {upper(self.achieved_rero)} there): any noise meets it, so "
                f"{SIGMA_RANGE[0]:g} is the search floor, not a calibrated value")


def _gamma_at(sigma: float, q: float, steps: int, kappa: float, threat_model: str, k: int,
              prior: tuple[Phase, ...] = ()) -> float:
    """The tight gamma of the run ``prior`` phases + (sigma, q, steps)."""
    sched = Schedule((*prior, Phase(sigma, q, steps)))
    return float(tight_gamma(sched.run(k, threat_model), None, np.array([kappa])).value[0])


@computing_block()  # one block for all its refinements (see dpaudit.heap)
def calibrate_noise(max_rero: float, sampling_probability: float | None = None, steps: int | None = None,
                    kappa: float | None = None, *, threat_model: str = "worst_case", target_delta: float = 1e-5,
                    records_per_patient: int = 1, rtol: float = 1e-3, schedule: Schedule | None = None
                    ) -> Calibration:
    """The smallest sigma whose tight ReRo bound at ``kappa`` is at most ``max_rero``.

    Bisection-like search in log sigma (regula falsi on log gamma) with a bracket of relative width ``rtol``;
    returns the safe end. Each trial uses the tight route (a sound upper bound), so the returned sigma meets the
    target by the same computation that is reported.

    Parameters
    ----------
    max_rero:
        Target bound in (kappa, 1): the reconstruction success probability you accept.
    sampling_probability, steps, kappa:
        q, T and the prior.
    threat_model:
        ``"worst_case"`` or ``"relaxed"``.
    target_delta:
        delta for the epsilon reported alongside (the bound itself does not depend on it).
    records_per_patient:
        k images per patient.
    schedule:
        A :class:`dpaudit.bounds.Schedule` in place of (sampling_probability, steps): the *last* phase's sigma is
        calibrated (its q and steps kept), the earlier phases are fixed (already trained, e.g. from Opacus'
        accountant history). Its last noise multiplier is ignored.
    """
    if schedule is not None:
        if sampling_probability is not None or steps is not None:
            raise invalid("schedule", "given with sampling_probability/steps", "given alone",
                          "pass either (sampling_probability, steps) or schedule=, not both")
        prior, last = tuple(schedule.phases[:-1]), schedule.last
        q, steps = last.sampling_probability, last.steps
    else:
        prior = ()
        if sampling_probability is None or steps is None:
            raise invalid("sampling_probability" if sampling_probability is None else "steps", None, "given",
                          "pass sampling_probability and steps, or schedule=")
        q = check_q(sampling_probability)
        steps = check_steps(steps)
    if kappa is None:
        raise invalid("kappa", None, "given", "pass the prior's blind-guess success probability, e.g. --kappa 1e-3")
    kappa_v = float(check_kappa(kappa)[0])
    threat_model = check_threat_model(threat_model)
    delta = check_delta(target_delta)
    k = check_records_per_patient(records_per_patient)
    max_rero = check_probability("max_rero", max_rero, fix="pass the largest acceptable success probability, "
                                                           "e.g. --max-rero 0.05")
    if max_rero <= kappa_v:
        raise invalid("max_rero", max_rero, f"above kappa = {kappa_v:g} (no mechanism beats a blind guess)",
                      "pass a larger --max-rero or a smaller --kappa")

    def score(sigma: float) -> float:
        return math.log(_gamma_at(sigma, q, steps, kappa_v, threat_model, k, prior) / max_rero)

    guess = _clt_guess(max_rero, q, steps, kappa_v)
    try:
        sigma = safe_smallest(lambda s: score(s) <= 0, guess, rtol=rtol, score=score)
    except WindowTooLargeError as exc:
        # No sound bound below 1 to search with: named by the steps (the cost driver), as the command's flag.
        total = steps + sum(p.steps for p in prior)
        raise invalid("steps", total, f"few enough for the tight ReRo bound's PLD to fit ({exc})",
                      "pass fewer --steps", cls=NumericalError) from None
    except TargetUnreachable as exc:
        # The smallest bound any searched sigma reaches here (that of the largest), rounded up: a limit at or above
        # it is met.
        floor = upper(_gamma_at(exc.upper, q, steps, kappa_v, threat_model, k, prior), 3)
        unit = "" if k == 1 else f", {k} records per patient"
        raise invalid("max_rero", max_rero,
                      f"at least {floor} here (the {threat_model.replace('_', '-')} ReRo bound at noise multiplier "
                      f"{exc.upper:g}, the largest searched, at kappa {kappa_v:g}, sampling probability {q:g}, "
                      f"{steps} steps{unit})",
                      f"pass --max-rero {floor} or more; a smaller limit needs a smaller sampling probability or "
                      "fewer steps", cls=NumericalError) from None
    achieved = _gamma_at(sigma, q, steps, kappa_v, threat_model, k, prior)
    sched = Schedule((*prior, Phase(sigma, q, steps)))
    eps = epsilon_pld(target_delta=delta, schedule=sched)
    eps_patient = None if k == 1 else float(epsilon_pld_refined(sched.run(k), None, delta).value[0])
    return Calibration(noise_multiplier=sigma, max_rero=max_rero, achieved_rero=achieved, epsilon=eps,
                       epsilon_patient=eps_patient,
                       threat_model=threat_model, sampling_probability=q, steps=steps, kappa=kappa_v,
                       target_delta=delta, records_per_patient=k, schedule=sched,
                       at_floor=sigma <= SIGMA_RANGE[0] and achieved < max_rero / (1 + rtol))


def epsilon_target_for(cal: Calibration, digits: int = 4) -> float | None:
    """The per-record budget to train with (``train --epsilon``, ``profile --epsilons``) so that the run meets
    ``cal``'s limit: ``cal.epsilon`` rounded *down* to ``digits`` significant digits (a smaller budget means more
    noise), checked the way training uses it.

    Training calibrates sigma to the budget with :func:`calibrate_epsilon` (PLD); the check repeats that and
    evaluates the tight ReRo bound, for the privacy unit, at the sigma it gives. A budget whose run would miss the
    limit (the two accountants' discretisations differ in the last digits) is lowered by one unit of the last digit
    until it meets it. None for a calibration of several phases (training runs one phase) or at the search floor.
    """
    if cal.at_floor or (cal.schedule is not None and len(cal.schedule.phases) > 1):
        return None
    q, steps = cal.sampling_probability, cal.steps
    target = float(at_most(cal.epsilon, digits))
    for _ in range(20):
        sigma = calibrate_epsilon(target, q, steps, cal.target_delta, accountant="pld").noise_multiplier
        if _gamma_at(sigma, q, steps, cal.kappa, cal.threat_model, cal.records_per_patient) <= cal.max_rero:
            return target
        target = float(at_most(target * (1 - 10.0 ** (1 - digits)), digits))
    raise NumericalError(f"no per-record epsilon near {cal.epsilon:g} meets the limit {cal.max_rero:g}")


def _clt_guess(max_rero: float, q: float, steps: int, kappa: float) -> float:
    """Starting sigma from the CLT: mu = Phi^{-1}(gamma) - Phi^{-1}(kappa), sigma from mu = q sqrt(T(e^{1/s^2}-1))."""
    mu = float(special.ndtri(max_rero) - special.ndtri(kappa))
    ratio = mu * mu / (q * q * steps)
    return 1.0 / math.sqrt(math.log1p(ratio)) if ratio > 0 else 1.0


@computing_block()  # one block for all its refinements (see dpaudit.heap)
def max_steps(max_rero: float, noise_multiplier: float, sampling_probability: float, kappa: float, *,
              threat_model: str = "worst_case", upper: int = 10**7) -> int:
    """The largest T whose tight ReRo bound at ``kappa`` stays at or below ``max_rero`` (0 if even T = 1 fails).

    Bisection on integers; the bound is non-decreasing in T (composition), so the answer is exact for the
    computed bound.
    """
    kappa_v = float(check_kappa(kappa)[0])
    threat_model = check_threat_model(threat_model)

    def ok(t: int) -> bool:
        return _gamma_at(noise_multiplier, sampling_probability, t, kappa_v, threat_model, 1) <= max_rero

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= upper and ok(hi):
        lo, hi = hi, hi * 2
    if hi > upper:
        return upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
