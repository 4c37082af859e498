"""``attack_checkpoint``: one attack use case behind ``dpaudit attack`` and the profile's attack stage."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dpaudit.attacks.scenario import AttackScenario, select_images
from dpaudit.audit.profile import run_profile
from dpaudit.audit.profile.schema import ProfileConfig
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError

TINY = dict(dataset="demo", image_size=16, max_images=60, arch="smallcnn", epsilons=(8.0,), non_private=True,
            seeds=1, epochs=1, batch_size=8, attack_images=6, attack_epochs=1, decoders=("strong",), seed=3)


def test_cli_and_profile_give_identical_attack_rows(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # results depend on the thread count in the last bits: pin it on both sides
    try:
        prof = run_profile(ProfileConfig(**TINY), tmp_path, threads=1)
    finally:
        torch.set_num_threads(threads)
    n_train = prof.dataset.n_train
    for outcome in prof.attacks:
        noise = (["--sigmas", "0"] if outcome.epsilon_target is None else
                 ["--epsilons", f"{outcome.epsilon_target!r}", "--n-train", str(n_train), "--epochs", "1",
                  "--delta", f"{outcome.target_delta!r}"])
        res = CliRunner().invoke(app, [
            "attack", "--model", str(tmp_path / outcome.checkpoint), "--dataset", "demo", "--image-size", "16",
            "--max-images", "60", "--n-images", "6", "--selection", "random", "--decoder", "strong",
            "--seed", "3", "--threads", "1", "--json", *noise])
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)["rows"]
        assert len(rows) == len(outcome.rows) == 1
        cli, prof_row = rows[0], outcome.rows[0]
        assert cli["noise_multiplier"] == outcome.noise_multiplier
        for key in ("decoder", "n_images", "success_rate", "ci_low", "ci_high", "mean_ssim", "mean_rho"):
            assert cli[key] == getattr(prof_row, key), key


def test_selection_first_and_random() -> None:
    from dpaudit.data import load_splits

    train = load_splits("demo", image_size=16, seed=0, max_images=40).train
    first, _ = select_images(train, AttackScenario(n_images=5))
    assert torch.equal(first, train.images[:5])
    a, _ = select_images(train, AttackScenario(n_images=5, selection="random", seed=1))
    b, _ = select_images(train, AttackScenario(n_images=5, selection="random", seed=1))
    assert torch.equal(a, b)
    everything, _ = select_images(train, AttackScenario(n_images=10_000, selection="random"))
    assert torch.equal(everything, train.images)  # sorted indices: all of them, in order


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_images=0), "n_images"),
    (dict(selection="best"), "selection"),
    (dict(epsilons=(1.0,), noise_multipliers=(0.0,)), "--epsilons/--sigmas"),
])
def test_scenario_rejects_bad_values(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=field):
        AttackScenario(**kwargs)
