"""Self-audit of the DP-SGD step (`dpaudit.audit.selfaudit`, `dpaudit mia self-audit`).

A correct Opacus step must give a lower bound below the accountant's epsilon; the same audit must flag steps with
injected bugs (noise divided by the batch size, clipping skipped). References: the accountant's epsilon for one
Gaussian step is checked against the analytic Gaussian curve (Balle and Wang, ICML 2018, Theorem 8).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise
from scipy import stats
from typer.testing import CliRunner

from dpaudit.audit.selfaudit import SelfAuditConfig, gradient_canary_projections, run_self_audit
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError
from tests.closed_forms import gaussian_epsilon

#: sigma 2: the accountant's epsilon for one step is ~1.99 at delta 1e-5, well below what 250 evaluation trials
#: per arm can certify (ceiling ~4.2), so a leaking step is caught.
SIGMA = 2.0
TRIALS = 500


def test_correct_step_is_not_flagged() -> None:
    res = run_self_audit(SelfAuditConfig(noise_multiplier=SIGMA, trials=TRIALS, seed=1))
    assert not res.flagged
    assert res.epsilon_lower_bound <= res.accountant_epsilon
    # the accountant's value is the tight one-step epsilon (PLD is pessimistic, so at or slightly above exact)
    exact = gaussian_epsilon(1 / SIGMA, 1e-5)
    assert exact <= res.accountant_epsilon <= exact * (1 + 1e-3)
    # the projection behaves as N(1/sigma shift) in units of the noise: estimate within 4 standard errors
    assert abs(res.mu_estimate - 1 / SIGMA) < 4 * res.mu_standard_error
    assert res.ceiling > res.accountant_epsilon  # the audit could have seen a violation


def test_projections_have_the_accounted_law() -> None:
    # Without the canary the projection is pure noise N(0, sigma^2); with it, N(1, sigma^2). Kolmogorov-Smirnov
    # against these laws (p > 1e-4 unless the step is wrong).
    cfg = SelfAuditConfig(noise_multiplier=SIGMA, trials=400, seed=2)
    with_c, without = gradient_canary_projections(cfg)
    assert stats.kstest(without, stats.norm(0.0, SIGMA).cdf).pvalue > 1e-4
    assert stats.kstest(with_c, stats.norm(1.0, SIGMA).cdf).pvalue > 1e-4


def test_noise_divided_by_batch_size_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    # A classic bug: noise calibrated for the averaged gradient but added to the sum (std sigma C / B).
    def add_noise(self: DPOptimizer) -> None:
        for p in self.params:
            noise = _generate_noise(std=self.noise_multiplier * self.max_grad_norm / self.expected_batch_size,
                                    reference=p.summed_grad, generator=self.generator)
            p.grad = (p.summed_grad + noise).view_as(p)

    monkeypatch.setattr(DPOptimizer, "add_noise", add_noise)
    res = run_self_audit(SelfAuditConfig(noise_multiplier=SIGMA, trials=TRIALS, seed=3))
    assert res.flagged
    assert res.epsilon_lower_bound > res.accountant_epsilon


def test_clipping_skipped_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clipping disabled (clip factor 1 for every sample) while the noise is still scaled by C.
    original = DPOptimizer.clip_and_accumulate

    def clip_and_accumulate(self: DPOptimizer) -> None:
        c = self.max_grad_norm
        self.max_grad_norm = math.inf
        try:
            original(self)
        finally:
            self.max_grad_norm = c

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", clip_and_accumulate)
    res = run_self_audit(SelfAuditConfig(noise_multiplier=SIGMA, trials=TRIALS, seed=4))
    assert res.flagged
    # the unclipped canary (norm 10 C) shifts the projection by 10 noise-free units: mu ~ 10 / sigma
    assert res.mu_estimate > 3 / SIGMA


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="trials"):
        SelfAuditConfig(trials=2)
    with pytest.raises(ConfigError, match="confidence"):
        SelfAuditConfig(confidence=1.0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        SelfAuditConfig(noise_multiplier=0.0)


def test_cli_self_audit_json() -> None:
    res = CliRunner().invoke(app, ["mia", "self-audit", "--sigma", "2", "--trials", "200", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["epsilon_lower_bound"] <= d["accountant_epsilon"]
    assert d["flagged"] is False
    assert d["labels"]["accountant_epsilon"].startswith("sound upper bound")
    counts = d["bound"]["bound"]  # the threshold's bound, then its counts on the evaluation half
    assert counts["positives"] == 100 and counts["negatives"] == 100
    assert d["config"]["noise_multiplier"] == 2.0


def test_cli_self_audit_bad_input() -> None:
    res = CliRunner().invoke(app, ["mia", "self-audit", "--trials", "1"])
    assert res.exit_code == 2
    assert "trials" in res.output


@pytest.mark.slow
def test_default_self_audit_sigma_one(rng: np.random.Generator) -> None:
    # The CLI default (sigma 1, 2000 steps per arm): not flagged, and the evaluation half could certify up to the
    # two-error ceiling ~5.6, above the accountant's 4.38.
    seed = int(rng.integers(2**31))
    torch.manual_seed(seed)
    res = run_self_audit(SelfAuditConfig(seed=seed))
    assert not res.flagged
    assert res.ceiling > res.accountant_epsilon
    assert abs(res.mu_estimate - 1.0) < 4 * res.mu_standard_error
