"""Output folders: checked before any work, never silently replaced by another configuration's results, and a
failed write is one line naming --out, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.errors import DpAuditError
from dpaudit.outputs import refuse_replacing, writable_dir

runner = CliRunner()
TRAIN = ["train", "--dataset", "demo", "--max-images", "120", "--image-size", "16", "--arch", "smallcnn",
         "--width", "4", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


def _no_data(*args: object, **kwargs: object) -> None:
    raise AssertionError("the data were loaded before --out was checked")


def test_writable_dir_creates_the_folder_and_names_out_when_it_cannot(tmp_path: Path) -> None:
    assert writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DpAuditError, match=r"^out must be a folder that can be created and written to"):
        writable_dir(tmp_path / "file" / "run")


@pytest.mark.parametrize("command", [
    [*TRAIN, "--epsilon", "8"],
    ["attack", "--arch", "smallcnn", "--dataset", "demo", "--sigmas", "0", "--n-images", "2"],
    ["profile", "--dataset", "demo", "--epsilons", "8", "--seeds", "1", "--epochs", "1", "--max-images", "120"],
])
def test_an_unwritable_out_fails_before_any_work(command: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import dpaudit.audit.profile.run as run
    import dpaudit.audit.train as train
    import dpaudit.data as data

    for module, name in ((train, "load_data"), (data, "load_splits"), (run, "_data_spec")):
        monkeypatch.setattr(module, name, _no_data)
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, [*command, "--out", str(tmp_path / "file" / "run")])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: --out must be a folder that can be created and written to") and "Fix: pass --out" in line


def test_a_failed_checkpoint_write_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a write that fails (no space, a folder made read-only while training ran) as a
    RuntimeError ("enforce fail at inline_container.cc"); it must reach the user as one line naming --out."""
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:747] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", fail)
    res = runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "--out" in res.output and "model.pt can be written" in res.output
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_train_refuses_to_replace_another_configuration(tmp_path: Path) -> None:
    out = str(tmp_path / "r")
    assert runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", out]).exit_code == 0
    before = (tmp_path / "r" / "metrics.json").read_text()
    res = runner.invoke(app, [*TRAIN, "--epsilon", "2", "--out", out])
    assert res.exit_code == 2, res.output
    assert "another configuration" in res.output and "--overwrite" in res.output and "new --out" in res.output
    assert (tmp_path / "r" / "metrics.json").read_text() == before
    # The same configuration again (elsewhere it would write the same run) is no replacement; --overwrite is asked.
    assert runner.invoke(app, [*TRAIN, "--epsilon", "8", "--out", out]).exit_code == 0
    assert runner.invoke(app, [*TRAIN, "--epsilon", "2", "--out", out, "--overwrite"]).exit_code == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epsilon_target"] == 2


def test_profile_and_attack_refuse_a_folder_of_another_configuration(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import dpaudit.audit.profile.run as run
    import dpaudit.data as data

    monkeypatch.setattr(run, "_data_spec", _no_data)
    monkeypatch.setattr(data, "load_splits", _no_data)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "profile.json").write_text(json.dumps({"config": {"epsilons": [8.0]}, "decision": None}))
    res = runner.invoke(app, ["profile", "--dataset", "demo", "--epsilons", "2", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "already holds profile.json" in res.output and "--overwrite" in res.output
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ssim_error_cdf.png").write_bytes(b"")  # outputs without their record: another's
    res = runner.invoke(app, ["attack", "--arch", "smallcnn", "--dataset", "demo", "--sigmas", "0", "--out",
                              str(tmp_path / "a")])
    assert res.exit_code == 2 and "already holds ssim_error_cdf.png" in res.output


def test_same_profile_compares_the_configuration_and_the_limits() -> None:
    from dpaudit.audit.decision import Limit
    from dpaudit.audit.profile.run import same_profile
    from dpaudit.audit.profile.schema import ProfileConfig
    from dpaudit.codec import encode

    config = ProfileConfig(dataset="demo", epsilons=(8.0,))
    limits = (Limit(kind="rero", maximum=0.05),)
    stored = json.loads(json.dumps({"config": encode(config), "decision": {"limits": encode(limits)}}))
    assert same_profile(config, limits, stored)
    assert not same_profile(config, (), stored)  # the board's decision would be dropped
    assert not same_profile(ProfileConfig(dataset="demo", epsilons=(2.0,)), limits, stored)
    stored["config"]["task_defaults"] = ["lr"]  # which values were defaults is not what ran
    assert same_profile(config, limits, stored)


def test_refuse_replacing_accepts_an_empty_folder_and_overwrite(tmp_path: Path) -> None:
    refuse_replacing(tmp_path, "r.json", outputs=("x.pt",), same=lambda d: False, overwrite=False, what="w")
    (tmp_path / "x.pt").write_bytes(b"")
    refuse_replacing(tmp_path, "r.json", outputs=("x.pt",), same=lambda d: False, overwrite=True, what="w")
    with pytest.raises(DpAuditError, match=r"--out .* already holds x.pt"):
        refuse_replacing(tmp_path, "r.json", outputs=("x.pt",), same=lambda d: True, overwrite=False, what="w")
