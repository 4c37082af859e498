"""Self-audit of the DP-SGD step: a gradient-canary test of the Opacus machinery that training uses.

One DP-SGD step releases ``(sum of clipped per-sample gradients + N(0, sigma^2 C^2 I)) / B``. A *Dirac canary*
is a sample whose gradient points along one coordinate no other sample touches, with a norm well above the clip
norm C, so that its clipped gradient is exactly C along that coordinate. The step is run many times with and
without the canary (fresh noise each time); the released update's projection on the canary's coordinate,
rescaled by B / (lr C), is N(1, sigma^2) with the canary and N(0, sigma^2) without it when clipping, noise and
scaling are right. A threshold test on that projection (threshold chosen on a held-out half of the trials) gives
an *empirical lower bound* on epsilon through :func:`dpaudit.attacks.lower_bounds.bound_from_scores`, which must sit
below the accountant's epsilon for one un-subsampled Gaussian step (``dpaudit.bounds.epsilon_pld(sigma, 1, 1,
delta)``, a sound upper bound). A lower bound above it means the step leaks more than its accounting says: noise
scaled wrongly, clipping skipped, a sample counted twice.

The audit is the white-box "gradient canary" of Nasr, Hayes, Steinke, Balle, Tramer, Jagielski, Carlini,
Terzis, "Tight Auditing of Differentially Private Machine Learning", USENIX Security 2023 (arXiv 2302.07956,
section 4: Dirac canary gradients), reduced to one step so that it runs in seconds. It audits clipping, noise and
scaling of the step; it does not audit Poisson sampling (the canary is in every "with" step, q = 1) or the
composition over steps, which the accountant handles.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from dpaudit.attacks.lower_bounds import ScoreBound, bound_from_scores, two_error_ceiling
from dpaudit.config import check_noise_multiplier
from dpaudit.errors import check_int, check_positive, check_probability

__all__ = ["SelfAuditConfig", "SelfAuditResult", "gradient_canary_projections", "run_self_audit"]


@dataclass(frozen=True)
class SelfAuditConfig:
    """One self-audit.

    Attributes
    ----------
    noise_multiplier:
        sigma the accountant is told (and Opacus is given).
    max_grad_norm:
        C, the per-sample clip norm.
    trials:
        DP-SGD steps per arm (with and without the canary); half of each arm chooses the threshold, the other
        half gives the counts. 2000 per arm let the audit certify up to epsilon ~ 5.6 at 95% confidence.
    batch_size:
        Samples in the batch besides the canary (also Opacus' expected batch size).
    dimension:
        Input dimension of the linear model; the last coordinate is the canary's.
    canary_norm:
        The canary's raw gradient norm in units of C; > 1 so that correct clipping cuts it to exactly C.
    target_delta, confidence:
        delta of the accountant's epsilon and of the lower bound; the lower bound's confidence.
    seed:
        Seeds the data, the noise generator and the half split.
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    trials: int = 2000
    batch_size: int = 8
    dimension: int = 4
    canary_norm: float = 10.0
    target_delta: float = 1e-5
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        # The accountant's floor (epsilon_pld refuses a smaller sigma), checked here so that a run is refused before
        # its 2 * trials Opacus steps, not after them.
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(
            self.noise_multiplier, fix="pass the sigma the accountant uses, e.g. --sigma 1.0"))
        object.__setattr__(self, "max_grad_norm", check_positive(
            "max_grad_norm", self.max_grad_norm, fix="pass a positive clip norm, e.g. 1.0"))
        object.__setattr__(self, "trials", check_int(
            "trials", self.trials, minimum=4, fix="pass at least 4 steps per arm, e.g. --trials 2000"))
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size,
                                                         fix="pass a batch size of 1 or more"))
        object.__setattr__(self, "dimension", check_int("dimension", self.dimension, minimum=2,
                                                        fix="pass a gradient dimension of 2 or more"))
        object.__setattr__(self, "canary_norm", check_positive(
            "canary_norm", self.canary_norm, fix="pass a canary gradient norm above 1 (in units of the clip norm)"))
        object.__setattr__(self, "target_delta", check_probability(
            "target_delta", self.target_delta, fix="pass a delta in (0, 1), e.g. 1e-5"))
        object.__setattr__(self, "confidence", check_probability(
            "confidence", self.confidence, fix="pass a confidence in (0, 1), e.g. 0.95"))
        check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0")


