"""Sound empirical lower bounds on epsilon from a membership test's counts (pure numpy/scipy).

Two routes, both *empirical lower bounds* holding with a stated confidence:

* **Two error pairs** (:func:`epsilon_lower_bound`): a test run on independent trials (members and non-members)
  gives true- and false-positive counts. (epsilon, delta)-DP implies TPR <= e^eps FPR + delta and
  TNR <= e^eps FNR + delta (Kairouz, Oh, Viswanath, "The composition theorem for differential privacy", ICML
  2015, Theorem 2.1; the hypothesis-testing view used for auditing by Jagielski, Ullman, Oprea, "Auditing
  differentially private machine learning", NeurIPS 2020, section 3). Clopper-Pearson intervals turn counts
  into a TPR lower and an FPR upper limit, which turn into a lower bound on epsilon.
* **One training run** (:func:`one_run_epsilon_lower_bound`): m canaries included by independent fair coin
  flips, an attacker makes r guesses of which v are correct (Steinke, Nasr, Jagielski, "Privacy Auditing with
  One (1) Training Run", NeurIPS 2023, arXiv 2305.08846v1, Theorem 3 and Appendix D).

Choosing a threshold or a guess count by looking at the same data that gives the counts makes any of these
bounds optimistic. :func:`bound_from_scores` and :func:`one_run_from_scores` choose on a held-out split
(``selection="split"``) or pay for every try with a Bonferroni correction (``selection="bonferroni"``); the
result records which. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from dpaudit.attacks.binomial import clopper_pearson_limits
from dpaudit.errors import check_int, check_probability, invalid
from dpaudit.numfmt import LABEL_EMPIRICAL, empirical_epsilon_label, lower, upper

__all__ = [
    "DEFAULT_DELTA",
    "OneRunBound",
    "OneRunScoreAudit",
    "ScoreBound",
    "TwoErrorBound",
    "bound_from_scores",
    "clopper_pearson",
    "epsilon_lower_bound",
    "low_epsilon_caveat",
    "one_run_ceiling",
    "one_run_epsilon_lower_bound",
    "one_run_from_scores",
    "one_run_p_value",
    "two_error_ceiling",
]

Selection = Literal["split", "bonferroni"]

#: delta every function here (and ``dpaudit mia bound``/``one-run``) audits at unless told otherwise: 1e-5, the
#: delta at which ``dpaudit train`` and ``dpaudit bounds`` report epsilon (``DpSgdConfig.target_delta``). A lower
#: bound is only comparable with an upper bound at the same delta, and a larger delta gives a smaller lower bound,
#: so defaulting to delta = 0 (pure DP, which the Gaussian mechanism never satisfies at finite epsilon) would
#: overstate the empirical epsilon against the (epsilon, 1e-5) guarantee being audited: a false alarm.
DEFAULT_DELTA = 1e-5

#: Bisection tolerance on epsilon (absolute). The returned value is the *lower* end of the final bracket, whose
#: p-value was checked, so the tolerance only costs tightness, never soundness.
_EPS_TOL = 1e-7
#: Largest epsilon the one-run search considers: e^-60 ~ 1e-26 is below any p-value a finite audit can reach
#: with fewer than 10^8 guesses (the p-value of r correct out of r is (1 + e^-eps)^-r, ~ 1 - r e^-eps).
_EPS_MAX = 60.0


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------

def _check_confidence(confidence: float) -> float:
    return check_probability("confidence", confidence,
                             fix="pass the confidence of the lower bound as a number in (0, 1), e.g. 0.95")


def _check_delta(delta: float) -> float:
    return check_probability("delta", delta, open_low=False,
                             fix="pass the delta of the (epsilon, delta) guarantee being audited, in [0, 1), e.g. 1e-5")


def _check_count(field: str, value: int, *, minimum: int = 0) -> int:
    return check_int(field, value, minimum=minimum, fix=f"pass a whole number >= {minimum}")


def _check_at_most(field: str, value: int, other_field: str, other: int) -> None:
    if value > other:
        raise invalid(field, value, f"at most {other_field} ({other})",
                      f"pass {field} <= {other_field}: a count cannot exceed its total")


# ----------------------------------------------------------------------------------------------------------
# Clopper-Pearson
# ----------------------------------------------------------------------------------------------------------

def clopper_pearson(successes: int, trials: int, *, level: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson limits: ``(low, high)`` each holding with probability ``level``.

    ``low`` is the largest p with P[Binomial(trials, p) >= successes] <= 1 - level (0 when successes = 0);
    ``high`` the smallest p with P[Binomial(trials, p) <= successes] <= 1 - level (1 when successes = trials).
    Each is a one-sided interval at ``level``; ``[low, high]`` together is a two-sided one at 2 level - 1
    (:func:`dpaudit.attacks.binomial.clopper_pearson_limits`, with the inputs validated).
    """
    trials = _check_count("trials", trials, minimum=1)
    successes = _check_count("successes", successes)
    _check_at_most("successes", successes, "trials", trials)
    level = check_probability("level", level, fix="pass a one-sided confidence level in (0, 1)")
    low, high = clopper_pearson_limits(np.array([successes]), trials, level)
    return float(low[0]), float(high[0])


