"""Membership inference from the same trade-off curve: advantage, TPR at fixed FPR, and the full ROC.

A membership test with null "target absent" and false-positive rate alpha has true-positive rate at most
1 - f(alpha) = gamma(alpha) (the ReRo curve at kappa = alpha); its advantage TPR - FPR is at most
max_alpha (1 - f(alpha) - alpha) = delta(0), the total-variation distance. All numbers are sound upper bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dpaudit.bounds._mechanism import check_records_per_patient, check_threat_model
from dpaudit.bounds.pld import WindowTooLargeError, composed_run
from dpaudit.bounds.rero import tight_gamma
from dpaudit.bounds.schedule import Schedule, resolve
from dpaudit.errors import invalid

#: FPRs at which TPR is reported (the CLI's and the report's table).
FPR_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 0.1)


@dataclass(frozen=True, eq=False)
class MiaCurve:
    """Upper bounds on any membership-inference test's performance against this DP-SGD run.

    Attributes
    ----------
    advantage:
        max (TPR - FPR) = delta(0) of the composed mechanism.
    fpr, tpr:
        TPR bound at each FPR of ``FPR_GRID``.
    tpr_lower:
        A sound lower bound on the exact value ``tpr`` bounds (the garbled PLD): the exact trade-off curve lies in
        [tpr_lower, tpr], so ``numerical_error`` = tpr - tpr_lower is proven.
    roc_fpr, roc_tpr:
        The full ROC bound on a log grid of FPR from 1e-8 to 1.
    label:
        ``"sound upper bound"``.
    schedule:
        Every phase of the run (one phase for a plain (sigma, q, T) call).
    """

    advantage: float
    fpr: np.ndarray
    tpr: np.ndarray
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    threat_model: str = "worst_case"
    records_per_patient: int = 1
    label: str = "sound upper bound"
    notes: tuple[str, ...] = field(default=())
    schedule: Schedule | None = None
    tpr_lower: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.tpr_lower is None:
            object.__setattr__(self, "tpr_lower", np.asarray(self.fpr, dtype=float))  # TPR >= FPR always
        for name in ("fpr", "tpr", "roc_fpr", "roc_tpr", "tpr_lower"):
            arr = np.array(getattr(self, name), dtype=float)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def numerical_error(self) -> np.ndarray:
        return self.tpr - self.tpr_lower

    @property
    def tpr_at_fpr(self) -> list[tuple[float, float]]:
        return list(zip(self.fpr.tolist(), self.tpr.tolist(), strict=True))


def mia_curve(noise_multiplier: float | None = None, sampling_probability: float | None = None,
              steps: int | None = None, *, records_per_patient: int = 1, threat_model: str = "worst_case",
              roc_points: int = 161, schedule: Schedule | None = None, grid_step: float | None = None) -> MiaCurve:
    """Membership-inference bounds for DP-SGD from the tight (pessimistic PLD) trade-off curve.

    Parameters
    ----------
    noise_multiplier, sampling_probability, steps:
        The DP-SGD run (sigma > 0, q in (0, 1], T >= 1).
    records_per_patient:
        k images per patient (patient-level membership).
    threat_model:
        ``"worst_case"`` (default) or ``"relaxed"``.
    roc_points:
        Points of the ROC's log-spaced FPR grid in [1e-8, 1].
    schedule:
        A :class:`dpaudit.bounds.Schedule` in place of (noise_multiplier, sampling_probability, steps): the
        phases' PLDs are composed exactly.
    grid_step:
        Start the refinement at this grid step instead of its own first one: the ``discretisation`` of a tight
        ReRo bound of the same run and threat model, whose composed PLDs (the same pair, the same direction) are
        cached, so that a round there costs only the reads (:func:`dpaudit.bounds.bounds_summary` does this). The
        curve is refined on from there like any round: a sound upper bound with its proven bracket either way,
        within that bracket of the curve refined from its own start.
    """
    if grid_step is not None and not (isinstance(grid_step, (int, float)) and math.isfinite(grid_step)
                                      and grid_step > 0):
        raise invalid("grid_step", grid_step, "a finite grid step > 0 (nats)", "pass a tight ReRo bound's "
                      "discretisation, or None")
    sched = resolve(noise_multiplier, sampling_probability, steps, schedule)
    run = sched.run(check_records_per_patient(records_per_patient), check_threat_model(threat_model))
    pair = run[-1][0]
    fpr = np.array(FPR_GRID)
    roc_fpr = np.concatenate([np.geomspace(1e-8, 0.999, roc_points - 1)])
    grid = np.concatenate([fpr, roc_fpr])
    notes: tuple[str, ...] = ()
    try:
        refined = tight_gamma(run, None, grid, start=grid_step)
    except WindowTooLargeError as exc:
        # TPR <= 1 and advantage <= 1 always hold: the trivial sound upper bounds, labelled in the notes.
        values, advantage, lower = np.ones_like(grid), 1.0, grid
        notes = (f"TPR = 1 and advantage = 1 are the trivial sound upper bounds: the tight PLD does not fit here "
                 f"({exc}); fewer steps give bounds below 1",)
    else:
        values, lower = refined.value, np.maximum(refined.lower, grid)
        if math.isnan(refined.h):
            advantage = 1.0  # saturated (tight_gamma): TPR >= 1 - 1e-12 at every FPR, so the advantage is ~1 too
        else:
            advantage = composed_run(run, refined.h, "remove").delta(0.0)
    tpr = values[: fpr.size]
    roc_tpr = np.maximum.accumulate(values[fpr.size:])
    roc_fpr = np.append(roc_fpr, 1.0)
    roc_tpr = np.append(roc_tpr, 1.0)
    return MiaCurve(advantage=float(min(advantage, 1.0)), fpr=fpr, tpr=tpr, roc_fpr=roc_fpr, roc_tpr=roc_tpr,
                    threat_model=pair.threat_model, records_per_patient=pair.records_per_patient, notes=notes,
                    schedule=sched, tpr_lower=lower[: fpr.size])
