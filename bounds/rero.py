"""Reconstruction robustness (ReRo) bounds for DP-SGD, worst-case and relaxed threat models.

For a prior whose best blind guess succeeds with probability kappa, no reconstruction attack succeeds with
probability above gamma(kappa) = 1 - f(kappa) = max { Q(E) : P(E) <= kappa }, with f = T(P, Q) the trade-off
function of the T-fold composed per-step pair (P: target absent, Q: target present).

References
----------
[20] Kaissis, Hayes, Ziller, Rueckert, "Bounding data reconstruction attacks with the hypothesis testing
     interpretation of differential privacy", arXiv 2307.03928v1 (2023), Theorem 1: gamma = 1 - f(kappa).
[25] Hayes, Mahloujifar, Balle, "Bounding Training Data Reconstruction in DP-SGD", NeurIPS 2023 (arXiv
     2302.07225v3): the same quantity as the blow-up function.
[26] Kaissis, Ziller, Kolek, Riess, Rueckert, "Optimal privacy guarantees for a relaxed threat model", NeurIPS
     2023: the |Y| pair of the relaxed adversary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from dpaudit.bounds import pld as pld_module
from dpaudit.bounds._mechanism import StepPair, check_kappa, check_records_per_patient, check_threat_model
from dpaudit.bounds.pld import Refined, WindowTooLargeError, _as_run, composed_pld, composed_run, refine
from dpaudit.bounds.schedule import Schedule, resolve
from dpaudit.errors import invalid

METHODS = ("tight", "edgeworth", "clt", "mc")

LABELS = {
    "tight": "sound upper bound",
    "edgeworth": "approximation (not a bound)",
    "clt": "approximation (not a bound)",
    "mc": "estimate (Monte Carlo, with a 95% interval)",
}

#: The Neyman-Pearson step reads the composed PLD from the top; below this loss FFT round-off (~1e-17 per atom)
#: times e^{-loss} could reach 1e-6 of a P-mass, so there the dual route (the add-direction PLD) is used instead.
READ_DEPTH_LIMIT = -25.0

BASE_ASSUMPTIONS = (
    "Poisson sampling of records with probability q at every step",
    "add/remove adjacency; gradients clipped to norm C, noise std sigma * C",
    "the adversary sees all T noisy updates (no hidden state)",
    "kappa (the blind-guess success probability) is chosen by the user",
    "the bound does not depend on delta",
)


@dataclass(frozen=True, eq=False)
class ReRoBound:
    """ReRo bounds at one or more priors kappa.

    Attributes
    ----------
    kappa, gamma:
        Arrays of equal length: gamma[i] bounds (or, per ``label``, approximates or estimates) the probability
        that a reconstruction attack succeeds against a prior of blind-guess success kappa[i].
    lower, upper:
        The numerical bracket around gamma. ``tight``: ``upper`` = gamma (a sound upper bound) and ``lower`` a sound
        *lower* bound on the exact value (the garbled PLD, :func:`dpaudit.bounds.pld._garbled_step`), so the
        exact gamma lies in [lower, upper] and ``numerical_error`` = upper - lower is a proven bound on how far
        gamma is above it. ``mc``: the 95% bootstrap interval (:attr:`interval`; ``numerical_error`` is then NaN).
        Otherwise equal to gamma.
    method, threat_model, label:
        How it was computed, for which adversary, and what kind of number it is.
    noise_multiplier, sampling_probability, steps, records_per_patient:
        The DP-SGD run (for a schedule of several phases: the last phase's sigma and q, and the total steps).
    assumptions, notes:
        What the number assumes, and anything to warn about (e.g. where Edgeworth breaks down).
    discretisation:
        The PLD grid step used (``tight`` only).
    schedule:
        Every phase of the run (:class:`dpaudit.bounds.Schedule`; one phase for a plain (sigma, q, T) call).
    """

    kappa: np.ndarray
    gamma: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: str
    threat_model: str
    label: str
    noise_multiplier: float
    sampling_probability: float
    steps: int
    records_per_patient: int = 1
    assumptions: tuple[str, ...] = field(default=BASE_ASSUMPTIONS)
    notes: tuple[str, ...] = ()
    discretisation: float | None = None
    schedule: Schedule | None = None

    def __post_init__(self) -> None:
        for name in ("kappa", "gamma", "lower", "upper"):
            arr = np.array(getattr(self, name), dtype=float)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if not (self.kappa.shape == self.gamma.shape == self.lower.shape == self.upper.shape):
            raise invalid("gamma", self.gamma.shape, f"the shape of kappa {self.kappa.shape}")

    @property
    def numerical_error(self) -> np.ndarray:
        """``tight``: upper - lower, a proven bound on how far gamma lies above the exact value. Other methods have
        no such bracket (``mc``'s is a confidence interval, :attr:`interval`): NaN."""
        if self.method != "tight":
            return np.full_like(self.gamma, np.nan)
        return self.upper - self.lower

    @property
    def interval(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``mc``: the 95% bootstrap interval (lower, upper) of the estimate; None for every other method."""
        return (self.lower, self.upper) if self.method == "mc" else None


def _assumptions(threat_model: str, records_per_patient: int, phases: int = 1) -> tuple[str, ...]:
    extra = []
    if phases > 1:
        extra.append(f"{phases} phases with their own sigma, q and steps (the schedule), composed exactly")
    if threat_model == "relaxed":
        extra.append("relaxed adversary: knows the norm of the target's contribution, not its direction or sign "
                     "(generalised likelihood-ratio test on |Y|, dimension one = the adversary's best case)")
    else:
        extra.append("worst-case adversary: knows everything but whether the target was in the batch")
    if records_per_patient > 1:
        extra.append(f"patient-level: each patient contributes {records_per_patient} images, sampled "
                     "independently, with aligned gradients (the worst case)")
    return BASE_ASSUMPTIONS + tuple(extra)


def _patient_notes(records_per_patient: int) -> tuple[str, ...]:
    if records_per_patient > 1:
        return (f"records_per_patient = {records_per_patient}: the guarantee is per patient; it is much weaker than "
                "the per-image one and assumes the k gradients point the same way",)
    return ()


# -- tight ------------------------------------------------------------------------------------------------------------

def tight_gamma(pair_or_run, steps: int | None, kappa: np.ndarray, *, rtol: float = 5e-4,
                start: float | None = None):
    """gamma(kappa) from the pessimistic PLD (primal Neyman-Pearson step, dual route where it must read deep),
    bracketed from below by the garbled PLD (:meth:`dpaudit.bounds.pld.DiscretePld.power_lower`), refined until the
    bracket is narrower than ``rtol`` (relative). ``pair_or_run``: a :class:`StepPair` with ``steps``, or a run
    (a tuple of (pair, steps) phases, composed exactly). Returns a :class:`dpaudit.bounds.pld.Refined` whose
    ``lower`` is a sound lower bound on the exact gamma. ``start``: the first grid step (:func:`refine`; e.g. where
    another bound of the same run ended, so that its cached compositions are read again)."""
    run = _as_run(pair_or_run, steps)
    floor = threshold_test_power(run, kappa)
    if np.all(floor >= 1.0 - SATURATED):
        # A plain threshold test already succeeds with probability >= 1 - 1e-12 at every kappa: the exact gamma is
        # in [floor, 1], and 1 is a sound upper bound within 1e-12 of it. No PLD is needed (at tiny noise or very
        # long runs its FFT window is the largest of all, for a number that is 1 to 12 digits).
        return Refined(value=np.ones_like(floor), coarse=np.ones_like(floor), h=math.nan, lower=floor)

    read_key = ("power", np.asarray(kappa, dtype=float).tobytes())

    def evaluate(h: float):
        # The composition's round-off on the atoms read (DiscretePld.roundoff, an estimate), where it could move a
        # power by more than pld.ROUTE_SHARE of it (a tiny kappa after a long run): this round's compositions by the
        # accurate route (dpaudit.bounds.pld.composed_for, as for epsilon; later rounds at once); where the estimate
        # exceeds pld.ALLOWANCE_SHARE of a power, both ends allow for it.
        read = {}

        def shift(pld) -> float:
            gamma, depth = read[pld] = pld.power_and_depth(kappa)
            return float(np.max(_roundoff(pld, depth) / np.maximum(gamma, GAMMA_SCALE)))

        remove, accurate, _ = pld_module.composed_for(run, h, "remove", shift, key=read_key)
        gamma, depth = read[remove] if remove in read else remove.power_and_depth(kappa)
        scale = np.maximum(gamma, GAMMA_SCALE)
        deep = depth < READ_DEPTH_LIMIT
        if np.any(deep):
            add = composed_run(run, h, "add", False, accurate)
            gamma = np.where(deep, add.dual_power(kappa), gamma)
        garbled = composed_run(run, h, "remove", True, accurate)
        allowance = np.maximum(_roundoff(remove, depth), _roundoff(garbled, depth))
        allowance = np.where(~deep & (allowance > pld_module.ALLOWANCE_SHARE * scale), allowance, 0.0)
        upper = np.clip(np.maximum(gamma + allowance, kappa), 0.0, 1.0)  # gamma >= kappa always (f(a) <= 1 - a)
        lower = np.minimum(np.maximum(garbled.power_lower(kappa) - allowance, kappa), upper)  # (gamma >= kappa)
        # Deep reads (FFT round-off times e^{-loss}) make the lower bound loose there: those entries converge by
        # nested grids instead, and keep their sound, if wide, bracket. Last: the part of the bracket the round-off
        # guard and the allowance hold, which a finer grid does not narrow, read only when refine's stop rule asks
        # for it (a second pass over the atoms read).
        return upper, lower, ~deep, lambda: garbled.power_lower_and_guard(kappa)[1] + 2.0 * allowance

    return refine(run, None, evaluate, rtol=rtol, atol=1e-12, start=start, long_probe=True)


def _roundoff(pld, depth: np.ndarray) -> np.ndarray:
    """:meth:`dpaudit.bounds.pld.DiscretePld.roundoff` of a read down to each loss in ``depth`` (an estimate)."""
    if not pld.spectrum_ulps:
        return np.zeros(depth.shape)
    return np.array([pld.roundoff(math.sqrt(pld.atoms_above(float(d)) + 1)) for d in depth])


#: Below this gamma the refinement's tolerance is absolute (its atol, 1e-12, is 5e-4 of it): the round-off shares
#: of tight_gamma are taken of it there.
GAMMA_SCALE = 2e-9


#: gamma within this of 1 (proven by the threshold test) is reported as 1 without a PLD (see tight_gamma).
SATURATED = 1e-12


def threshold_test_power(run, kappa: np.ndarray) -> np.ndarray:
    """A sound *lower* bound on gamma(kappa): the power of the test "some step's observation exceeds tau" (|X| > tau
    in the relaxed model), with tau set so that its size under P is exactly kappa.

    Per step, P(X > tau) = Phibar(tau / sigma) (twice that for |X|) and Q(X > tau) = sum_j Binom(k, q)(j)
    Phibar((tau - j) / sigma) (plus Phi((-tau - j) / sigma) for |X|); steps are independent, so the test's size is
    1 - prod_t (1 - P_t) and its power 1 - prod_t (1 - Q_t). tau by multisection (the size falls as tau grows). Any test
    of size <= kappa has power <= gamma(kappa) (Neyman-Pearson), so this is a lower bound; it is nearly exact when
    noise is tiny against the clipped gradient (a closed form).
    """
    kappa = np.atleast_1d(np.asarray(kappa, dtype=float))
    log_keep = np.log1p(-kappa)  # log(1 - size) at the wanted size

    def log_stay(tau: np.ndarray, under_q: bool) -> np.ndarray:
        total = np.zeros_like(tau)
        for pair, steps in run:
            sigma = pair.noise_multiplier
            if under_q:
                w, means = np.exp(pair.log_weights), pair.means
            else:
                w, means = np.ones(1), np.zeros(1)
            exceed = np.zeros_like(tau)
            for wj, mj in zip(w, means, strict=True):
                if wj > 0:
                    exceed = exceed + wj * special.ndtr((mj - tau) / sigma)
                    if pair.relaxed:
                        exceed = exceed + wj * special.ndtr((-tau - mj) / sigma)
            with np.errstate(divide="ignore"):  # exceed 1: the test always fires, log 0 = -inf is meant
                total = total + steps * np.log1p(-np.minimum(exceed, 1.0))
        return total

    k_max = max(pair.records_per_patient for pair, _ in run)
    s_max = max(pair.noise_multiplier for pair, _ in run)
    lo = np.zeros_like(kappa)
    hi = np.full_like(kappa, k_max + 60.0 * s_max)
    # Multisection: 64 taus per bracket and round, 9 rounds (64^-9: tau to float precision; any tau with size <=
    # kappa gives a sound floor). The last tau of each round is the bracket's upper end, whose size is <= kappa.
    fractions = np.linspace(0.0, 1.0, 65)[1:]
    rows = np.arange(kappa.size)
    for _ in range(9):
        taus = lo[:, None] + (hi - lo)[:, None] * fractions[None, :]
        taus[:, -1] = hi  # exactly (lo + (hi - lo) may round below hi, whose size is known to be <= kappa)
        ok = log_stay(taus, False) >= log_keep[:, None]  # size <= kappa: False below the crossing, True above
        first = np.argmax(ok, axis=1)
        lo = np.where(first > 0, taus[rows, np.maximum(first - 1, 0)], lo)
        hi = taus[rows, first]
    power = -np.expm1(log_stay(hi, True))  # hi: size <= kappa
    return np.clip(np.maximum(power, 0.0), 0.0, 1.0)


def dual_gamma(pair: StepPair, steps: int, kappa: np.ndarray, h: float) -> np.ndarray:
    """gamma(kappa) by the dual route alone (the add-direction PLD's hockey-stick curve), at grid step h."""
    return np.maximum(composed_pld(pair, steps, h, "add").dual_power(kappa), kappa)


# -- closed forms (for tests and for the CLT shortcut) ----------------------------------------------------------------

def gaussian_gamma(mu: float, kappa: np.ndarray | float) -> np.ndarray:
    """mu-GDP: gamma = Phi(Phi^{-1}(kappa) + mu) (Dong, Roth, Su 2022, arXiv 1905.02383v3, eq. (2.2))."""
    return special.ndtr(special.ndtri(np.asarray(kappa, dtype=float)) + mu)


def relaxed_gaussian_gamma(mu: float, kappa: np.ndarray | float) -> np.ndarray:
    """Relaxed model, one release of the Gaussian mechanism (q = 1, T = 1): the test on |Y| rejects when
    |Y| / sigma > c with 2 Phibar(c) = kappa, so gamma = Phibar(c - mu) + Phi(-c - mu)."""
    c = special.ndtri(1 - np.asarray(kappa, dtype=float) / 2)
    return special.ndtr(mu - c) + special.ndtr(-c - mu)


def clt_mu(noise_multiplier: float, sampling_probability: float, steps: int) -> float:
    """The Gaussian-DP CLT parameter mu = q sqrt(T (e^{1/sigma^2} - 1)) (Dong, Roth, Su 2022, Corollary 5.4)."""
    return sampling_probability * math.sqrt(steps * math.expm1(1 / noise_multiplier ** 2))


# -- the public entry point ----------------------------------------------------------------------------------------

#: Monte Carlo draws of the composed loss by default (``mc_samples``, ``--mc-samples``).
MC_SAMPLES = 20_000
#: Most draws accepted: each costs the 200 bootstrap resamples a sort (about a minute at 10^7 on one core).
MC_SAMPLES_MAX = 10_000_000
#: Fewest draws beyond its threshold an estimate should rest on: with j of them, gamma is j/n and its relative
#: error about 1/sqrt(j) (binomial), 10% at 100; below, the bootstrap interval is wide and lumpy, and the estimate
#: can sit at one end of it (20,000 draws at gamma 5e-4: j = 10, interval [5.0e-4, 5.5e-4]).
MC_MIN_TAIL = 100


def _few_tail_note(kappa: np.ndarray, gamma: np.ndarray, samples: int, threat_model: str) -> str | None:
    """A note when a Monte Carlo estimate rests on fewer than :data:`MC_MIN_TAIL` draws beyond its threshold."""
    tail = np.rint(gamma * samples).astype(np.int64)  # the draws beyond the threshold: gamma = tail / samples
    few = tail < MC_MIN_TAIL
    if not few.any():
        return None
    i = int(np.argmin(np.where(few, tail, np.iinfo(np.int64).max)))
    raw = MC_MIN_TAIL * samples / max(int(tail[i]), 1)  # draws that put MC_MIN_TAIL beyond, at this gamma
    step = 10 ** max(0, math.floor(math.log10(raw)) - 1)  # rounded up to two significant digits
    need = min(MC_SAMPLES_MAX, math.ceil(raw / step) * step)
    return (f"Monte Carlo {threat_model.replace('_', ' ')}: at kappa {kappa[i]:.3g} the estimate rests on "
            f"{int(tail[i])} of {samples} samples beyond its threshold (fewer than {MC_MIN_TAIL}), too few for a "
            f"reliable estimate or interval (the interval may be wide, or sit at the estimate and miss the exact "
            f"value); raise the samples (--mc-samples {need}) or use --method tight")


def rero_bound(noise_multiplier: float | None = None, sampling_probability: float | None = None,
               steps: int | None = None, kappa: float | Sequence[float] | np.ndarray | None = None, *,
               threat_model: str = "worst_case", method: str = "tight", records_per_patient: int = 1,
               mc_samples: int = MC_SAMPLES, seed: int | None = 0, schedule: Schedule | None = None) -> ReRoBound:
    """The highest probability that a reconstruction attack succeeds, for each prior kappa.

    Parameters
    ----------
    noise_multiplier, sampling_probability, steps:
        The DP-SGD run: sigma > 0, q in (0, 1], T >= 1.
    kappa:
        The prior's blind-guess success probability, in (0, 1): one value or a sequence (e.g. 1 / N_train).
    threat_model:
        ``"worst_case"`` (default) or ``"relaxed"`` (Kaissis et al., NeurIPS 2023).
    method:
        ``"tight"`` (default; a sound upper bound from the pessimistic PLD), ``"edgeworth"`` (the seed paper's
        approximation, not a bound), ``"clt"`` (Gaussian-DP shortcut, not a bound, can be off by 5x at small
        sigma), ``"mc"`` (Monte Carlo estimate with a 95% interval).
    records_per_patient:
        k >= 1 images per patient: the per-step pair becomes N(0, s^2) vs sum_j Binom(k, q)(j) N(j, s^2).
    mc_samples, seed:
        Monte Carlo only: ``mc_samples`` draws (at most :data:`MC_SAMPLES_MAX`; an estimate resting on fewer than
        :data:`MC_MIN_TAIL` draws beyond its threshold gets a note). ``seed`` 0 by default: the same estimate and interval on every run (None: fresh entropy).
    schedule:
        A :class:`dpaudit.bounds.Schedule` (phases with their own sigma, q and steps, e.g. Opacus' accountant
        history) in place of (noise_multiplier, sampling_probability, steps). ``tight`` composes the phases' PLDs
        exactly, then takes one Neyman-Pearson step; ``mc`` samples every phase; the approximations need one phase.

    Returns
    -------
    ReRoBound
        ``.gamma`` per kappa, the numerical bracket, the label and the assumptions.
    """
    if method not in METHODS:
        raise invalid("method", method, "one of tight, edgeworth, clt, mc", "pass --method tight")
    threat_model = check_threat_model(threat_model)
    if method == "mc":
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int | np.integer) or not (
                MC_MIN_TAIL <= mc_samples <= MC_SAMPLES_MAX):
            raise invalid("mc_samples", mc_samples, f"an integer in [{MC_MIN_TAIL}, {MC_SAMPLES_MAX}]",
                          f"pass --mc-samples {MC_SAMPLES} or more")
        mc_samples = int(mc_samples)
    sched = resolve(noise_multiplier, sampling_probability, steps, schedule)
    if method == "mc":
        from dpaudit.bounds.montecarlo import check_mc_work

        check_mc_work(sched.steps, mc_samples, min_samples=MC_MIN_TAIL)  # before any draw
    k = check_records_per_patient(records_per_patient)
    run = sched.run(k, threat_model)
    if kappa is None:
        raise invalid("kappa", None, "given", "pass kappa, the prior's blind-guess success probability, e.g. 1e-3")
    kappa = check_kappa(kappa)
    if len(run) > 1 and method in ("edgeworth", "clt"):
        raise invalid("method", method, "tight or mc for a schedule of several phases",
                      "pass --method tight (or mc), or a single phase")
    pair, steps = run[-1][0], sched.steps
    notes = list(_patient_notes(k))
    h = None
    if method == "tight":
        try:
            refined = tight_gamma(run, None, kappa)
        except WindowTooLargeError as exc:
            # 1 bounds every probability: still a sound upper bound, just the trivial one (labelled in the notes).
            gamma = upper = np.ones_like(kappa)
            lower = kappa
            notes.append(f"gamma = 1 is the trivial sound upper bound: the tight PLD does not fit here ({exc}); "
                         "fewer steps give a bound below 1")
        else:
            gamma = refined.value
            upper = gamma
            lower = np.maximum(refined.lower, kappa)  # sound: the garbled PLD's power, and gamma >= kappa
            h = None if math.isnan(refined.h) else refined.h  # None: saturated, no PLD was needed
    elif method == "clt":
        from dpaudit.bounds.edgeworth import clt_gamma

        gamma = clt_gamma(pair, steps, kappa)
        lower = upper = gamma
        notes.append("CLT (Gaussian-DP) approximation: not a bound; it can be wrong by up to 5x at small sigma")
    elif method == "edgeworth":
        from dpaudit.bounds.edgeworth import edgeworth_gamma

        gamma, why = edgeworth_gamma(pair, steps, kappa)
        lower = upper = gamma
        notes.append("Edgeworth approximation (the seed paper's method): not a bound; above or below the exact "
                     "value depending on kappa")
        notes.extend(why)
    else:
        from dpaudit.bounds.montecarlo import mc_gamma

        gamma, lower, upper = mc_gamma(run, None, kappa, samples=mc_samples, seed=seed)
        notes.append(f"Monte Carlo estimate from {mc_samples} samples under Q (importance-weighted by e^-L); "
                     "95% bootstrap interval")
        few = _few_tail_note(kappa, gamma, mc_samples, threat_model)
        if few is not None:
            notes.append(few)
    return ReRoBound(
        kappa=kappa, gamma=gamma, lower=lower, upper=upper, method=method, threat_model=threat_model,
        label=LABELS[method], noise_multiplier=pair.noise_multiplier,
        sampling_probability=pair.sampling_probability, steps=steps,
        records_per_patient=k, assumptions=_assumptions(threat_model, k, len(sched.phases)),
        notes=tuple(notes), discretisation=h, schedule=sched)
