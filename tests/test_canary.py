"""Canary audit of a training run (`dpaudit.audit.canary`, `dpaudit mia audit`) and the report's sentence."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from dpaudit.attacks.lower_bounds import low_epsilon_caveat, one_run_ceiling
from dpaudit.audit.canary import CanaryAuditConfig, _roc, _tpr_at_fpr, _wrong_labels, run_canary_audit
from dpaudit.audit.results import CanaryAuditResult
from dpaudit.audit.train import TrainConfig
from dpaudit.cli.main import app
from dpaudit.codec import encode, from_plain
from dpaudit.data import load_splits
from dpaudit.errors import ConfigError

TINY = dict(arch="smallcnn", arch_args={"width": 4}, epochs=1, batch_size=8, image_size=8, threads=1)


@pytest.fixture(scope="module")
def tiny_splits():  # type: ignore[no-untyped-def]
    return load_splits("demo", image_size=8, max_images=160, seed=0)


def test_wrong_labels_always_differ(rng: np.random.Generator) -> None:
    y = rng.integers(0, 7, size=2000)
    w = _wrong_labels(y, 7, rng)
    assert np.all(w != y) and w.min() >= 0 and w.max() <= 6
    # uniform over the 6 other classes: chi-square on the shift (p > 1e-4 unless biased)
    shift = (w - y) % 7
    assert stats.chisquare(np.bincount(shift, minlength=7)[1:]).pvalue > 1e-4


def test_roc_auc_matches_mann_whitney(rng: np.random.Generator) -> None:
    member = rng.random(300) < 0.5
    scores = rng.normal(size=300) + 0.7 * member
    roc, auc = _roc(scores, member)
    u = stats.mannwhitneyu(scores[member], scores[~member]).statistic
    assert auc == pytest.approx(u / (member.sum() * (~member).sum()), rel=1e-12)
    assert roc[0] == (0.0, 0.0) and roc[-1] == (1.0, 1.0)
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in itertools.pairwise(roc))


def test_tpr_at_fpr_respects_the_target(rng: np.random.Generator) -> None:
    member = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 2 * member
    for row in _tpr_at_fpr(scores, member, (0.001, 0.01, 0.1), 0.95):
        assert row.false_positives <= int(row.fpr_target * row.negatives)
        assert row.tpr_low <= row.tpr <= row.tpr_high
        assert row.fpr <= row.fpr_high


def test_audit_of_a_dp_run_stays_below_the_accountant(tiny_splits) -> None:  # type: ignore[no-untyped-def]
    cfg = CanaryAuditConfig(train=TrainConfig(noise_multiplier=1.0, **TINY), canaries=40, seed=3)
    res = run_canary_audit(cfg, splits=tiny_splits)
    assert res.accountant_epsilon is not None
    assert 0.0 <= res.epsilon_lower_bound <= res.accountant_epsilon
    assert res.epsilon_lower_bound <= res.ceiling
    # the ceiling is the one of the procedure used: 40 canaries at the Bonferroni-corrected level
    assert res.ceiling == pytest.approx(one_run_ceiling(40, delta=res.target_delta,
                                                        confidence=1 - 0.05 / res.one_run.tries))
    assert res.train.n_train == len(tiny_splits.train) - 40 + res.members
    d = encode(res)
    json.dumps(d, allow_nan=False)
    assert from_plain(CanaryAuditResult, d).to_json() == res.to_json()  # the profile stores this same class
    assert d["labels"]["accountant_epsilon"].startswith("sound upper bound")
    assert d["labels"]["epsilon_lower_bound"].startswith("empirical: a lower bound at 95% confidence")
    assert "cannot certify an epsilon above" in d["caveat"]


def test_bad_config(tiny_splits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="canaries"):
        CanaryAuditConfig(train=TrainConfig(noise_multiplier=1.0, **TINY), canaries=2)
    with pytest.raises(ConfigError, match="score"):
        CanaryAuditConfig(train=TrainConfig(noise_multiplier=1.0, **TINY), score="rmia")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train"):
        CanaryAuditConfig(train={"epsilon": 8})
    with pytest.raises(ConfigError, match="canaries"):
        run_canary_audit(CanaryAuditConfig(train=TrainConfig(noise_multiplier=1.0, **TINY), canaries=10_000),
                         splits=tiny_splits)


def test_caveat_sentences() -> None:
    s = low_epsilon_caveat(0.3, 8.0, 200, 3.1)
    assert "at least 0.3 (" in s and "200 canaries" in s and "above 3.10" in s and "epsilon (8, a sound" in s
    assert "does not prove" in s
    s = low_epsilon_caveat(3.0, 8.0, 200, 3.1)
    assert "at that ceiling" in s
    s = low_epsilon_caveat(9.0, 8.0, 2000, 12.0)
    assert "exceeds the accountant's epsilon" in s
    s = low_epsilon_caveat(None, None, None, None)
    assert "no upper bound" in s and "does not prove" in s


def test_cli_audit_json_and_bad_input() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["mia", "audit", "--max-images", "160", "--image-size", "8", "--width", "4",
                              "--epochs", "1", "--batch-size", "8", "--sigma", "1.0", "--canaries", "30",
                              "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["epsilon_lower_bound"] <= d["accountant_epsilon"]
    assert d["canaries"] == 30
    # the training run's files lived in a temporary folder, removed: no path into it, and the note says why
    t = d["train"]
    assert t["checkpoint"] is None and t["metrics_path"] is None and t["curve_path"] is None
    assert any("keeps no files" in n for n in t["notes"]) and "dpaudit-mia-" not in res.stdout
    res = runner.invoke(app, ["mia", "audit", "--sigma", "1.0", "--canaries", "1"])
    assert res.exit_code == 2 and "canaries" in res.output


@pytest.mark.slow
def test_demo_audit_reference_score_below_accountant() -> None:
    # The demo data at a small size, epsilon 8 (calibrated), the reference-model score: the lower bound sits
    # below the accountant's epsilon and below the ceiling of 200 canaries.
    splits = load_splits("demo", image_size=16, max_images=600, seed=0)
    tc = TrainConfig(epsilon=8.0, arch="smallcnn", arch_args={"width": 8}, epochs=5, batch_size=32,
                     image_size=16, threads=2)
    res = run_canary_audit(CanaryAuditConfig(train=tc, canaries=200, score="reference"), splits=splits)
    assert res.accountant_epsilon is not None and res.accountant_epsilon <= 8.0
    assert res.epsilon_lower_bound <= min(res.accountant_epsilon, res.ceiling)
