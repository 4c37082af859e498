"""Schedules of phases (Opacus' accountant history): heterogeneous composition, exact in the PLD.

References: dp_accounting 0.6.0 composing the same phases (``from_gaussian_mechanism(sigma, sampling_prob=q,
value_discretization_interval=1e-4, use_connect_dots=True, pessimistic_estimate=True).self_compose(T_i)``, joined
with ``compose``; epsilon by ``get_epsilon_for_delta``, gamma by the exact Neyman-Pearson step on the REMOVE
direction); Opacus 1.x ``RDPAccountant`` with ``history`` set to the phases (``get_epsilon``). The stored numbers
were computed with :func:`_dp_accounting_schedule` (8-12 s each); the slow test recomputes them. And the
single-phase results when all phases are equal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpaudit.bounds import (
    Phase,
    Schedule,
    calibrate_noise,
    epsilon_pld,
    epsilon_rdp,
    mia_curve,
    rero_bound,
    schedule_of_checkpoint,
)
from dpaudit.bounds._mechanism import StepPair
from dpaudit.bounds.rero import tight_gamma
from dpaudit.errors import DpAuditError

SCHEDULES = {
    "S1": [(1.0, 0.01, 500), (0.8, 0.02, 300)],
    "S2": [(2.0, 0.05, 200), (1.2, 0.05, 400), (0.9, 0.01, 1000)],
    "S3": [(0.7, 0.004, 2000), (1.5, 0.1, 50)],
}
KAPPAS = (1e-5, 1e-3, 0.1)
DELTA = 1e-5
#: dp_accounting 0.6.0 (epsilon at delta 1e-5, gamma at KAPPAS) and Opacus' RDPAccountant (module docstring).
REFERENCE = {
    "S1": {"epsilon": 3.9784367003714145, "rdp": 4.64659374523647,
           "gamma": (0.00035683418584066067, 0.011174809131966813, 0.28601935953541424)},
    "S2": {"epsilon": 5.655684844887795, "rdp": 6.194286132917147,
           "gamma": (0.0011718737223437314, 0.028914845915495542, 0.4483711774605813)},
    "S3": {"epsilon": 3.4498127405020518, "rdp": 4.050217021562647,
           "gamma": (0.00025892909873038343, 0.009606474475773705, 0.2790054409898315)},
}


def _dp_accounting_schedule(phases, kappas=KAPPAS, delta=DELTA) -> dict:
    import dp_accounting  # noqa: F401  (an error here means the test extra is missing)
    from dp_accounting.pld import privacy_loss_distribution as pld_lib
    from opacus.accountants import RDPAccountant

    pld = None
    for sigma, q, steps in phases:
        part = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=1e-4,
                                               use_connect_dots=True, pessimistic_estimate=True).self_compose(steps)
        pld = part if pld is None else pld.compose(part)
    pmf = pld._pmf_remove
    losses = (pmf._lower_loss + np.arange(pmf._probs.size)) * pmf._discretization
    order = np.argsort(-losses)
    m, loss = pmf._probs[order], losses[order]
    cum_p = np.cumsum(m * np.exp(-loss))
    gamma = []
    for kappa in kappas:
        j = int(np.searchsorted(cum_p, kappa))
        before_p = cum_p[j - 1] if j > 0 else 0.0
        gamma.append(float(pmf._infinity_mass + np.sum(m[:j]) + (kappa - before_p) * math.exp(loss[j])))
    acc = RDPAccountant()
    acc.history = [tuple(p) for p in phases]
    return {"epsilon": pld.get_epsilon_for_delta(delta), "rdp": acc.get_epsilon(delta), "gamma": tuple(gamma)}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_dp_accounting(name: str) -> None:
    sched = Schedule.from_history(SCHEDULES[name])
    ref = REFERENCE[name]
    res = rero_bound(kappa=KAPPAS, schedule=sched)
    np.testing.assert_allclose(res.gamma, ref["gamma"], rtol=1e-3)
    assert np.all(res.lower <= np.array(ref["gamma"]) * (1 + 1e-12))  # their sound upper bound >= our lower one
    assert epsilon_pld(target_delta=DELTA, schedule=sched) == pytest.approx(ref["epsilon"], rel=1e-3)
    assert epsilon_rdp(target_delta=DELTA, schedule=sched) == pytest.approx(ref["rdp"], rel=1e-9)
    curve = mia_curve(schedule=sched)
    np.testing.assert_allclose(np.interp(KAPPAS, curve.fpr, curve.tpr)[:2], res.gamma[:2], rtol=1e-3)
    assert res.schedule == sched and res.steps == sched.steps
    assert any("phases" in a for a in res.assumptions)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_reference_values(name: str) -> None:
    live = _dp_accounting_schedule(SCHEDULES[name])
    assert live["epsilon"] == pytest.approx(REFERENCE[name]["epsilon"], rel=1e-9)
    assert live["rdp"] == pytest.approx(REFERENCE[name]["rdp"], rel=1e-9)
    np.testing.assert_allclose(live["gamma"], REFERENCE[name]["gamma"], rtol=1e-9)


@pytest.mark.parametrize("threat_model", ["worst_case", "relaxed"])
def test_equal_phases_equal_single_phase(threat_model: str) -> None:
    sigma, q, steps = 1.0, 0.01, 1000
    split = Schedule.from_history([(sigma, q, 300), (sigma, q, 200), (sigma, q, 500)])
    single = rero_bound(sigma, q, steps, KAPPAS, threat_model=threat_model)
    res = rero_bound(kappa=KAPPAS, schedule=split, threat_model=threat_model)
    np.testing.assert_array_equal(res.gamma, single.gamma)  # equal phases are merged: the same computation
    assert epsilon_pld(target_delta=DELTA, schedule=split) == epsilon_pld(sigma, q, steps, DELTA)
    assert epsilon_rdp(target_delta=DELTA, schedule=split) == pytest.approx(epsilon_rdp(sigma, q, steps, DELTA),
                                                                           rel=1e-12)
    # ... and the heterogeneous path itself (three parts in one FFT window) agrees with the self-composition
    pair = StepPair(sigma, q, 1, threat_model)
    parts = tight_gamma(((pair, 300), (pair, 200), (pair, 500)), None, np.array(KAPPAS))
    whole = tight_gamma(pair, steps, np.array(KAPPAS))
    assert np.all(parts.lower <= whole.value) and np.all(whole.lower <= parts.value)
    np.testing.assert_allclose(parts.value, whole.value, rtol=1e-3)


def test_order_of_phases_does_not_matter() -> None:
    a = Schedule.from_history(SCHEDULES["S1"])
    b = Schedule(tuple(reversed(a.phases)))
    np.testing.assert_allclose(rero_bound(kappa=1e-3, schedule=a).gamma, rero_bound(kappa=1e-3, schedule=b).gamma,
                               rtol=1e-9)


def test_schedule_is_monotone_in_its_phases() -> None:
    # adding a phase can only raise every bound (post-processing cannot undo a release)
    base = Schedule.from_history([(1.0, 0.01, 500)])
    more = Schedule.from_history([(1.0, 0.01, 500), (2.0, 0.01, 100)])
    g0 = rero_bound(kappa=KAPPAS, schedule=base)
    g1 = rero_bound(kappa=KAPPAS, schedule=more)
    assert np.all(g1.gamma >= g0.lower)
    assert epsilon_pld(target_delta=DELTA, schedule=more) >= epsilon_pld(target_delta=DELTA, schedule=base)


def test_calibrate_last_phase() -> None:
    sched = Schedule.from_history([(1.0, 0.01, 500), (9.9, 0.02, 300)])  # the last sigma is the unknown
    cal = calibrate_noise(0.05, kappa=1e-3, schedule=sched)
    assert cal.achieved_rero <= 0.05
    assert cal.schedule.phases[0] == sched.phases[0]
    assert cal.schedule.last == Phase(cal.noise_multiplier, 0.02, 300)
    # safe end: a little less noise in the last phase breaks the target
    below = cal.schedule.with_last_noise(cal.noise_multiplier / 1.002)
    assert rero_bound(kappa=1e-3, schedule=below).gamma[0] > 0.05 * (1 - 1e-3)
    # with a single phase it is the plain calibration
    one = calibrate_noise(0.05, kappa=1e-3, schedule=Schedule.single(1.0, 0.01, 1000))
    assert one.noise_multiplier == calibrate_noise(0.05, 0.01, 1000, 1e-3).noise_multiplier


def test_history_errors_name_the_entry() -> None:
    with pytest.raises(DpAuditError, match=r"history\[1\]"):
        Schedule.from_history([[1.0, 0.01, 10], [1.0, 0.01]])
    with pytest.raises(DpAuditError, match=r"history\[0\].*sampling_probability"):
        Schedule.from_history([[1.0, 1.5, 10]])
    with pytest.raises(DpAuditError, match="history"):
        Schedule.from_history({"noise_multiplier": 1.0})
    with pytest.raises(DpAuditError, match="schedule"):
        Schedule.from_history([])
    with pytest.raises(DpAuditError, match="not both"):
        rero_bound(1.0, 0.01, 10, 1e-3, schedule=Schedule.single(1.0, 0.01, 10))
    with pytest.raises(DpAuditError, match="edgeworth"):
        rero_bound(kappa=1e-3, schedule=Schedule.from_history(SCHEDULES["S1"]), method="edgeworth")


def test_history_round_trip_and_checkpoint_helper() -> None:
    hist = [[1.0, 0.01, 500], [0.8, 0.02, 300]]
    assert Schedule.from_history(hist).to_history() == hist

    class _Dp:
        noise_multiplier, sampling_probability, steps = 1.0, 0.01, 1000

    class _Ckpt:
        dp = _Dp()

    assert schedule_of_checkpoint(_Ckpt()) == Schedule.single(1.0, 0.01, 1000)

    class _WithPhases(_Ckpt):
        phases = hist

    assert schedule_of_checkpoint(_WithPhases()) == Schedule.from_history(hist)
