"""Sound epsilon lower bounds from counts (`dpaudit.attacks.lower_bounds`, `dpaudit mia bound|one-run`).

References are independent of the code under test: closed forms, mpmath binomial sums with a root finder or a
grid search, exact coverage sums over the binomial law, Monte Carlo.
"""

from __future__ import annotations

import itertools
import json
import math

import mpmath as mp
import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from dpaudit.attacks.lower_bounds import (
    bound_from_scores,
    clopper_pearson,
    epsilon_lower_bound,
    one_run_ceiling,
    one_run_epsilon_lower_bound,
    one_run_from_scores,
    one_run_p_value,
    two_error_ceiling,
)
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError

runner = CliRunner()
mp.mp.dps = 40


# ---------------------------------------------------------------------------------------------------------
# independent references (mpmath)
# ---------------------------------------------------------------------------------------------------------

def _mp_binom_sf(k: int, n: int, p: mp.mpf) -> mp.mpf:
    """P[Binomial(n, p) >= k], exact sum at 40 digits (the shorter of the two sums)."""
    if k > n // 2:
        return mp.fsum(mp.binomial(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
    return 1 - mp.fsum(mp.binomial(n, j) * p**j * (1 - p) ** (n - j) for j in range(k))


def _mp_cp_low(k: int, n: int, a: float) -> float:
    """Clopper-Pearson lower limit from its definition: P[Bin(n, p) >= k] = a, by bisection in mpmath."""
    if k == 0:
        return 0.0
    lo, hi = mp.mpf(0), mp.mpf(1)
    for _ in range(90):  # 2^-90: far below the 1e-9 tolerance
        mid = (lo + hi) / 2
        if _mp_binom_sf(k, n, mid) < a:
            lo = mid
        else:
            hi = mid
    return float(lo)


def _mp_one_run_p(m: int, r: int, v: int, eps: float, delta: float) -> mp.mpf:
    """Theorem 3 of arXiv 2305.08846v1 written out term by term in mpmath (no cumulative sums)."""
    q = mp.e**eps / (1 + mp.e**eps)
    pmf = [mp.binomial(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    tail = mp.fsum(pmf[v:])
    alpha = max((mp.fsum(pmf[v - i: v]) / i for i in range(1, v + 1)), default=mp.mpf(0))
    return min(mp.mpf(1), tail + 2 * m * delta * alpha)


def _vector_bound(tp: np.ndarray, p: int, fp: np.ndarray, n: int, conf: float) -> np.ndarray:
    """The two-error-pair bound (delta = 0) for arrays of counts, written directly with scipy's beta quantiles."""
    level = 1 - (1 - conf) / 2
    low = np.where(tp == 0, 0.0, stats.beta.ppf(1 - level, np.maximum(tp, 1), p - tp + 1))
    high = np.where(fp == n, 1.0, stats.beta.isf(1 - level, fp + 1, np.maximum(n - fp, 1)))
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(low) - np.log(high), np.log(1 - high) - np.log(1 - low))


# ---------------------------------------------------------------------------------------------------------
# Clopper-Pearson and the two-error-pair bound
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "n", "level"), [(0, 10, 0.975), (3, 10, 0.975), (10, 10, 0.9), (57, 200, 0.995),
                                               (1, 1000, 0.975)])
def test_clopper_pearson_matches_its_definition(k: int, n: int, level: float) -> None:
    low, high = clopper_pearson(k, n, level=level)
    # upper limit for k successes = 1 - lower limit for n - k successes (symmetry of the binomial)
    assert low == pytest.approx(_mp_cp_low(k, n, 1 - level), rel=1e-9, abs=1e-15)
    assert high == pytest.approx(1 - _mp_cp_low(n - k, n, 1 - level), rel=1e-9, abs=1e-15)


def test_perfect_attack_closed_form() -> None:
    # TP = P, FP = 0: TPR_low = a^(1/P), FPR_high = 1 - a^(1/N) with a = (1 - confidence) / 2 (closed form of
    # the Clopper-Pearson limits at the ends), eps = log((TPR_low - delta) / FPR_high).
    p, n, delta, conf = 500, 800, 1e-5, 0.95
    a = (1 - conf) / 2
    expected = math.log((a ** (1 / p) - delta) / (1 - a ** (1 / n)))
    res = epsilon_lower_bound(p, p, 0, n, delta=delta, confidence=conf)
    assert res.epsilon_lower_bound == pytest.approx(expected, rel=1e-10)
    assert two_error_ceiling(p, n, delta=delta, confidence=conf) == pytest.approx(expected, rel=1e-10)


def test_two_error_bound_reference_values() -> None:
    # Both error pairs, by hand from the mpmath Clopper-Pearson limits.
    tp, p, fp, n, delta = 300, 400, 20, 500, 1e-3
    a = 0.025
    tpr_low = _mp_cp_low(tp, p, a)
    fpr_high = 1 - _mp_cp_low(n - fp, n, a)
    e1 = math.log((tpr_low - delta) / fpr_high)
    e2 = math.log((1 - fpr_high - delta) / (1 - tpr_low))
    res = epsilon_lower_bound(tp, p, fp, n, delta=delta)
    assert res.epsilon_from_tpr_fpr == pytest.approx(e1, rel=1e-8)
    assert res.epsilon_from_tnr_fnr == pytest.approx(e2, rel=1e-8)
    assert res.epsilon_lower_bound == pytest.approx(max(e1, e2), rel=1e-8)


def test_uninformative_counts_give_zero() -> None:
    assert epsilon_lower_bound(50, 100, 50, 100).epsilon_lower_bound == 0.0
    assert epsilon_lower_bound(0, 100, 100, 100).epsilon_lower_bound == 0.0
    # delta larger than any TPR: the first form is -inf, clamped
    res = epsilon_lower_bound(1, 100, 0, 100, delta=0.5)
    assert res.epsilon_from_tpr_fpr == -math.inf
    assert res.epsilon_lower_bound >= 0.0


def test_two_error_bound_monotone() -> None:
    base = epsilon_lower_bound(90, 100, 10, 100, delta=1e-5).epsilon_lower_bound
    assert epsilon_lower_bound(95, 100, 10, 100, delta=1e-5).epsilon_lower_bound > base
    assert epsilon_lower_bound(90, 100, 5, 100, delta=1e-5).epsilon_lower_bound > base
    assert epsilon_lower_bound(90, 100, 10, 100, delta=1e-2).epsilon_lower_bound < base
    assert epsilon_lower_bound(90, 100, 10, 100, delta=1e-5, confidence=0.99).epsilon_lower_bound < base
    assert epsilon_lower_bound(900, 1000, 100, 1000, delta=1e-5).epsilon_lower_bound > base


def test_two_error_exact_coverage_randomised_response() -> None:
    # Randomised response with eps: a test with TPR = e^eps/(1+e^eps) and FPR = 1/(1+e^eps) meets
    # TPR = e^eps FPR exactly (delta = 0). Exact probability (sum over the binomial grid) that the bound
    # exceeds eps must be <= 1 - confidence.
    eps, p, n, conf = 1.5, 120, 150, 0.9
    tpr, fpr = 1 / (1 + math.exp(-eps)), 1 / (1 + math.exp(eps))
    tp = np.arange(p + 1)
    fp = np.arange(n + 1)
    lb = _vector_bound(tp[:, None], p, fp[None, :], n, conf)
    exceed = lb > eps
    prob = float(np.sum(stats.binom.pmf(tp, p, tpr)[:, None] * stats.binom.pmf(fp, n, fpr)[None, :] * exceed))
    assert prob <= 1 - conf
    # spot-check the vectorised grid against the function under test
    for a, b in [(100, 20), (110, 10), (p, 0)]:
        ours = epsilon_lower_bound(a, p, b, n, delta=0.0, confidence=conf).epsilon_lower_bound
        assert max(lb[a, b], 0.0) == pytest.approx(ours, rel=1e-9)


def test_two_error_coverage_by_simulation_gaussian(rng: np.random.Generator) -> None:
    # Gaussian mechanism with mu = 2 and a fixed threshold: simulated counts; the true eps at delta comes from
    # the analytic Gaussian curve (Balle and Wang 2018, Theorem 8): delta(eps) = Phi(-eps/mu + mu/2)
    # - e^eps Phi(-eps/mu - mu/2). With the threshold at mu the test is not optimal, so use the test's own
    # privacy: eps_test = log(TPR / FPR) at delta 0 is the sharpest any count-based bound can approach.
    mu, t, trials, reps = 2.0, 3.0, 400, 2000
    tpr, fpr = stats.norm.sf(t - mu), stats.norm.sf(t)
    eps_test = math.log(tpr / fpr)  # the largest eps this test's counts can reveal, in expectation
    tps = rng.binomial(trials, tpr, size=reps)
    fps = rng.binomial(trials, fpr, size=reps)
    exceed = sum(epsilon_lower_bound(int(a), trials, int(b), trials, delta=0.0).epsilon_lower_bound > eps_test
                 for a, b in zip(tps, fps, strict=True))
    # binomial(2000, 0.05) exceeds 0.05 * 2000 + 4 sd (~ 139) with probability < 1e-4
    assert exceed <= 139


# ---------------------------------------------------------------------------------------------------------
# one run (Steinke, Nasr, Jagielski 2023)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("r", "conf"), [(1, 0.5), (10, 0.95), (100, 0.95), (1000, 0.99)])
def test_one_run_all_correct_closed_form(r: int, conf: float) -> None:
    # delta = 0, v = r: q^r = beta, so eps = logit(beta^(1/r)) (Theorem 3 with delta = 0: P[Bin(r,q) >= r] = q^r).
    beta = 1 - conf
    q = beta ** (1 / r)
    expected = math.log(q / (1 - q))
    res = one_run_epsilon_lower_bound(r, r, r, delta=0.0, confidence=conf)
    assert res.epsilon_lower_bound == pytest.approx(expected, abs=2e-7)
    assert res.epsilon_lower_bound <= expected + 1e-12  # rounded down, never up
    assert res.ceiling == pytest.approx(expected, abs=2e-7)
    assert one_run_ceiling(r, delta=0.0, confidence=conf) == res.epsilon_lower_bound


@pytest.mark.parametrize(("m", "r", "v", "delta"), [(100, 100, 80, 1e-5), (200, 60, 50, 1e-3),
                                                    (50, 50, 50, 1e-2), (300, 40, 39, 1e-4)])
def test_one_run_matches_mpmath_grid(m: int, r: int, v: int, delta: float) -> None:
    # Independent route: the theorem's formula term by term in mpmath; the bound must have p <= beta and a
    # point 1e-5 above it must have p > beta (largest such eps; the p-value is increasing here, checked on a grid).
    beta = 0.05
    res = one_run_epsilon_lower_bound(m, r, v, delta=delta, confidence=1 - beta)
    eps = res.epsilon_lower_bound
    assert eps > 0
    assert _mp_one_run_p(m, r, v, eps, delta) <= beta
    assert _mp_one_run_p(m, r, v, eps + 1e-5, delta) > beta
    grid = np.linspace(0, eps + 1, 40)
    ps = [float(_mp_one_run_p(m, r, v, float(e), delta)) for e in grid]
    assert all(b >= a - 1e-15 for a, b in itertools.pairwise(ps))
    assert one_run_p_value(m, r, v, epsilon=eps, delta=delta) == pytest.approx(float(_mp_one_run_p(m, r, v, eps, delta)),
                                                                             rel=1e-8)


def test_one_run_monotone() -> None:
    base = one_run_epsilon_lower_bound(500, 100, 85, delta=1e-5).epsilon_lower_bound
    assert one_run_epsilon_lower_bound(500, 100, 90, delta=1e-5).epsilon_lower_bound > base
    assert one_run_epsilon_lower_bound(500, 100, 85, delta=1e-3).epsilon_lower_bound < base
    assert one_run_epsilon_lower_bound(5000, 100, 85, delta=1e-5).epsilon_lower_bound < base  # 2 m delta grows
    assert one_run_epsilon_lower_bound(500, 100, 85, delta=1e-5, confidence=0.99).epsilon_lower_bound < base
    assert one_run_epsilon_lower_bound(500, 100, 50, delta=1e-5).epsilon_lower_bound == 0.0
    assert one_run_epsilon_lower_bound(500, 0, 0).epsilon_lower_bound == 0.0
    assert one_run_ceiling(1000, delta=1e-5) > one_run_ceiling(100, delta=1e-5)


def test_one_run_exact_coverage_randomised_response() -> None:
    # eps-DP randomised response on each canary bit is the worst case of Theorem 3: the attacker guessing all m
    # canaries is right on each independently with probability q = e^eps/(1+e^eps). Exact probability that the
    # bound exceeds eps: sum of Binomial(m, q) over the v whose bound exceeds eps (bound is monotone in v).
    m, eps, conf = 200, 1.0, 0.95
    q = 1 / (1 + math.exp(-eps))
    v = np.arange(m + 1)
    # smallest v whose bound exceeds eps, found by bisection over v with the function under test
    lo, hi = 0, m
    while lo < hi:
        mid = (lo + hi) // 2
        if one_run_epsilon_lower_bound(m, m, mid, confidence=conf).epsilon_lower_bound > eps:
            hi = mid
        else:
            lo = mid + 1
    prob = float(stats.binom.sf(lo - 1, m, q))
    assert prob <= 1 - conf
    assert prob > 0.5 * (1 - conf)  # and the test is not wildly conservative in the worst case
    del v


def test_one_run_coverage_by_simulation(rng: np.random.Generator) -> None:
    # The whole audit pipeline (scores, guesses on the top/bottom scores, Bonferroni over the guess counts) on a
    # simulated eps-DP mechanism: randomised response on each canary's coin flip (Warner 1965; eps-DP with
    # flip probability 1/(1+e^eps)). The bound may exceed the true eps in at most 5% of runs.
    m, eps, reps = 300, 1.0, 120
    exceed = 0
    for _ in range(reps):
        member = rng.random(m) < 0.5
        keep = rng.random(m) < 1 / (1 + math.exp(-eps))
        scores = np.where(keep, member, ~member).astype(float) + 1e-3 * rng.random(m)  # random tie-break
        exceed += one_run_from_scores(scores, member).epsilon_lower_bound > eps
    # binomial(120, 0.05): mean 6, sd 2.4; exceeding 6 + 4 sd = 15.5 has probability < 1e-4
    assert exceed <= 15


def test_selection_matters_naive_best_threshold_is_optimistic(rng: np.random.Generator) -> None:
    # Laplace mechanism with eps = 1 (scores Laplace(1, 1) for members, Laplace(0, 1) for non-members): every
    # threshold t >= 1 has TPR / FPR = e^eps exactly, so the count bound is tight in the tail and picking the
    # best threshold on the same trials exceeds the true eps far more often than 1 - confidence (measured
    # ~35% at confidence 0.8). Choosing it on a held-out half (selection="split") stays below 20%.
    eps, trials, reps, conf = 1.0, 200, 200, 0.8
    naive = split = 0
    for _ in range(reps):
        mem, non = rng.laplace(1.0, 1.0 / eps, size=trials), rng.laplace(0.0, 1.0 / eps, size=trials)
        t = np.unique(np.concatenate([mem, non]))
        tp = trials - np.searchsorted(np.sort(mem), t)
        fp = trials - np.searchsorted(np.sort(non), t)
        naive += np.max(_vector_bound(tp, trials, fp, trials, conf)) > eps
        split += bound_from_scores(mem, non, confidence=conf, seed=int(rng.integers(2**31))).epsilon_lower_bound > eps
    sd = math.sqrt(reps * 0.2 * 0.8)
    assert naive > 0.2 * reps + 1 * sd  # optimistic: the nominal 20% is clearly exceeded
    assert split <= 0.2 * reps + 4 * sd


def test_split_coverage_laplace(rng: np.random.Generator) -> None:
    eps, trials, reps = 1.0, 400, 200
    exceed = sum(bound_from_scores(rng.laplace(1.0, 1.0, size=trials), rng.laplace(0.0, 1.0, size=trials),
                                   seed=int(rng.integers(2**31))).epsilon_lower_bound > eps for _ in range(reps))
    assert exceed <= 0.05 * reps + 4 * math.sqrt(reps * 0.05 * 0.95)


def test_bonferroni_thresholds() -> None:
    mem = np.linspace(1, 3, 500)
    non = np.linspace(-1, 1.5, 500)
    one = bound_from_scores(mem, non, selection="bonferroni", thresholds=[1.5])
    many = bound_from_scores(mem, non, selection="bonferroni", thresholds=[1.5, 1.0, 2.0, 0.0])
    # same best threshold, tested at a stricter level: the corrected bound is smaller
    assert one.threshold == 1.5
    single = epsilon_lower_bound(int(np.sum(mem >= 1.5)), 500, int(np.sum(non >= 1.5)), 500)
    assert one.epsilon_lower_bound == pytest.approx(single.epsilon_lower_bound, rel=1e-12)
    # four tries: each at confidence 1 - 0.05 / 4, the largest reported
    expected = max(epsilon_lower_bound(int(np.sum(mem >= t)), 500, int(np.sum(non >= t)), 500,
                                       confidence=1 - 0.05 / 4).epsilon_lower_bound for t in [1.5, 1.0, 2.0, 0.0])
    assert many.epsilon_lower_bound == pytest.approx(expected, rel=1e-12)
    assert many.bound.confidence == pytest.approx(1 - 0.05 / 4)
    with pytest.raises(ConfigError, match="thresholds"):
        bound_from_scores(mem, non, selection="bonferroni")


def test_one_run_from_scores_split_and_bonferroni() -> None:
    m = 400
    member = np.arange(m) % 2 == 0
    scores = member.astype(float) + np.linspace(0, 0.5, m)  # perfectly separable
    res = one_run_from_scores(scores, member, selection="bonferroni", delta=1e-5)
    assert res.bound.correct == res.bound.guesses  # at most 200 member guesses, all right
    assert res.bound.canaries == m and res.tries == 10
    assert 0 < res.epsilon_lower_bound <= res.bound.ceiling
    res = one_run_from_scores(scores, member, selection="split", delta=1e-5)
    assert res.bound.canaries == m // 2  # the bound comes from the evaluation half only
    assert 0 < res.epsilon_lower_bound <= res.bound.ceiling
    with pytest.raises(ConfigError, match="is_member"):
        one_run_from_scores(scores, member[:-1])


# ---------------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"true_positives": 11, "positives": 10, "false_positives": 0, "negatives": 10}, "true_positives"),
    ({"true_positives": 1, "positives": 10, "false_positives": 11, "negatives": 10}, "false_positives"),
    ({"true_positives": -1, "positives": 10, "false_positives": 0, "negatives": 10}, "true_positives"),
    ({"true_positives": 0, "positives": 0, "false_positives": 0, "negatives": 10}, "positives"),
    ({"true_positives": 1, "positives": 10, "false_positives": 0, "negatives": 10, "confidence": 1.0}, "confidence"),
    ({"true_positives": 1, "positives": 10, "false_positives": 0, "negatives": 10, "confidence": 0.0}, "confidence"),
    ({"true_positives": 1, "positives": 10, "false_positives": 0, "negatives": 10, "delta": 1.0}, "delta"),
    ({"true_positives": 1.5, "positives": 10, "false_positives": 0, "negatives": 10}, "true_positives"),
])
def test_two_error_bad_inputs(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        epsilon_lower_bound(**kwargs)


@pytest.mark.parametrize(("args", "field"), [((10, 11, 5), "guesses"), ((10, 5, 6), "correct"),
                                             ((0, 0, 0), "canaries"), ((10, 5, -1), "correct")])
def test_one_run_bad_inputs(args: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        one_run_epsilon_lower_bound(*args)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def test_cli_bound_json_matches_library() -> None:
    res = runner.invoke(app, ["mia", "bound", "--true-positives", "300", "--positives", "400",
                              "--false-positives", "20", "--negatives", "500", "--delta", "1e-3", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    ref = epsilon_lower_bound(300, 400, 20, 500, delta=1e-3)
    assert d["epsilon_lower_bound"] == pytest.approx(ref.epsilon_lower_bound, rel=1e-12)
    for key in ("tpr_low", "fpr_high", "tnr_low", "fnr_high", "ceiling", "labels", "confidence", "delta"):
        assert key in d
    # the membership audit's words (dpaudit.numfmt), at this bound's confidence
    assert d["labels"]["epsilon_lower_bound"] == "empirical: a lower bound at 95% confidence" and "label" not in d
    assert d["labels"]["ceiling"].startswith("sound upper bound") and d["labels"]["tpr_low, tnr_low"].startswith("empirical")


def test_cli_one_run_json_matches_mpmath() -> None:
    res = runner.invoke(app, ["mia", "one-run", "--canaries", "1000", "--guesses", "100", "--correct", "90",
                              "--delta", "1e-5", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    eps = d["epsilon_lower_bound"]
    assert _mp_one_run_p(1000, 100, 90, eps, 1e-5) <= 0.05 < _mp_one_run_p(1000, 100, 90, eps + 1e-5, 1e-5)
    assert d["ceiling"] >= eps


def test_cli_default_delta_is_the_api_default() -> None:
    # One default for both: `dpaudit mia bound`/`one-run` without --delta give the library's default result.
    import inspect

    from dpaudit.attacks.lower_bounds import DEFAULT_DELTA
    from dpaudit.config import DpSgdConfig

    for fn in (epsilon_lower_bound, one_run_epsilon_lower_bound):
        assert inspect.signature(fn).parameters["delta"].default == DEFAULT_DELTA
    assert DEFAULT_DELTA == DpSgdConfig(1.0, 0.01, 100).target_delta  # the delta the audited epsilon is at
    res = runner.invoke(app, ["mia", "bound", "--true-positives", "300", "--positives", "400",
                              "--false-positives", "20", "--negatives", "500", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    ref = epsilon_lower_bound(300, 400, 20, 500)
    assert d["delta"] == ref.delta
    assert d["epsilon_lower_bound"] == ref.epsilon_lower_bound
    res = runner.invoke(app, ["mia", "one-run", "--canaries", "1000", "--guesses", "100", "--correct", "90",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epsilon_lower_bound"] == one_run_epsilon_lower_bound(1000, 100, 90).epsilon_lower_bound


@pytest.mark.parametrize(("extra", "level"), [([], "95%"), (["--confidence", "0.999"], "99.9%")])
def test_cli_human_output_labels(extra: list[str], level: str) -> None:
    """Both commands say what their epsilon is with the membership audit's words at the confidence asked (they
    said 'empirical lower bound, confidence 0.95'), the same words as their JSON label."""
    for argv in (["mia", "bound", "--true-positives", "95", "--positives", "100", "--false-positives", "5",
                  "--negatives", "100", *extra],
                 ["mia", "one-run", "--canaries", "100", "--guesses", "20", "--correct", "19", *extra]):
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, res.output
        assert f"(empirical: a lower bound at {level} confidence, delta 1e-05" in res.stdout
        assert "ceiling" in res.stdout
        label = json.loads(runner.invoke(app, [*argv, "--json"]).stdout)["labels"]["epsilon_lower_bound"]
        assert label == f"empirical: a lower bound at {level} confidence"


def test_cli_text_rounds_each_bound_in_its_safe_direction() -> None:
    # The text shows a lower bound rounded down and a ceiling (an upper bound) rounded up, never to the nearest:
    # the shown epsilon >= x must still be true, and "at most" must not under-state.
    import re

    for argv in (["mia", "bound", "--true-positives", "300", "--positives", "400", "--false-positives", "20",
                  "--negatives", "500", "--delta", "1e-3"],
                 ["mia", "one-run", "--canaries", "1000", "--guesses", "100", "--correct", "90"]):
        d = json.loads(runner.invoke(app, [*argv, "--json"]).stdout)
        text = runner.invoke(app, argv).stdout
        shown_lower = float(re.search(r"epsilon >= ([0-9.e+-]+)", text).group(1))
        shown_ceiling = float(re.search(r"at most epsilon ([0-9.e+-]+)", text).group(1))
        assert shown_lower <= d["epsilon_lower_bound"] < shown_lower * (1 + 1e-3)
        assert d["ceiling"] <= shown_ceiling < d["ceiling"] * (1 + 1e-3) + 1e-12


@pytest.mark.parametrize("argv", [
    ["mia", "bound", "--true-positives", "11", "--positives", "10", "--false-positives", "0", "--negatives", "10"],
    ["mia", "bound", "--true-positives", "1", "--positives", "10", "--false-positives", "0", "--negatives", "10",
     "--confidence", "1.5"],
    ["mia", "bound", "--true-positives", "1", "--positives", "10", "--false-positives", "0", "--negatives", "10",
     "--confidence", "0"],
    ["mia", "one-run", "--canaries", "10", "--guesses", "11", "--correct", "5"],
    ["mia", "one-run", "--canaries", "10", "--guesses", "5", "--correct", "5", "--confidence", "-0.1"],
])
def test_cli_bad_inputs_exit_2(argv: list[str]) -> None:
    res = runner.invoke(app, argv)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "must be" in res.output


def test_results_written_with_the_former_label_field_still_read() -> None:
    from dpaudit.attacks.lower_bounds import OneRunBound
    from dpaudit.codec import encode, from_plain

    res = one_run_epsilon_lower_bound(1000, 100, 90)
    old = {k: v for k, v in encode(res).items() if k != "labels"} | {"label": "empirical lower bound"}
    assert from_plain(OneRunBound, old) == res
