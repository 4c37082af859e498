"""Patients with many records (large k): the pruned loss passes, the dominating RDP past the noise floor, and the
CLI's estimate and progress."""

from __future__ import annotations

import numpy as np
import pytest

import dpaudit.bounds._mechanism as mechanism
from dpaudit.bounds import epsilon_bound
from dpaudit.bounds._mechanism import StepPair
from dpaudit.bounds.pld import clear_caches


def _passes(pair: StepPair, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, ...]:
    return (pair.loss(x), *pair._loss_and_slope(x), pair.x_of_loss(eps))


@pytest.mark.parametrize("threat_model", ["relaxed", "worst_case"])
@pytest.mark.parametrize(("sigma", "q", "k"), [(1.0, 0.01, 63), (0.5, 1e-3, 200), (1.0, 0.01, 1000),
                                                (5.0, 0.3, 500), (0.3, 1.0, 100)])
def test_pruned_passes_equal_the_passes_over_every_component(threat_model, sigma, q, k, rng, monkeypatch) -> None:
    # Dropping the components whose terms are >= PRUNE_NATS below the largest (exp of them is exactly 0) gives the
    # same numbers bit for bit: sorted and unsorted points, a run of one and of two points, points so far out that
    # the terms overflow, and the inverse.
    lo = 0.0 if threat_model == "relaxed" else -40 * sigma
    pair = StepPair(sigma, q, k, threat_model)
    low = pair.min_loss if np.isfinite(pair.min_loss) else -30.0
    eps = low + np.sort(np.concatenate([rng.exponential(1e-3, 100), rng.uniform(0, 700, 200)]))
    for x in (np.sort(rng.uniform(lo, k + 40 * sigma, 2001)), rng.uniform(lo, k + 40 * sigma, 1000),
              rng.uniform(lo, k, 1), rng.uniform(lo, k, 2), rng.uniform(-k, 2 * k, 600),
              np.array([1e300, -1e300, 5.0, 2e300, 1e160])):  # terms past the float range: every component
        monkeypatch.setattr(mechanism, "PRUNE_MIN_COMPONENTS", 1 << 62)
        whole = _passes(StepPair(sigma, q, k, threat_model), x, eps)
        monkeypatch.setattr(mechanism, "PRUNE_MIN_COMPONENTS", 64)
        pruned = _passes(StepPair(sigma, q, k, threat_model), x, eps)
        for a, b in zip(whole, pruned, strict=True):
            assert a.shape == b.shape
            assert np.array_equal(a, b, equal_nan=True)


def test_pruning_keeps_few_components_where_the_binomial_is_narrow() -> None:
    # The point of it: at k 10000, q 0.01 a block of sorted points keeps a small share of the 10001 components.
    pair = StepPair(1.0, 0.01, 10_000)
    rows = pair._rows_for(np.linspace(50.0, 52.0, mechanism.PRUNE_BLOCK))
    assert rows is not None and rows.size < 2000


