"""Budgets past the noise search range: a result is labelled with the epsilon its noise gives.

Right values: at the search floor sigma = 1e-3 (``SIGMA_RANGE[0]``) the Gaussian mechanism's epsilon is finite
(about 3e9 for q = 1/1400, T = 5600, delta = 1e-5), so a target of 1e12 cannot be what that noise gives; any
label above the floor's epsilon claims less noise than was used. A target the search can meet keeps its label,
and the noise found never overshoots it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.bounds import calibrate_epsilon, calibrate_noise, epsilon_pld, epsilon_rdp
from dpaudit.bounds.calibrate import SIGMA_RANGE
from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
from dpaudit.cli.main import app
from dpaudit.config import DpSgdConfig
from dpaudit.models import build_model
from dpaudit.numfmt import upper

runner = CliRunner()


@pytest.mark.parametrize(("q", "steps", "target"), [(1 / 1400, 5600, 1e12), (1e-4, 2000, 1e10), (0.05, 40, 1e15)])
def test_target_past_the_floor_is_labelled_with_the_floor_epsilon(q: float, steps: int, target: float) -> None:
    level = calibrate_epsilon(target, q, steps, 1e-5)
    floor_eps = epsilon_pld(SIGMA_RANGE[0], q, steps, 1e-5)
    assert level.at_floor and level.noise_multiplier == SIGMA_RANGE[0]
    assert level.epsilon == floor_eps < target  # the label is what the noise gives, below the target
    assert f"{target:.4g}" in level.note and upper(floor_eps) in level.note  # an upper bound: rounded up
    # RDP (another sound accountant) agrees that the floor cannot reach the target either
    assert epsilon_rdp(SIGMA_RANGE[0], q, steps, 1e-5) < target


def test_target_within_range_keeps_its_label_and_never_overshoots() -> None:
    level = calibrate_epsilon(8.0, 1 / 1400, 5600, 1e-5)
    assert not level.at_floor and level.note is None and level.epsilon == 8.0
    assert level.noise_multiplier > SIGMA_RANGE[0]
    assert epsilon_pld(level.noise_multiplier, 1 / 1400, 5600, 1e-5) <= 8.0


def test_rero_calibration_met_at_floor_says_so() -> None:
    # Worst case at sigma -> 0: the attacker wins whenever the target was sampled: 1 - (1-q)^T + kappa (1-q)^T.
    q, steps, kappa = 0.002, 10, 0.2
    ceiling = 1 - (1 - q) ** steps + kappa * (1 - q) ** steps  # 0.215856
    cal = calibrate_noise(0.9, q, steps, kappa)
    assert cal.at_floor and cal.achieved_rero <= ceiling + 1e-2 and "search floor" in cal.note
    assert not calibrate_noise(0.05, 0.01, 1000, 1e-3).at_floor


def _checkpoint(tmp_path: Path) -> Path:
    net = build_model("smallcnn", num_classes=2, width=4)
    dp = DpSgdConfig(noise_multiplier=0.7, sampling_probability=0.05, steps=40, target_delta=1e-5)
    return save_checkpoint(tmp_path / "dp.pt", net, CheckpointMeta(
        arch="smallcnn", num_classes=2, arch_args={"width": 4}, input_shape=(3, 16, 16), dataset="demo",
        n_train=200, dp=dp, epochs=2, extra={"epsilon_achieved": 6.5}))


def test_attack_rows_carry_the_epsilon_actually_used(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    res = runner.invoke(app, ["attack", "--model", str(ckpt), "--dataset", "demo", "--n-images", "2",
                              "--epsilons", "8,1e12", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    small, big = obj["rows"]
    floor_eps = epsilon_pld(SIGMA_RANGE[0], 1 / 200, 2 * 200, 1e-5)  # attack scenario: q = 1/N, T = epochs * N
    assert small["epsilon"] == 8.0
    assert big["noise_multiplier"] == SIGMA_RANGE[0] and big["epsilon"] == pytest.approx(floor_eps, rel=1e-12)
    assert big["epsilon"] < 1e12 and len(obj["notes"]) == 1 and "beyond the noise search range" in obj["notes"][0]
    res = runner.invoke(app, ["attack", "--model", str(ckpt), "--dataset", "demo", "--n-images", "2",
                              "--epsilons", "1e12"])
    assert res.exit_code == 0 and "beyond the noise search range" in " ".join(res.output.split())
    table = res.output.split("Imprint-layer", 1)[1]
    assert "1e+12" not in table and "2.2e+08" in table  # the eps column shows the epsilon used


def test_train_reports_why_the_achieved_epsilon_is_below_the_target() -> None:
    from dpaudit.audit.train import TrainConfig, train
    from dpaudit.data import load_splits

    splits = load_splits("demo", image_size=16, max_images=60, seed=0)
    result = train(TrainConfig(arch="smallcnn", arch_args={"width": 4}, epochs=1, batch_size=8, image_size=16,
                               threads=1, epsilon=1e12), splits=splits)
    assert result.noise_multiplier == SIGMA_RANGE[0] and result.epsilon_achieved < 1e12
    assert math.isfinite(result.epsilon_achieved)
    assert len(result.notes) == 1 and json.loads(result.to_json())["notes"] == list(result.notes)


def test_an_unreachable_rero_limit_names_the_smallest_reachable_one() -> None:
    """A --max-rero no searched noise multiplier meets is refused naming max_rero and the smallest limit reachable
    (the bound at the largest sigma, rounded up), which is then met; never the bare "relax the target"."""
    import re

    from dpaudit.errors import NumericalError

    with pytest.raises(NumericalError) as info:
        calibrate_noise(1.0001e-3, 0.5, 100000, 1e-3)
    text = str(info.value)
    assert info.value.field == "max_rero" and "relax the target" not in text
    floor = float(re.search(r"pass --max-rero (\S+) or more", text).group(1))
    assert calibrate_noise(floor, 0.5, 100000, 1e-3).achieved_rero <= floor