@dataclass(frozen=True)
class SelfAuditResult:
    """Outcome of a self-audit.

    Attributes
    ----------
    bound:
        The empirical lower bound on epsilon (threshold chosen on the held-out half; counts on the other half).
    accountant_epsilon:
        Sound upper bound: tight PLD epsilon of one Gaussian step with this sigma (q = 1, T = 1) at target_delta.
    ceiling:
        The largest lower bound the evaluation half can give (a perfect test): violations above it go unseen.
    mu_estimate, mu_standard_error:
        Estimate (not a bound) of the canary's signal-to-noise ratio from the projections, (mean with - mean
        without) / sd without, with its delta-method standard error. Correct steps give 1 / sigma.
    mu_expected:
        1 / sigma.
    flagged:
        True when the lower bound exceeds the accountant's epsilon: at the stated confidence, the step is not
        as private as accounted.
    """

    config: SelfAuditConfig
    bound: ScoreBound
    accountant_epsilon: float
    ceiling: float
    mu_estimate: float
    mu_standard_error: float
    mu_expected: float
    flagged: bool
    seconds: float
    label: str = "empirical lower bound (self-audit of one DP-SGD step)"

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("epsilon_lower_bound", "labels")

    @property
    def epsilon_lower_bound(self) -> float:
        return self.bound.epsilon_lower_bound

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is (written to JSON beside them)."""
        return {"epsilon_lower_bound": self.label,
                "accountant_epsilon": "sound upper bound (tight PLD, one Gaussian step, q = 1)",
                "mu_estimate": "estimate (not a bound)"}


def gradient_canary_projections(config: SelfAuditConfig) -> tuple[np.ndarray, np.ndarray]:
    """Run the Opacus DP-SGD step ``2 * trials`` times; return the canary-coordinate projections (with, without).

    The step is built exactly as :mod:`dpaudit.audit.train` builds it:
    ``FastConvGradSampleModule(loss_reduction="mean")`` (:mod:`dpaudit.audit.grad_sample`) and
    ``DPOptimizer(noise_multiplier, max_grad_norm, expected_batch_size, loss_reduction="mean", generator=...)``.
    Projections are rescaled by B / (lr C), so a correct step gives N(1, sigma^2) with the canary and N(0, sigma^2)
    without. The arms alternate so that drifts in the generator hit both alike.
    """
    from opacus.optimizers import DPOptimizer

    from dpaudit.audit.grad_sample import FastConvGradSampleModule

    c, b, d, lr = config.max_grad_norm, config.batch_size, config.dimension, 1.0
    g_data = torch.Generator().manual_seed(config.seed * 2 + 1)
    g_noise = torch.Generator().manual_seed(config.seed * 2 + 2)
    others = torch.randn(b, d, generator=g_data, dtype=torch.float64)
    others[:, -1] = 0.0  # no other sample touches the canary's coordinate
    canary = torch.zeros(1, d, dtype=torch.float64)
    canary[0, -1] = config.canary_norm * c  # gradient of the sample's output w.r.t. w is its input
    with_canary = torch.cat([others, canary])

    model = nn.Linear(d, 1, bias=False).double()
    net = FastConvGradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=lr), noise_multiplier=config.noise_multiplier,
                            max_grad_norm=c, expected_batch_size=b, loss_reduction="mean", generator=g_noise)
    weight = model.weight
    out = np.empty((2, config.trials))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for t in range(config.trials):
            for arm, x in enumerate((with_canary, others)):
                with torch.no_grad():
                    weight.zero_()
                optimizer.zero_grad(set_to_none=True)
                net(x).mean().backward()
                optimizer.step()
                # update = -lr * (clipped sum + noise) / B; rescale so that the canary's clipped gradient is 1
                out[arm, t] = -float(weight.detach()[0, -1]) * b / (lr * c)
    return out[0], out[1]


def run_self_audit(config: SelfAuditConfig | None = None) -> SelfAuditResult:
    """Audit the DP-SGD step with a Dirac gradient canary; see the module docstring."""
    from dpaudit.bounds import epsilon_pld

    config = config or SelfAuditConfig()
    t0 = time.perf_counter()
    with_c, without = gradient_canary_projections(config)
    bound = bound_from_scores(with_c, without, delta=config.target_delta, confidence=config.confidence,
                              selection="split", seed=config.seed)
    # One Gaussian step, canary always present (q = 1, T = 1): the accountant's sound upper bound.
    eps_acc = float(epsilon_pld(config.noise_multiplier, 1.0, 1, config.target_delta))
    ceiling = two_error_ceiling(bound.bound.positives, bound.bound.negatives, delta=config.target_delta,
                                confidence=config.confidence)
    n1, n0 = with_c.size, without.size
    sd0 = float(np.std(without, ddof=1))
    mu = float((np.mean(with_c) - np.mean(without)) / sd0)
    # delta-method standard error of a standardised mean difference (Hedges and Olkin 1985, eq. 5.3.15)
    se = math.sqrt(1 / n1 + 1 / n0 + mu * mu / (2 * (n0 - 1)))
    return SelfAuditResult(config=config, bound=bound, accountant_epsilon=eps_acc, ceiling=ceiling,
                           mu_estimate=mu, mu_standard_error=se, mu_expected=1.0 / config.noise_multiplier,
                           flagged=bound.epsilon_lower_bound > eps_acc, seconds=time.perf_counter() - t0)
