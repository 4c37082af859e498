"""Fix hints and notes about delta follow the project's own rules: an example delta is the default rule's value
(min(8e-7, 1/(10 N))), never another convention's round number, and a note on why epsilon is the RDP value names
the actual cause (the loss cap at small noise, a target_delta below what the PLD resolves, or both)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from dpaudit.attacks.scenario import AttackScenario, scenario_mechanism
from dpaudit.bounds import bounds_summary, default_delta
from dpaudit.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("args", [
    ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "10", "--kappa", "0.01", "--delta", "2"],
    ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "10", "--kappa", "0.01", "--delta", "2"],
    ["train", "--sigma", "1", "--delta", "2"],
    ["profile", "--out", "x", "--delta", "2"],
])
def test_a_bad_delta_is_told_the_default_rule_not_another_number(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--delta" in text and "1e-5" not in text, text
    assert "8e-7" in text or "8e-07" in text, text


def test_attack_epsilons_without_the_run_names_the_default_delta_rule() -> None:
    result = runner.invoke(app, ["attack", "--dataset", "demo", "--epsilons", "8", "--n-images", "1"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Fix: add --n-train N --epochs E" in text and "min(8e-7, 1/(10 N))" in text, text
    assert "1e-5" not in text


@pytest.mark.parametrize("n_train", [400, 10**6])
def test_attack_epsilons_without_a_delta_take_the_default_rule(n_train: int) -> None:
    ckpt = SimpleNamespace(n_train=None, epochs=None, target_delta=None)
    mech = scenario_mechanism(ckpt, AttackScenario(epsilons=(8.0,), n_train=n_train, epochs=2))
    assert mech.target_delta == default_delta(n_train)
    assert mech.source.startswith("scenario; target_delta") and "by default" in mech.source
    given = scenario_mechanism(ckpt, AttackScenario(epsilons=(8.0,), n_train=n_train, epochs=2, target_delta=1e-9))
    assert given.target_delta == 1e-9 and given.source == "scenario"


def _rdp_note(summary: object) -> str:
    notes = [n for n in summary.notes if "looser than RDP" in n]
    assert summary.epsilon.accountant == "rdp" and len(notes) == 1, summary.notes
    return notes[0]


def test_the_rdp_note_names_a_tiny_delta_not_the_noise() -> None:
    note = _rdp_note(bounds_summary(1.0, 0.01, 100, [0.01], target_delta=1e-300, membership=False))
    assert "target_delta 1e-300" in note
    assert "privacy loss above" not in note and "at this noise" not in note


def test_the_rdp_note_names_the_loss_cap_at_small_noise() -> None:
    note = _rdp_note(bounds_summary(0.02, 0.01, 100, [0.01], target_delta=1e-5, membership=False))
    assert "per-step privacy loss above 700" in note and "target_delta" not in note


def test_the_rdp_note_names_both_causes_when_both_hold() -> None:
    note = _rdp_note(bounds_summary(0.02, 0.01, 100, [0.01], target_delta=1e-20, membership=False))
    assert "per-step privacy loss above 700" in note and "target_delta 1e-20" in note
