"""Reconstruction-robustness and membership-inference bounds for DP-SGD (pure numpy/scipy, no torch).

Public API (see ``docs/ARCHITECTURE.md``): epsilon by PLD (tight, sound) and RDP (what Opacus reports), the noise
calibration for a target epsilon, ReRo bounds for the worst-case and relaxed threat models, membership-inference
curves, and the noise calibration for a target ReRo bound; each for one (sigma, q, T) phase or a ``Schedule`` of
phases (Opacus' accountant history). ``check_noise_multiplier``, ``check_q``, ``check_steps`` and ``check_delta``
are the input checks every bound applies (callers check values early with them).
"""

from dpaudit.bounds._mechanism import (
    PAPER_DELTA,
    check_delta,
    check_noise_multiplier,
    check_q,
    check_steps,
    check_threat_model,
    default_delta,
    default_delta_rule,
)
from dpaudit.bounds.mia import FPR_GRID, MiaCurve, mia_curve
from dpaudit.bounds.pld import ADJACENCY, EpsilonBound, epsilon_bound, epsilon_pld
from dpaudit.bounds.rdp import epsilon_rdp
from dpaudit.bounds.rero import (
    MC_SAMPLES,
    ReRoBound,
    clt_mu,
    gaussian_gamma,
    relaxed_gaussian_gamma,
    rero_bound,
)
from dpaudit.bounds.schedule import Phase, Schedule, schedule_of_checkpoint
from dpaudit.bounds.summary import BoundsSummary, bounds_summary

#: Names of :mod:`dpaudit.bounds.calibrate`, loaded on first use: ``dpaudit bounds`` (and every bound) never needs the
#: calibrations, and a process that does not ask for one does not import (or, without byte code, compile) them.
_CALIBRATE = ("Calibration", "NoiseForEpsilon", "calibrate_epsilon", "calibrate_noise", "epsilon_target_for",
              "max_steps", "noise_for_epsilon")


def __getattr__(name: str):
    if name in _CALIBRATE:
        from dpaudit.bounds import calibrate

        return getattr(calibrate, name)
    raise AttributeError(f"module 'dpaudit.bounds' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CALIBRATE))

__all__ = [
    "ADJACENCY",
    "FPR_GRID",
    "MC_SAMPLES",
    "PAPER_DELTA",
    "BoundsSummary",
    "Calibration",
    "EpsilonBound",
    "MiaCurve",
    "NoiseForEpsilon",
    "Phase",
    "ReRoBound",
    "Schedule",
    "bounds_summary",
    "calibrate_epsilon",
    "calibrate_noise",
    "check_delta",
    "check_noise_multiplier",
    "check_q",
    "check_steps",
    "check_threat_model",
    "clt_mu",
    "default_delta",
    "default_delta_rule",
    "epsilon_bound",
    "epsilon_pld",
    "epsilon_rdp",
    "epsilon_target_for",
    "gaussian_gamma",
    "max_steps",
    "mia_curve",
    "noise_for_epsilon",
    "relaxed_gaussian_gamma",
    "rero_bound",
    "schedule_of_checkpoint",
]