# ----------------------------------------------------------------------------------------------------------
# two error pairs
# ----------------------------------------------------------------------------------------------------------

def _drop_label(data: dict[str, Any]) -> dict[str, Any]:
    """Read results written before the ``labels`` block replaced the single ``label`` field."""
    return {k: v for k, v in data.items() if k != "label"} if isinstance(data, dict) else data


class _LowerBound:
    """A count-based result: a finite epsilon lower bound >= 0 (serialised field by field by dpaudit.codec), with
    a ``labels`` block like every result's JSON."""

    epsilon_lower_bound: float
    confidence: float
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)
    json_upgrade = staticmethod(_drop_label)

    @property
    def label(self) -> str:
        """What the epsilon is, at this bound's confidence: the membership audit's words (:mod:`dpaudit.numfmt`)."""
        return f"{LABEL_EMPIRICAL}: {empirical_epsilon_label(self.confidence)}"

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is (written to JSON beside them)."""
        return {"epsilon_lower_bound": self.label}

    def __post_init__(self) -> None:
        if not (self.epsilon_lower_bound >= 0 and math.isfinite(self.epsilon_lower_bound)):
            raise invalid("epsilon_lower_bound", self.epsilon_lower_bound, "a finite number >= 0")


@dataclass(frozen=True)
class TwoErrorBound(_LowerBound):
    """Empirical lower bound on epsilon from a membership test's counts on independent trials.

    Attributes
    ----------
    epsilon_lower_bound:
        max(0, ``epsilon_from_tpr_fpr``, ``epsilon_from_tnr_fnr``): no mechanism that is (eps, delta)-DP with a
        smaller eps produces counts this extreme except with probability at most 1 - ``confidence``.
    tpr_low, fpr_high:
        One-sided Clopper-Pearson limits, each at confidence 1 - (1 - ``confidence``) / 2 (union bound).
    tnr_low, fnr_high:
        1 - ``fpr_high`` and 1 - ``tpr_low``: the same two intervals read for the other error pair, so both
        forms hold on the same event and taking the larger needs no further correction.
    epsilon_from_tpr_fpr, epsilon_from_tnr_fnr:
        log((TPR_low - delta) / FPR_high) and log((TNR_low - delta) / FNR_high), -inf when the numerator is <= 0.
    """

    epsilon_lower_bound: float
    tpr_low: float
    fpr_high: float
    tnr_low: float
    fnr_high: float
    epsilon_from_tpr_fpr: float
    epsilon_from_tnr_fnr: float
    true_positives: int
    positives: int
    false_positives: int
    negatives: int
    delta: float
    confidence: float

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is (written to JSON beside them)."""
        return {"epsilon_lower_bound": self.label,
                "epsilon_from_tpr_fpr, epsilon_from_tnr_fnr": f"{self.label} (each error pair's; -inf: none)",
                "tpr_low, tnr_low": "empirical (one-sided lower Clopper-Pearson limit, at confidence "
                                    "1 - (1 - confidence) / 2)",
                "fpr_high, fnr_high": "empirical (one-sided upper Clopper-Pearson limit, at confidence "
                                      "1 - (1 - confidence) / 2)"}


