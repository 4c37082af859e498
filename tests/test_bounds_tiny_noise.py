"""Tiny noise / huge epsilon (the seed paper's epsilon = 1e9, sigma ~ 0.02): sound, finite, bounded work, no warnings.

References: closed forms stated at each test (the probability that the target is never sampled, (1 - q)^T), the
RDP accountant (itself tested against Opacus in ``test_bounds_epsilon.py``), and the properties every sound bound
has (gamma >= kappa, monotone in sigma, calibrated noise never overshoots). Values snapshotted from our own output
are named regression values.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from dpaudit.bounds import epsilon_pld, epsilon_rdp, mia_curve, noise_for_epsilon, rero_bound
from dpaudit.bounds import pld as pld_module
from dpaudit.bounds.pld import LOSS_CAP, WindowTooLargeError

#: Work bound of the regression calls: PLD compositions (FFT convolutions) per call. Measured 2-15 with the
#: caches cleared; the bound catches a search or refinement that runs away, without timing anything (a busy
#: machine must not fail the suite). Speed itself is measured in bench/bench_bounds.py.
MAX_COMPOSITIONS = 30


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """No RuntimeWarning (overflow, invalid value) may leak to users."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _bounded(func, *args, **kwargs):
    """Call ``func`` with a cold cache and bound its work: at most MAX_COMPOSITIONS compositions, each within
    the FFT window limit (counted, never timed)."""
    sizes: list[int] = []
    original = pld_module.compose_parts

    def counting(parts, **kwargs):
        out = original(parts, **kwargs)
        sizes.append(out.masses.size)
        return out

    pld_module.clear_caches()
    pld_module.compose_parts = counting
    try:
        value = func(*args, **kwargs)
    finally:
        pld_module.compose_parts = original
    assert len(sizes) <= MAX_COMPOSITIONS, f"{func.__name__}{args} composed {len(sizes)} PLDs"
    assert max(sizes, default=0) <= pld_module.MAX_WINDOW
    return value


# -- the calls that used to raise OverflowError ------------------------------------------------------------------

@pytest.mark.parametrize(("q", "steps", "delta"), [(1 / 1000, 10000, 1e-5), (128 / 1500, 48, 8e-7),
                                                   (1 / 1500, 4 * 1500, 8e-7)])
def test_noise_for_epsilon_1e9_is_safe(q: float, steps: int, delta: float) -> None:
    sigma = _bounded(noise_for_epsilon, 1e9, q, steps, delta)
    assert 1e-3 <= sigma < 0.05
    assert epsilon_pld(sigma, q, steps, delta) <= 1e9  # training's post-hoc check
    assert sigma <= noise_for_epsilon(1e9, q, steps, delta, accountant="rdp") * (1 + 2e-3)  # min(PLD, RDP)


def test_epsilon_pld_tiny_sigma_is_the_rdp_bound() -> None:
    # sigma 0.02, q 1e-3, T 1e4: the PLD with the loss cap is infinite at delta 1e-5 (P(target sampled at least once
    # with loss > 700) ~ 1), so the sound value is the RDP one, 1.299e7 (Opacus' orders; regression value).
    eps = _bounded(epsilon_pld, 0.02, 0.001, 10000, 1e-5)
    assert eps == pytest.approx(epsilon_rdp(0.02, 0.001, 10000, 1e-5), rel=1e-12)
    assert eps == pytest.approx(1.2990258697569542e7, rel=1e-9)


@pytest.mark.parametrize("threat_model", ["worst_case", "relaxed"])
def test_rero_tiny_sigma_is_sound_and_near_one(threat_model: str) -> None:
    # Closed-form lower bound on the exact gamma: if the target is sampled at least once (probability
    # 1 - (1 - q)^T) its gradient stands 50 noise standard deviations out, so the attack succeeds; gamma >= that.
    q, steps = 0.001, 10000
    floor = 1 - (1 - q) ** steps
    res = _bounded(rero_bound, 0.02, q, steps, 1e-3, threat_model=threat_model)
    assert floor - 1e-9 <= res.gamma[0] <= 1.0
    assert res.label == "sound upper bound"
    assert np.all(res.lower <= res.gamma)


def test_mia_tiny_sigma() -> None:
    q, steps = 0.001, 10000
    curve = _bounded(mia_curve, 0.02, q, steps)
    # advantage = total variation >= P(target sampled at least once) for a loss this large (closed form above)
    assert 1 - (1 - q) ** steps - 1e-9 <= curve.advantage <= 1.0
    assert np.all(curve.tpr >= curve.fpr) and np.all(curve.tpr <= 1.0)


