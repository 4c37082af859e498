"""Reconstruction-robustness and membership-inference bounds for DP-SGD (pure numpy/scipy, no torch).

Public API (see ``docs/ARCHITECTURE.md``): epsilon by PLD (tight, sound) and RDP (what Opacus reports), the noise
calibration for a target epsilon, ReRo bounds for the worst-case and relaxed threat models, membership-inference
curves, and the noise calibration for a target ReRo bound.
"""

from dpaudit.bounds.calibrate import noise_for_epsilon
from dpaudit.bounds.pld import epsilon_pld
from dpaudit.bounds.rdp import epsilon_rdp

__all__ = ["epsilon_pld", "epsilon_rdp", "noise_for_epsilon"]