def epsilon_lower_bound(true_positives: int, positives: int, false_positives: int, negatives: int, *,
                        delta: float = DEFAULT_DELTA, confidence: float = 0.95) -> TwoErrorBound:
    """Sound lower bound on epsilon from true/false-positive counts of a fixed test on independent trials.

    Parameters
    ----------
    true_positives, positives:
        Members flagged as members, out of ``positives`` independent member trials.
    false_positives, negatives:
        Non-members flagged as members, out of ``negatives`` independent non-member trials.
    delta:
        The delta of the (epsilon, delta) guarantee being tested; default :data:`DEFAULT_DELTA` (1e-5, the delta
        dpaudit reports epsilon at: a lower bound at delta 0 would overstate epsilon against that guarantee).
    confidence:
        Probability that the bound holds (it is above the true epsilon with probability <= 1 - confidence).
        Split equally between the TPR and the FPR interval (union bound).

    Notes
    -----
    The test (its threshold) must be fixed before the counts are taken; see :func:`bound_from_scores` to choose
    one from scores without optimism. (eps, delta)-DP implies, for any test, TPR <= e^eps FPR + delta and
    TNR <= e^eps FNR + delta (Kairouz et al., ICML 2015, Theorem 2.1). On the event TPR >= TPR_low and
    FPR <= FPR_high (probability >= ``confidence``), both give eps >= log((TPR_low - delta) / FPR_high) and
    eps >= log((1 - FPR_high - delta) / (1 - TPR_low)).
    """
    positives = _check_count("positives", positives, minimum=1)
    negatives = _check_count("negatives", negatives, minimum=1)
    true_positives = _check_count("true_positives", true_positives)
    false_positives = _check_count("false_positives", false_positives)
    _check_at_most("true_positives", true_positives, "positives", positives)
    _check_at_most("false_positives", false_positives, "negatives", negatives)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)

    tpr_low, fpr_high, e1, e2 = (float(x[0]) for x in _two_error_arrays(
        np.array([true_positives]), positives, np.array([false_positives]), negatives, delta, confidence))
    return TwoErrorBound(
        epsilon_lower_bound=max(0.0, e1, e2), tpr_low=tpr_low, fpr_high=fpr_high, tnr_low=1.0 - fpr_high,
        fnr_high=1.0 - tpr_low, epsilon_from_tpr_fpr=e1, epsilon_from_tnr_fnr=e2, true_positives=true_positives,
        positives=positives, false_positives=false_positives, negatives=negatives, delta=delta,
        confidence=confidence)


