"""Fix texts that are right for the command and the data kind: each names a flag of the command that printed it
(or none that would be wrong there), the flag the user typed, and never a library field in its place."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()


def _error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, line
    return line


def test_fix_texts_name_the_flag_of_the_command(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "h.json").write_text(json.dumps([[0.0, 0.01, 10]]))
    # a value the configuration defaulted (not typed) is still named by its flag
    line = _error(["train", "--dataset", "demo", "--epsilon", "8", "--max-images", "5"])
    assert line.startswith("error: --batch-size must be at most")
    line = _error(["train", "--dataset", "demo", "--epsilon", "8", "--max-images", "5", "--batch-size", "2"])
    assert "--max-images" in line
    line = _error(["attack", "--model", str(tmp_path / "folder"), "--dataset", "demo"])
    assert "is a folder, not a weights file" in line and "does not exist" not in line
    line = _error(["bounds", "--history", str(tmp_path / "h.json"), "--kappa", "1e-3"])
    assert "--sigma 1.0" not in line and "sample_rate" not in line and "noise_multiplier" in line
    line = _error(["train", "--arch", str(tmp_path / "nosuch.py") + ":build", "--epsilon", "8"])
    assert line.startswith("error: --arch must be") and "nosuch.py:build" in line
    line = _error(["profile", "--epsilons", "8,,1", "--out", str(tmp_path / "p")])
    assert line.startswith("error: --epsilons must be") and "'8,,1'" in line


@pytest.mark.parametrize("spelling", ["Worst-Case", "WORST_CASE", " relaxed "])
def test_threat_models_are_read_in_any_case(spelling: str) -> None:
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100", "--kappa", "1e-3",
                              "--threat-model", spelling, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["threat_model"] in ("worst_case", "relaxed")


def test_a_labels_file_example_is_right_for_the_data_kind(tmp_path: Path) -> None:
    from dpaudit.errors import DataError
    from dpaudit.medical import _read_labels

    (tmp_path / "l.csv").write_text("name,label\na,b\n")
    with pytest.raises(DataError, match=r"e\.g\. file,label"):
        _read_labels(tmp_path / "l.csv", ("file", "path"), "nifti:x", tmp_path)
    with pytest.raises(DataError, match=r"e\.g\. PatientID,label"):
        _read_labels(tmp_path / "l.csv", ("PatientID", "StudyInstanceUID"), "dicom:x", tmp_path)


def test_huge_step_counts_print_no_numpy_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100000000000", "--kappa",
                                  "1e-3"])
    assert res.exit_code == 0, res.output
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_checkpoint_with_an_invalid_n_train_has_a_fix(tmp_path) -> None:
    import torch

    from dpaudit.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from dpaudit.errors import DpAuditError
    from dpaudit.models import build_model

    with pytest.raises(DpAuditError, match="n_train must be an integer >= 1, got 0"):  # the field alone
        CheckpointMeta(arch="smallcnn", num_classes=2, in_channels=3, n_train=0)
    path = save_checkpoint(tmp_path / "m.pt", build_model("smallcnn", num_classes=2),
                           CheckpointMeta(arch="smallcnn", num_classes=2, in_channels=3, n_train=10))
    payload = torch.load(path, weights_only=True)
    payload["n_train"] = 0
    torch.save(payload, path)
    with pytest.raises(DpAuditError, match=r"n_train must be an integer >= 1, got 0\. Fix: write the checkpoint "
                       "again with `dpaudit train --out DIR`"):  # the loader adds the file's fix
        load_checkpoint(path)


def test_a_value_read_from_an_array_reads_as_the_number_not_its_repr() -> None:
    """numpy 2 writes ``np.int64(9)`` for repr(np.int64(9)) and torch ``tensor(9)``: an error shows ``9``."""
    import numpy as np
    import torch

    from dpaudit.errors import invalid

    assert str(invalid("label", np.int64(9), "in [0, 1]")) == "label must be in [0, 1], got 9."
    assert str(invalid("labels", [np.float32(1.5), np.int8(2)], "in [0, 1]")) == "labels must be in [0, 1], got 1.5, 2."
    assert str(invalid("label", torch.tensor(3), "in [0, 1]")) == "label must be in [0, 1], got 3."
    assert str(invalid("name", np.str_("ab"), "known")) == "name must be known, got 'ab'."


def test_a_table_printed_to_a_file_keeps_every_number_whole(capsys) -> None:
    """Piped or redirected output (rich's default 80 columns) got the table squeezed and a wide cell cut:
    ``7.694e+08`` read ``7.694e+…``. Every cell is printed whole."""
    from rich.table import Table

    from dpaudit.cli._common import out, print_table

    table = Table(title="a title " * 12)
    for name in ("sigma", "eps", "decoder", "n", "success", "95% CI", "SSIM", "rho", "eta", "more", "columns"):
        table.add_column(name, justify="right")
    table.add_row("0.0001", "7.694e+08", "strong *", "32", "100.0%", "[89.1%, 100.0%]", "0.999", "0.123",
                  "0.000123", "a long cell of text", "another long cell of text")
    print_table(table, out)
    text = capsys.readouterr().out
    assert "7.694e+08" in text and "0.000123" in text and "[89.1%," in text and "100.0%]" in text
    assert "…" not in text  # text cells may wrap at their spaces, no word is cut
