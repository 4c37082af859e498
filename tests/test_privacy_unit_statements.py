"""The privacy unit is stated truthfully: a k given by hand is never below the data's, a profile whose unit is the
image on data whose patients have several images says so and gives the per-patient numbers beside, and every
epsilon says whether it is per image or per patient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()

#: A small demo profile (the demo's patients have up to 4 images each in a 60-image split: see the histogram check).
SMALL_PROFILE = ["--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn",
                 "--epsilons", "8", "--no-non-private", "--seeds", "1", "--epochs", "1", "--batch-size", "8",
                 "--attack-images", "4", "--attack-epochs", "1", "--decoder", "strong"]


def _demo_k() -> int:
    """The most training images one demo patient has in the small profile's split (the data's k)."""
    from dpaudit.audit.profile.run import _data_spec
    from dpaudit.audit.profile.schema import ProfileConfig
    from dpaudit.data import privacy_unit

    config = ProfileConfig(dataset="demo", image_size=16, max_images=60, arch="smallcnn", epsilons=(8.0,))
    return privacy_unit(_data_spec(config).load(), "patient").records_per_patient


def test_check_records_per_patient_refuses_a_k_below_the_data() -> None:
    from dpaudit.config import check_records_per_patient
    from dpaudit.errors import DataError

    assert check_records_per_patient(4, "patient", 4) == 4 and check_records_per_patient(6, "patient", 4) == 6
    assert check_records_per_patient(3, "image", 1) == 3  # no patient ids: the given k stands
    assert check_records_per_patient(1, "patient", 4, unit="image") == 1  # per image: true as such
    for k, unit in ((2, "patient"), (3, "patient"), (1, "patient")):
        with pytest.raises(DataError) as e:
            check_records_per_patient(k, "patient", 4, unit=unit)
        msg = str(e.value)
        assert msg.startswith("records_per_patient must be at least 4 ") and f"got {k}." in msg
        assert "--records-per-patient 4" in msg and "\n" not in msg
    with pytest.raises(DataError, match="slices one volume"):
        check_records_per_patient(2, "volume", 8)


def test_profile_refuses_records_per_patient_below_the_data(tmp_path: Path) -> None:
    k = _demo_k()
    assert k > 2  # the demo's patients have several images: a k of 2 is below the data's
    res = runner.invoke(app, ["profile", *SMALL_PROFILE, "--records-per-patient", "2", "--out", str(tmp_path / "p"),
                              "--no-render"])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: --records-per-patient must be at least")
    assert f"at least {k}" in line and "got 2" in line and f"--records-per-patient {k}" in line
    assert "Traceback" not in res.output
    assert not (tmp_path / "p" / "checkpoints").exists()  # refused before any training


def test_bounds_model_refuses_records_per_patient_below_the_checkpoints_data(tmp_path: Path) -> None:
    from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
    from dpaudit.config import DpSgdConfig
    from dpaudit.models import build_model

    meta = CheckpointMeta(arch="smallcnn", num_classes=2, arch_args={"width": 8}, input_shape=(3, 16, 16),
                          dataset="demo", n_train=209, dp=DpSgdConfig(0.8162, 0.3, 4, 1.0, 1e-5),
                          extra={"privacy_unit": "patient", "data_unit": "patient", "records_per_patient": 4,
                                 "images_per_unit_max": 4})
    path = save_checkpoint(tmp_path / "model.pt", build_model("smallcnn", num_classes=2, width=8), meta)
    for cmd in (["bounds"], ["calibrate", "--max-rero", "0.05"]):
        res = runner.invoke(app, [*cmd, "--model", str(path), "--records-per-patient", "2"])
        assert res.exit_code == 2, res.output
        assert "at least 4" in res.output and "got 2" in res.output and "--records-per-patient 4" in res.output
        assert "Traceback" not in res.output
        # At or above the data's k, and k = 1 per image, stand.
        for extra in (["--records-per-patient", "4"], ["--records-per-patient", "5"],
                      ["--privacy-unit", "image", "--records-per-patient", "1"]):
            res = runner.invoke(app, [*cmd, "--model", str(path), *extra, "--json"])
            assert res.exit_code == 0, res.output
    # Without a checkpoint nothing is known of the data: the given k stands.
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--n-train", "200",
                              "--records-per-patient", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["records_per_patient"] == 2