def _two_error_arrays(tp: np.ndarray, positives: int, fp: np.ndarray, negatives: int, delta: float,
                      confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised core of :func:`epsilon_lower_bound`: (TPR_low, FPR_high, eps from TPR/FPR, eps from TNR/FNR)."""
    level = 1.0 - (1.0 - confidence) / 2.0  # each interval gets half the error budget (union bound)
    tpr_low, _ = clopper_pearson_limits(tp, positives, level)
    _, fpr_high = clopper_pearson_limits(fp, negatives, level)
    # Kairouz et al. 2015, Thm 2.1: TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta; with
    # TNR_low = 1 - FPR_high and FNR_high = 1 - TPR_low both hold on the same event.
    with np.errstate(divide="ignore", invalid="ignore"):
        num1, num2 = tpr_low - delta, (1.0 - fpr_high) - delta
        e1 = np.where(num1 > 0, np.log(np.maximum(num1, 1e-300)) - np.log(fpr_high), -np.inf)
        e2 = np.where(num2 > 0, np.log(np.maximum(num2, 1e-300)) - np.log(1.0 - tpr_low), -np.inf)
    return tpr_low, fpr_high, e1, e2


def two_error_ceiling(positives: int, negatives: int, *, delta: float = DEFAULT_DELTA, confidence: float = 0.95) -> float:
    """The largest lower bound ``positives`` + ``negatives`` trials can ever give (a perfect test).

    No audit with this many trials can certify an epsilon above this value, whatever the mechanism.
    """
    return epsilon_lower_bound(positives, positives, 0, negatives, delta=delta,
                               confidence=confidence).epsilon_lower_bound


# ----------------------------------------------------------------------------------------------------------
# one training run (Steinke, Nasr, Jagielski 2023)
# ----------------------------------------------------------------------------------------------------------

def _validate_one_run(canaries: int, guesses: int, correct: int) -> tuple[int, int, int]:
    canaries = _check_count("canaries", canaries, minimum=1)
    guesses = _check_count("guesses", guesses)
    correct = _check_count("correct", correct)
    _check_at_most("guesses", guesses, "canaries", canaries)
    _check_at_most("correct", correct, "guesses", guesses)
    return canaries, guesses, correct


def _one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Unvalidated core of :func:`one_run_p_value`."""
    if v == 0:
        return 1.0
    from scipy import (  # here, not at import: the results that hold these bounds load without scipy (the CLI's
        special,  # start-up builds the profile's configuration, which holds them)
        stats,
    )

    # q = e^eps / (1 + e^eps), the accuracy of eps-DP randomised response. Counting *wrong* guesses,
    # r - W ~ Binomial(r, 1 - q) with 1 - q = expit(-eps), keeps the tails accurate when q is close to 1.
    p_wrong = float(special.expit(-eps))
    # P[Binomial(r, q) >= v] = P[Binomial(r, 1 - q) <= r - v]
    tail = float(stats.binom.cdf(r - v, r, p_wrong))
    if delta == 0.0:
        return min(1.0, tail)
    # delta term (Theorem 3 / Appendix D of arXiv 2305.08846v1):
    # 2 m delta * max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i
    k = np.arange(v - 1, -1, -1)                       # v-1, v-2, ..., 0 (i = 1, ..., v)
    pmf = stats.binom.pmf(r - k, r, p_wrong)           # P[Binomial(r, q) = k]
    window = np.cumsum(pmf)                            # P[v - i <= Binomial(r, q) <= v - 1] for i = 1..v
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def one_run_p_value(canaries: int, guesses: int, correct: int, *, epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    """Upper bound on P[at least ``correct`` of ``guesses`` correct] for any (epsilon, delta)-DP training run.

    The canaries are included by independent fair coin flips; the attacker guesses (member or non-member) on
    ``guesses`` of them and abstains on the rest.

    References
    ----------
    Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023, arXiv 2305.08846v1:
    Theorem 3 (the general (eps, delta) case), evaluated as in Appendix D:
    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta max_{i in [v]} P[v > Binomial(r, q) >= v - i] / i,
    with q = e^eps / (1 + e^eps).
    """
    m, r, v = _validate_one_run(canaries, guesses, correct)
    if not (math.isfinite(float(epsilon)) and float(epsilon) >= 0):
        raise invalid("epsilon", epsilon, "a finite number >= 0")
    return _one_run_p_value(m, r, v, float(epsilon), _check_delta(delta))


@dataclass(frozen=True)
class OneRunBound(_LowerBound):
    """Empirical lower bound on epsilon from one training run with coin-flipped canaries.

    Attributes
    ----------
    epsilon_lower_bound:
        Largest eps (to 1e-7, rounded down) whose p-value is <= 1 - ``confidence``: every (eps', delta)-DP run
        with eps' <= this value gives this many correct guesses with probability <= 1 - ``confidence``.
    p_value:
        The p-value at ``epsilon_lower_bound`` (<= 1 - confidence), or at eps = 0 when the bound is 0.
    ceiling:
        The bound ``canaries`` canaries would give if every one were guessed correctly: the most this audit
        design can ever certify.
    """

    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    p_value: float
    ceiling: float

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is (written to JSON beside them)."""
        return {"epsilon_lower_bound": self.label,
                "p_value": "empirical (the one-run test's p-value at epsilon_lower_bound, from the observed counts)",
                "ceiling": "sound upper bound on what this design can certify (the lower bound it would report with "
                           "every canary guessed right); not a measurement"}


def _one_run_eps(m: int, r: int, v: int, delta: float, beta: float) -> tuple[float, float]:
    """sup{eps : p(eps) <= beta} by bisection; returns (eps, p(eps)) with p(eps) <= beta checked, or (0, p(0)).

    Soundness does not need p to be monotone in eps: any eps with p(eps) <= beta rejects every eps' <= eps,
    because an (eps', delta)-DP run is also (eps, delta)-DP.
    """
    p0 = _one_run_p_value(m, r, v, 0.0, delta)
    if p0 > beta:
        return 0.0, p0
    lo, hi = 0.0, 1.0
    while hi < _EPS_MAX and _one_run_p_value(m, r, v, hi, delta) <= beta:
        lo, hi = hi, min(2.0 * hi, _EPS_MAX)
    if hi >= _EPS_MAX and _one_run_p_value(m, r, v, hi, delta) <= beta:
        lo = hi
    else:
        while hi - lo > _EPS_TOL:
            mid = 0.5 * (lo + hi)
            if _one_run_p_value(m, r, v, mid, delta) <= beta:
                lo = mid
            else:
                hi = mid
    return lo, _one_run_p_value(m, r, v, lo, delta)


@functools.lru_cache(maxsize=256)
def _ceiling(m: int, delta: float, beta: float) -> float:
    return _one_run_eps(m, m, m, delta, beta)[0]


def one_run_ceiling(canaries: int, *, delta: float = DEFAULT_DELTA, confidence: float = 0.95) -> float:
    """The largest lower bound ``canaries`` coin-flipped canaries can ever give (every canary guessed right)."""
    m = _check_count("canaries", canaries, minimum=1)
    return _ceiling(m, _check_delta(delta), 1.0 - _check_confidence(confidence))


def one_run_epsilon_lower_bound(canaries: int, guesses: int, correct: int, *, delta: float = DEFAULT_DELTA,
                                confidence: float = 0.95) -> OneRunBound:
    """Empirical lower bound on epsilon from ``correct`` right guesses out of ``guesses`` on ``canaries``.

    Parameters
    ----------
    canaries:
        m, the number of canaries, each included in training by an independent fair coin flip.
    guesses:
        r, how many canaries the attacker guessed on (abstained on the other m - r). Must be fixed without
        looking at the coin flips (see :func:`one_run_from_scores`).
    correct:
        v, how many of the r guesses were right.
    delta, confidence:
        The delta of the guarantee being audited and the probability that the bound holds.

    References
    ----------
    Steinke, Nasr, Jagielski, NeurIPS 2023, arXiv 2305.08846v1, Theorem 3; the bound is the largest eps the
    hypothesis test of their Appendix D rejects at level 1 - confidence.
    """
    m, r, v = _validate_one_run(canaries, guesses, correct)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    eps, p = _one_run_eps(m, r, v, delta, 1.0 - confidence)
    ceiling = _ceiling(m, delta, 1.0 - confidence)
    return OneRunBound(epsilon_lower_bound=eps, canaries=m, guesses=r, correct=v, delta=delta,
                       confidence=confidence, p_value=p, ceiling=ceiling)


# ----------------------------------------------------------------------------------------------------------
# from scores: choosing the threshold / guess count without optimism
# ----------------------------------------------------------------------------------------------------------

def _as_scores(field: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise invalid(field, "an empty array", "a non-empty array of finite scores")
    if not np.all(np.isfinite(arr)):
        raise invalid(field, "an array with NaN or inf", "finite scores (higher = more likely a member)",
                      "drop or fix the non-finite scores before auditing")
    return arr


def _check_selection(selection: str) -> Selection:
    if selection not in ("split", "bonferroni"):
        raise invalid("selection", selection, "'split' or 'bonferroni'")
    return selection  # type: ignore[return-value]


class _FromBound:
    """A score-based audit whose reported number is its ``bound``'s epsilon lower bound (written to JSON beside
    the fields)."""

    bound: Any
    confidence: float
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("epsilon_lower_bound", "labels")
    json_upgrade = staticmethod(_drop_label)

    @property
    def label(self) -> str:
        """What the epsilon is, at the audit's overall confidence (its ``bound`` states its own, corrected for the
        tries): the membership audit's words (:mod:`dpaudit.numfmt`)."""
        return f"{LABEL_EMPIRICAL}: {empirical_epsilon_label(self.confidence)}"

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is (written to JSON beside them)."""
        return {"epsilon_lower_bound": self.label}

    @property
    def epsilon_lower_bound(self) -> float:
        return self.bound.epsilon_lower_bound


@dataclass(frozen=True)
class ScoreBound(_FromBound):
    """Two-error-pair lower bound with a threshold chosen without optimism.

    ``selection`` says how: ``"split"`` (the threshold maximising the bound on a random half of the trials,
    the counts from the other half at the full confidence) or ``"bonferroni"`` (every candidate threshold,
    fixed before seeing the scores, tested at confidence 1 - (1 - confidence) / K; the best is reported).
    ``bound`` holds the counts the reported number comes from.
    """

    bound: TwoErrorBound
    threshold: float
    selection: str
    candidates: int
    confidence: float



def _best_threshold(members: np.ndarray, nonmembers: np.ndarray, thresholds: np.ndarray, *, delta: float,
                    confidence: float) -> tuple[float, TwoErrorBound]:
    """The threshold (flag 'member' when score >= t) whose bound on these scores is largest (first on ties)."""
    ms, ns = np.sort(members), np.sort(nonmembers)
    tp = ms.size - np.searchsorted(ms, thresholds, side="left")
    fp = ns.size - np.searchsorted(ns, thresholds, side="left")
    _, _, e1, e2 = _two_error_arrays(tp, ms.size, fp, ns.size, delta, confidence)
    i = int(np.argmax(np.maximum(e1, e2)))
    return float(thresholds[i]), epsilon_lower_bound(int(tp[i]), ms.size, int(fp[i]), ns.size, delta=delta,
                                                     confidence=confidence)


def bound_from_scores(member_scores: Any, nonmember_scores: Any, *, delta: float = DEFAULT_DELTA, confidence: float = 0.95,
                      selection: Selection = "split", thresholds: Sequence[float] | None = None,
                      seed: int = 0) -> ScoreBound:
    """Two-error-pair lower bound on epsilon from scores (higher = more likely a member), choosing the threshold soundly.

    Parameters
    ----------
    member_scores, nonmember_scores:
        One score per independent trial (a fresh run of the mechanism each).
    selection:
        ``"split"`` (default): shuffle each arm with ``seed``, choose the threshold on the first half (the one
        with the largest bound there), count on the second half. ``"bonferroni"``: ``thresholds`` must be given
        and fixed in advance (not computed from these scores); each is tested at confidence
        1 - (1 - confidence) / len(thresholds) and the largest bound reported (union bound over the tries).
    thresholds:
        Candidate thresholds; for ``"split"`` they default to every score in the selection half.
    """
    members = _as_scores("member_scores", member_scores)
    nonmembers = _as_scores("nonmember_scores", nonmember_scores)
    selection = _check_selection(selection)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    if selection == "bonferroni":
        if thresholds is None or len(thresholds) == 0:
            raise invalid("thresholds", thresholds, "a non-empty list fixed before seeing the scores",
                          "pass the candidate thresholds, or use selection='split'")
        cand = np.asarray(thresholds, dtype=float)
        k = cand.size
        t, b = _best_threshold(members, nonmembers, cand, delta=delta,
                               confidence=1.0 - (1.0 - confidence) / k)
        return ScoreBound(bound=b, threshold=t, selection=selection, candidates=k, confidence=confidence)
    if members.size < 2 or nonmembers.size < 2:
        raise invalid("member_scores/nonmember_scores", (members.size, nonmembers.size),
                      "at least 2 trials in each arm for selection='split'", "run more trials")
    rng = np.random.default_rng(seed)
    mp, npm = rng.permutation(members), rng.permutation(nonmembers)
    mh, nh = members.size // 2, nonmembers.size // 2
    sel_m, sel_n, ev_m, ev_n = mp[:mh], npm[:nh], mp[mh:], npm[nh:]
    cand = np.unique(np.concatenate([sel_m, sel_n])) if thresholds is None else np.asarray(thresholds, float)
    t, _ = _best_threshold(sel_m, sel_n, cand, delta=delta, confidence=confidence)
    tp, fp = int(np.sum(ev_m >= t)), int(np.sum(ev_n >= t))
    b = epsilon_lower_bound(tp, ev_m.size, fp, ev_n.size, delta=delta, confidence=confidence)
    return ScoreBound(bound=b, threshold=t, selection=selection, candidates=int(cand.size), confidence=confidence)


@dataclass(frozen=True)
class OneRunScoreAudit(_FromBound):
    """One-run lower bound with the guess count chosen without optimism.

    ``bound`` is the reported result; ``guesses_positive`` / ``guesses_negative`` the numbers of top- and
    bottom-scored canaries guessed as members / non-members. ``selection`` is ``"bonferroni"`` (every tried
    (k+, k-) pair tested at 1 - (1 - confidence) / tries) or ``"split"`` (the pair chosen on a random half of the
    canaries, the bound from the other half, with m = that half's size).
    """

    bound: OneRunBound
    guesses_positive: int
    guesses_negative: int
    selection: str
    tries: int
    confidence: float



#: Default guess counts tried by :func:`one_run_from_scores`, as fractions of the canaries guessed as members
#: (top scores), each tried as members only and with as many non-member guesses (bottom scores).
DEFAULT_GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)


def _guess_pairs(m: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for f in fractions:
        f = check_probability("guess_fractions", f, open_high=False,
                              fix="pass fractions of the canaries in (0, 1], e.g. 0.05,0.1")
        k = max(1, round(f * m))
        for kn in (0, min(k, m - k)):
            if k + kn <= m and (k, kn) not in pairs:
                pairs.append((k, kn))
    return pairs


def _one_run_counts(scores: np.ndarray, members: np.ndarray, kp: int, kn: int) -> tuple[int, int]:
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:kp], order[scores.size - kn:] if kn else order[:0]
    correct = int(np.sum(members[top])) + int(np.sum(~members[bottom]))
    return kp + kn, correct


def one_run_from_scores(scores: Any, is_member: Any, *, delta: float = DEFAULT_DELTA, confidence: float = 0.95,
                        selection: Selection = "bonferroni",
                        guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
                        seed: int = 0) -> OneRunScoreAudit:
    """One-run audit from per-canary scores (higher = more likely a member) and the coin flips.

    The attacker guesses 'member' on the k+ highest scores and 'non-member' on the k- lowest, abstaining on the
    rest; several (k+, k-) pairs are tried (from ``guess_fractions``) and the choice is paid for by ``selection``.
    """
    s = _as_scores("scores", scores)
    mem = np.asarray(is_member, dtype=bool).ravel()
    if mem.shape != s.shape:
        raise invalid("is_member", f"{mem.size} flags", f"one flag per score ({s.size})")
    selection = _check_selection(selection)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    if selection == "bonferroni":
        pairs = _guess_pairs(s.size, guess_fractions)
        level = 1.0 - (1.0 - confidence) / len(pairs)
        best: tuple[OneRunBound, int, int] | None = None
        for kp, kn in pairs:
            r, v = _one_run_counts(s, mem, kp, kn)
            b = one_run_epsilon_lower_bound(s.size, r, v, delta=delta, confidence=level)
            if best is None or b.epsilon_lower_bound > best[0].epsilon_lower_bound:
                best = (b, kp, kn)
        assert best is not None  # pairs is non-empty (internal invariant)
        return OneRunScoreAudit(bound=best[0], guesses_positive=best[1], guesses_negative=best[2],
                                selection=selection, tries=len(pairs), confidence=confidence)
    if s.size < 4:
        raise invalid("scores", f"{s.size} canaries", "at least 4 canaries for selection='split'")
    perm = np.random.default_rng(seed).permutation(s.size)
    a, b_idx = perm[: s.size // 2], perm[s.size // 2:]
    pairs_a = _guess_pairs(a.size, guess_fractions)
    best_eps, chosen = -1.0, pairs_a[0]
    for kp, kn in pairs_a:
        r, v = _one_run_counts(s[a], mem[a], kp, kn)
        eps = one_run_epsilon_lower_bound(a.size, r, v, delta=delta, confidence=confidence).epsilon_lower_bound
        if eps > best_eps:
            best_eps, chosen = eps, (kp, kn)
    # The chosen pair carries over to the evaluation half as fractions of its canaries.
    kp = max(1, round(chosen[0] / a.size * b_idx.size))
    kn = min(round(chosen[1] / a.size * b_idx.size), b_idx.size - kp)
    r, v = _one_run_counts(s[b_idx], mem[b_idx], kp, kn)
    # Conditional on the selection half's coin flips, the run is still (eps, delta)-DP in the evaluation
    # half's flips, so Theorem 3 applies with m = the evaluation half's size.
    bound = one_run_epsilon_lower_bound(b_idx.size, r, v, delta=delta, confidence=confidence)
    return OneRunScoreAudit(bound=bound, guesses_positive=kp, guesses_negative=kn, selection=selection,
                            tries=len(pairs_a), confidence=confidence)


# ----------------------------------------------------------------------------------------------------------
# words for the report
# ----------------------------------------------------------------------------------------------------------

def low_epsilon_caveat(epsilon_lower_bound: float | None, accountant_epsilon: float | None, canaries: int | None,
                       ceiling: float | None, confidence: float = 0.95) -> str:
    """Plain-text paragraph: why a low empirical epsilon does not prove privacy, with the canaries' ceiling.

    Any argument may be None (no audit was run, or the run was not private); the sentence adapts.
    """
    conf = f"{100 * confidence:g}%"
    parts = []
    if epsilon_lower_bound is not None:
        parts.append(f"The canary audit shows, with {conf} confidence, that epsilon is at least "
                     f"{lower(epsilon_lower_bound)} (an empirical lower bound).")
    parts.append("An empirical epsilon is a lower bound for this attack, these canaries and this model; a low "
                 "value does not prove that the model is private: a stronger attack, more vulnerable records or "
                 "more canaries can reveal more.")
    if canaries is not None and ceiling is not None:
        parts.append(f"With {canaries} canaries this audit cannot certify an epsilon above {ceiling:.2f} at "
                     f"{conf} confidence, whatever the model leaks.")
        if epsilon_lower_bound is not None and epsilon_lower_bound >= 0.9 * ceiling:
            parts.append("The lower bound is at that ceiling: more canaries are needed to see how much leaks.")
    if accountant_epsilon is not None and math.isfinite(accountant_epsilon):
        if epsilon_lower_bound is not None and epsilon_lower_bound > accountant_epsilon:
            parts.append(f"The lower bound exceeds the accountant's epsilon ({upper(accountant_epsilon)}): the "
                         "training does not meet its stated guarantee, or its accounting is wrong.")
        else:
            parts.append(f"Only the accountant's epsilon ({upper(accountant_epsilon)}, a sound upper bound) is a "
                         "guarantee.")
    else:
        parts.append("Without DP accounting there is no upper bound on the leakage.")
    return " ".join(parts)
