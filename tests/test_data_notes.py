"""What the data loader passed over and decided (skipped files by reason, groupings, labels rows without an image)
reaches every place a reader looks: each command that loads data prints it and keeps it in its JSON, and the
report's data section lists it (counts and reasons only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()
SMALL = ["--image-size", "8", "--arch", "smallcnn", "--arch-args", '{"width": 4}', "--threads", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """Two classes of 40 images each, and two files that are not images (skipped, counted by reason)."""
    rng = np.random.default_rng([2, 21])
    root = tmp_path_factory.mktemp("notes")
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(40):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"i{i:03d}.png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return f"folder:{root}"


COMMANDS = {
    "train": ["train", "--sigma", "1", "--epochs", "1", "--batch-size", "8"],
    "attack": ["attack", "--sigmas", "0", "--n-images", "2"],
    "mia audit": ["mia", "audit", "--sigma", "1", "--epochs", "1", "--batch-size", "8", "--canaries", "10"],
    "federated train": ["federated", "train", "--epsilon", "8", "--clients", "2", "--rounds", "1", "--batch-size", "8"],
    "federated attack": ["federated", "attack", "--clients", "2", "--batch-size", "2", "--bins", "4", "--sigmas", "0"],
}


def _data_notes(obj: dict) -> list[str]:
    return obj["train"]["data_notes"] if "train" in obj and isinstance(obj["train"], dict) else obj["data_notes"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_that_loads_data_prints_the_notes_and_keeps_them_in_json(command: str, folder: str) -> None:
    res = runner.invoke(app, [*COMMANDS[command], "--dataset", folder, *SMALL, "--json"])
    assert res.exit_code == 0, res.output
    notes = _data_notes(json.loads(res.stdout))
    assert notes and "file(s) skipped (" in notes[0] and "not an image" in notes[0]
    for note in notes:
        assert f"note: {note}" in " ".join(res.stderr.split())


def test_the_report_lists_the_loaders_notes(tmp_path: Path) -> None:
    import dataclasses

    from pypdf import PdfReader
    from test_report import synthetic_profile

    from dpaudit.audit.report import render_report

    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    noted = dataclasses.replace(prof, dataset=dataclasses.replace(
        prof.dataset, skipped=(("not DICOM", 1), ("not in the labels file", 3)),
        notes=("1 row(s) of the labels file match no image (by PatientID); they were not used",
               "files without a usable PatientID (blank, a placeholder or shared by all) grouped by "
               "StudyInstanceUID (3)")))
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(str(render_report(noted, tmp_path / "r.pdf"))).pages)
                    .split())
    assert "Data loading." in text
    assert "4 file(s) skipped (1 not DICOM, 3 not in the labels file)" in text
    assert "match no image (by PatientID)" in text and "grouped by StudyInstanceUID (3)" in text
    plain = " ".join(" ".join(p.extract_text() for p in PdfReader(str(render_report(prof, tmp_path / "p.pdf"))).pages)
                     .split())
    assert "Every file found was used" in plain and "skipped" not in plain


def test_attack_on_a_trained_checkpoint_prints_the_notes_train_printed(tmp_path: Path) -> None:
    """The attack on a checkpoint trained by dpaudit loads the data as train did (not a few images of it), so its
    training split and the loader's notes are train's: a folder with copied images gave train a "repeat the
    content" note that the attack, reading 15 of the images, left out."""
    import shutil

    rng = np.random.default_rng([2, 22])
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"i{i:03d}.png")
    rows = [f"{c}/i{i:03d}.png,{c},p{c}{i // 3}" for c in ("a", "b") for i in range(30)]
    for i in range(20, 30):  # copies of the last images: the loader keeps each set in one split and says so
        shutil.copy(root / "b" / f"i{i:03d}.png", root / "b" / f"copy{i:03d}.png")
        rows.append(f"b/copy{i:03d}.png,b,pb{i // 3}")
    (root / "manifest.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    data = ["--dataset", f"csv:{root / 'manifest.csv'}", *SMALL, "--json"]
    res = runner.invoke(app, [*COMMANDS["train"], *data, "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout)["data_notes"]
    assert any("repeat the content" in n for n in trained), trained
    res = runner.invoke(app, [*COMMANDS["attack"], *data, "--model", str(tmp_path / "m" / "model.pt")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data_notes"] == trained