def test_epsilon_per_patient_is_the_same_number_pruned(monkeypatch) -> None:
    # The whole PLD route (refinement, both directions, the garbled lower end) on the pruned passes: the same
    # epsilon as over every component (k 100: 101 components, above PRUNE_MIN_COMPONENTS).
    clear_caches()
    monkeypatch.setattr(mechanism, "PRUNE_MIN_COMPONENTS", 1 << 62)
    whole = epsilon_bound(1.0, 0.01, 100, 1e-5, records_per_patient=100)
    clear_caches()
    monkeypatch.setattr(mechanism, "PRUNE_MIN_COMPONENTS", 64)
    pruned = epsilon_bound(1.0, 0.01, 100, 1e-5, records_per_patient=100)
    clear_caches()
    assert pruned == whole


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of the Gaussian mechanism N(mu, 1) vs N(0, 1) at delta (Balle and Wang, ICML 2018, arXiv
    1805.06530v2, Theorem 8: delta(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2)), by bisection in
    log space on the decreasing delta(eps); an independent reference for the dominating Gaussian."""
    from scipy import special

    def log_delta(eps: float) -> float:
        a = special.log_ndtr(-eps / mu + mu / 2)
        b = eps + special.log_ndtr(-eps / mu - mu / 2)
        return a + np.log1p(-np.exp(b - a)) if b < a else -np.inf

    lo, hi = 0.0, mu * mu
    while log_delta(hi) > np.log(delta):
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if log_delta(mid) > np.log(delta) else (lo, mid)
    return hi


@pytest.mark.parametrize(("sigma", "q", "k", "steps"), [(1.0, 0.01, 20_000, 10), (0.5, 1e-3, 6_000, 1000)])
def test_dominating_rdp_past_the_noise_floor_bounds_the_gaussian_of_sensitivity_k(sigma, q, k, steps) -> None:
    # sigma / k below the accountants' floor (1e-4) used to raise a ConfigError naming --sigma. The Gaussian
    # mechanism of sensitivity k (noise sigma, T steps: mu = k sqrt(T) / sigma) dominates the k-record run, and its
    # RDP epsilon is an upper bound on that mechanism's exact epsilon (Balle and Wang's closed form), within the
    # RDP conversion's looseness (a few percent at these mu).
    from dpaudit.bounds.pld import _epsilon_rdp_dominating
    from dpaudit.bounds.schedule import Schedule

    rdp = _epsilon_rdp_dominating(Schedule.single(sigma, q, steps), k, 1e-5)
    exact = _gaussian_epsilon(k * np.sqrt(steps) / sigma, 1e-5)
    assert exact <= rdp <= 1.1 * exact


def test_dominating_rdp_at_the_floor_is_the_dominating_schedule() -> None:
    # At or above the floor: the dominating schedule's RDP, as before (the same number).
    from dpaudit.bounds.pld import _epsilon_rdp_dominating, dominating_schedule
    from dpaudit.bounds.rdp import epsilon_rdp
    from dpaudit.bounds.schedule import Schedule

    sched = Schedule.single(1.0, 0.01, 100)
    assert _epsilon_rdp_dominating(sched, 10_000, 1e-5) == epsilon_rdp(
        target_delta=1e-5, schedule=dominating_schedule(sched, 10_000))


def test_slow_runs_say_so_before_starting_and_show_each_part(monkeypatch) -> None:
    # A run expected to take SLOW_SECONDS or more (here made so at k 3 by a large rate) says its estimate
    # on stderr before starting and, without a terminal, one line per part; --json's stdout stays one JSON object.
    import json

    from typer.testing import CliRunner

    import dpaudit.cli.bounds_cmd as bounds_cmd
    from dpaudit.cli.main import app

    args = ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "0.01",
            "--records-per-patient", "3", "--json"]
    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == 0, quiet.output
    assert "bounds:" not in quiet.stderr and "take a while" not in quiet.stderr
    monkeypatch.setattr(bounds_cmd, "SLOW_AT_1E5", 3e7)  # 3e7 * (3 / 1e5)^1.35: about 24 s at k 3
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(quiet.stdout)
    lines = res.stderr.splitlines()
    note = next(i for i, line in enumerate(lines) if "take a while, roughly 24 s" in line)
    parts = [line for line in lines if line.startswith("bounds: ")]
    assert parts[0] == "bounds: epsilon per record (1/6)" and parts[-1] == "bounds: relaxed ReRo (6/6)"
    assert "bounds: epsilon per patient (2/6)" in parts
    assert note < lines.index(parts[0])


def test_no_estimate_at_the_usual_k() -> None:
    from dpaudit.cli.bounds_cmd import _slow_note

    assert _slow_note(1) is None and _slow_note(10_000) is None
    assert "roughly 5 s" in _slow_note(100_000) and "roughly 112 s" in _slow_note(1_000_000)


def test_the_note_names_the_gaussian_mechanism_past_the_floor() -> None:
    from dpaudit.bounds import bounds_summary

    past = bounds_summary(1.0, 0.01, 10, [0.01], target_delta=1e-5, records_per_patient=20_000, membership=False)
    assert past.epsilon_of_unit.accountant == "rdp" and past.epsilon_of_unit.value < float("inf")
    assert any("sampling probability 1: sigma / 20000 is below 0.0001" in n for n in past.notes)
    above = bounds_summary(1.0, 0.01, 10, [0.01], target_delta=1e-5, records_per_patient=5_000, membership=False)
    assert any("sampling probability 1 - (1 - q)^5000)" in n for n in above.notes)


@pytest.mark.parametrize(("k", "accountant"), [(10, "PLD"), (3624, "RDP")])
def test_the_json_names_the_accountant_that_gave_epsilon_per_patient(k: int, accountant: str) -> None:
    """The per-patient epsilon's label in the JSON names the accountant whose value it is, as the console row does:
    at k 3624 (sigma 0.5, q 1e-3, T 100) the PLD's loss cap makes it looser than the RDP of a dominating mechanism."""
    import json

    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["bounds", "--sigma", "0.5", "--q", "0.001", "--steps", "100", "--kappa", "1e-3",
                                   "--records-per-patient", str(k), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["labels"]["epsilon_patient"].startswith(f"sound upper bound ({accountant}), per patient")
    # the JSON's notes say why, as the console's warnings do
    assert any(n.startswith("epsilon: the PLD is looser than RDP") for n in out["notes"]) == (accountant == "RDP")


def test_a_pld_that_cannot_be_formed_falls_back_to_the_dominating_rdp(monkeypatch) -> None:
    """Where the discretisation finds no pile boundary (losses ~1e19 nats at k / sigma ~1e10: sigma 1e-4, q 0.5,
    k 1e6 took 17 s to fail), epsilon per patient is the RDP of a dominating mechanism (sound), not an error."""
    import dpaudit.bounds.pld as pld

    def fail(*args, **kwargs):
        raise pld.PileBoundaryError("no pile boundary found (test)")

    monkeypatch.setattr(pld, "epsilon_pld_refined", fail)
    got = epsilon_bound(1.0, 0.01, 100, 1e-5, records_per_patient=20)
    assert got.accountant == "rdp" and np.isfinite(got.value) and got.value > 0
    from dpaudit.bounds.schedule import resolve

    assert got.value == pld._epsilon_rdp_dominating(resolve(1.0, 0.01, 100, None), 20, 1e-5)