def test_cli_bounds_tiny_sigma() -> None:
    from dpaudit.cli.main import app

    result = CliRunner().invoke(app, ["bounds", "--sigma", "0.02", "--q", "0.001", "--steps", "10000",
                                      "--n-train", "1000", "--json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.stdout)
    assert math.isfinite(data["epsilon"]) and data["epsilon"] == pytest.approx(data["epsilon_rdp"])
    assert data["labels"]["epsilon"].startswith("sound upper bound (RDP), per image")
    assert data["rero"][0]["worst_case"] > 0.9999


@pytest.mark.slow
def test_window_too_large_falls_back_soundly() -> None:
    # sigma 0.05, q 0.1, T 1e5: the composed loss spans ~5e5 nats; the grid is coarsened until it fits (sound), and
    # gamma is ~1 (the target is sampled ~1e4 times at 20 noise std each).
    res = rero_bound(0.05, 0.1, 100_000, 1e-3)
    assert res.gamma[0] >= 1 - 1e-9
    assert issubclass(WindowTooLargeError, Exception)


# -- monotonicity across the whole sigma range -----------------------------------------------------------------

SIGMAS = (1e-3, 3e-3, 0.01, 0.02, 0.03, 0.035, 0.04, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0, 2.0)


@pytest.mark.parametrize("threat_model", ["worst_case", "relaxed"])
def test_gamma_non_increasing_in_sigma(threat_model: str) -> None:
    q, steps, kappa = 0.01, 1000, 1e-3
    gammas = [rero_bound(s, q, steps, kappa, threat_model=threat_model).gamma[0] for s in SIGMAS]
    for a, b in itertools.pairwise(gammas):
        assert b <= a * (1 + 1e-9)  # non-increasing (within round-off)
    assert gammas[0] <= 1.0 and gammas[-1] >= kappa


def test_epsilon_non_increasing_in_sigma() -> None:
    q, steps, delta = 0.01, 1000, 1e-5
    eps = [epsilon_pld(s, q, steps, delta) for s in SIGMAS]
    assert all(math.isfinite(e) for e in eps)
    for a, b in itertools.pairwise(eps):
        assert b <= a * (1 + 1e-9)


def test_loss_cap_below_float_overflow() -> None:
    assert LOSS_CAP < math.log(np.finfo(float).max)


# -- consistency: training's post-hoc epsilon never exceeds the calibration target ---------------------------------

@pytest.mark.parametrize("target", [0.5, 8.0, 1e3, 1e6, 1e9])
@pytest.mark.parametrize(("n", "epochs"), [(1000, 4), (10000, 1)])
def test_epsilon_of_calibrated_sigma_meets_target(target: float, n: int, epochs: int) -> None:
    q, steps, delta = 1 / n, epochs * n, 1e-5
    sigma = noise_for_epsilon(target, q, steps, delta)
    assert epsilon_pld(sigma, q, steps, delta) <= target


@pytest.mark.parametrize("target", [1e3, 1e9])
def test_epsilon_of_calibrated_sigma_meets_target_large_batch(target: float) -> None:
    q, steps, delta = 128 / 1500, 48, 8e-7
    sigma = noise_for_epsilon(target, q, steps, delta)
    assert epsilon_pld(sigma, q, steps, delta) <= target


# ---------------------------------------------------------------------------------------------------------
# Grid steps past e^709 and Chernoff ends at infinity (a reviewer's inputs)
# ---------------------------------------------------------------------------------------------------------

def test_a_coarse_start_never_yields_the_blind_guess_as_a_bound() -> None:
    # Past 709.8 nats the connect-the-dots split overflows e^h; the mass used to vanish (gamma = kappa, bracket 0,
    # "converged"). Any start is now capped at MAX_GRID_STEP and a lost mass goes to +infinity.
    import numpy as np

    from dpaudit.bounds import mia_curve
    from dpaudit.bounds.pld import _step_pld
    from dpaudit.bounds.rero import tight_gamma
    from dpaudit.bounds.schedule import resolve

    kappa = np.array([1e-5, 1e-3, 0.1])
    run = resolve(1.0, 0.01, 100, None).run(1, "worst_case")
    ref = tight_gamma(run, None, kappa)
    for start in (500.0, 710.0, 1e4, 1e9):
        got = tight_gamma(run, None, kappa, start=start)
        assert np.all(got.value >= ref.lower) and np.all(got.lower <= ref.value), (start, got.value, ref.value)
    coarse, own = mia_curve(1.0, 0.01, 100, grid_step=1e9), mia_curve(1.0, 0.01, 100)
    assert np.all(coarse.tpr >= own.tpr_lower - 1e-12) and np.all(coarse.tpr > coarse.fpr)  # TPR = FPR was the old answer
    pair = run[0][0]
    for h in (710.0, 1e4):
        step = _step_pld(pair, h, "remove", 1e-12)
        assert step.masses.sum() + step.infinity_mass >= 1 - 1e-9


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_grid_step_must_be_a_finite_positive_step(bad: float) -> None:
    from dpaudit.bounds import mia_curve
    from dpaudit.errors import ConfigError

    with pytest.raises(ConfigError, match="grid_step"):
        mia_curve(1.0, 0.01, 100, grid_step=bad)


def test_smallest_noise_with_long_runs_is_a_bound_not_a_traceback() -> None:
    # sigma at the allowed floor, tiny q, long T: the Chernoff search's end was -inf and compose_parts raised
    # OverflowError (floor of -inf); the window now reaches the support's end there.
    from dpaudit.bounds import rero_bound

    res = rero_bound(1e-4, 1e-4, 40000, kappa=[1e-6, 0.1])
    assert all(0 <= g <= 1 for g in res.gamma)
