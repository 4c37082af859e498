"""A checkpoint's privacy-unit facts (``extra``: privacy_unit, data_unit, records_per_patient, images_per_unit_max,
n_train_volumes) are untrusted input, checked once when the checkpoint is loaded: an edited or damaged value is one
line naming the file, the field, the value and a fix (exit code 2), never k = 1 in silence (per-image numbers shown
as per-patient ones: a bound that is not one) and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpaudit.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from dpaudit.cli.main import app
from dpaudit.config import DpSgdConfig
from dpaudit.errors import CheckpointError
from dpaudit.models import build_model

runner = CliRunner()

#: The training split's counts as `dpaudit train` records them (audit/train.py, _privacy_scalars): 97 patients of
#: one image and one of three, N = 100 records.
SPLIT = {"images_per_unit_mean": 100 / 98, "n_units": 98, "images_per_unit_histogram": "[[1, 97], [3, 1]]"}
#: What `dpaudit train` records for a patient-level run on data with patient ids.
PATIENT = {"privacy_unit": "patient", "data_unit": "patient", "records_per_patient": 3, "images_per_unit_max": 3,
           **SPLIT}
#: ... for an image-level run on the same data.
IMAGE = {"privacy_unit": "image", "data_unit": "patient", "records_per_patient": 1, "images_per_unit_max": 3,
         **SPLIT}
DP = DpSgdConfig(1.1, 0.02, 300, target_delta=1e-6)


def _checkpoint(tmp_path: Path, extra: dict, **edits: object) -> Path:
    """A valid DP checkpoint (smallcnn, N = 100) whose ``extra`` is then edited in the file, as a user or a damaged
    copy would: a value ``...`` deletes the key. The edit bypasses CheckpointMeta, as a hand-edited file does."""
    meta = CheckpointMeta(arch="smallcnn", num_classes=2, arch_args={"width": 4}, input_shape=(3, 16, 16),
                          dataset="demo", n_train=100, dp=DP, epochs=2, batch_size=2)
    path = save_checkpoint(tmp_path / "model.pt", build_model("smallcnn", num_classes=2, width=4), meta)
    payload = torch.load(path, weights_only=True)
    payload["extra"] = dict(extra)
    for key, value in edits.items():
        if value is ...:
            payload["extra"].pop(key, None)
        else:
            payload["extra"][key] = value
    torch.save(payload, path)
    return path


# (base facts, edits, words the message must hold besides the file and the field)
BAD = {
    "k missing": (PATIENT, {"records_per_patient": ...}, "records_per_patient"),
    "k None": (PATIENT, {"records_per_patient": None}, "got None"),
    "k 0": (PATIENT, {"records_per_patient": 0}, "got 0"),
    "k negative": (PATIENT, {"records_per_patient": -2}, "got -2"),
    "k non-integer": (PATIENT, {"records_per_patient": 2.5}, "got 2.5"),
    "k a string": (PATIENT, {"records_per_patient": "3"}, "got '3'"),
    "k nan": (PATIENT, {"records_per_patient": "nan"}, "got nan"),  # save_checkpoint's spelling of a nan
    "k inf": (PATIENT, {"records_per_patient": "inf"}, "got inf"),
    "k bool": (PATIENT, {"records_per_patient": True}, "got True"),
    "k huge": (PATIENT, {"records_per_patient": 10**30}, "at most n_train (100,"),
    "k below the data's": (PATIENT, {"records_per_patient": 2}, "got 2"),
    "unit unknown": (PATIENT, {"privacy_unit": "Patient"}, "got 'Patient'"),
    "unit wrong type": (PATIENT, {"privacy_unit": 1}, "got 1"),
    "unit missing beside k": (PATIENT, {"privacy_unit": ...}, "privacy_unit"),
    "patient on data without ids": (PATIENT, {"data_unit": "image"}, "got 'image'"),
    "data unit unknown": (PATIENT, {"data_unit": "ward"}, "got 'ward'"),
    "image unit with k > 1": (IMAGE, {"records_per_patient": 3}, "got 3"),
    "image unit, data max missing": (IMAGE, {"images_per_unit_max": ...}, "images_per_unit_max"),
    "data max 0": (IMAGE, {"images_per_unit_max": 0}, "got 0"),
    "data max a string": (IMAGE, {"images_per_unit_max": "3"}, "got '3'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_unit_facts_are_refused_by_bounds_naming_file_field_value_and_fix(tmp_path: Path, case: str) -> None:
    base, edits, words = BAD[case]
    path = _checkpoint(tmp_path, base, **edits)
    res = runner.invoke(app, ["bounds", "--model", str(path), "--json"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, AssertionError)
    line = " ".join(res.output.split())
    assert line.startswith(f"error: --model: checkpoint {str(path)!r}: extra[") or \
        line.startswith(f"error: checkpoint {str(path)!r}: extra["), line
    assert words in line and "Fix: " in line and "dpaudit train --out DIR" in line, line


@pytest.mark.parametrize("case", ["k missing", "k nan", "k huge", "unit unknown", "image unit, data max missing"])
def test_bad_unit_facts_are_refused_by_attack(tmp_path: Path, case: str) -> None:
    base, edits, words = BAD[case]
    path = _checkpoint(tmp_path, base, **edits)
    res = runner.invoke(app, ["attack", "--model", str(path), "--dataset", "demo", "--n-images", "2", "--sigmas",
                              "0", "--json"])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "Traceback" not in res.output and f"checkpoint {str(path)!r}: extra[" in line and words in line, line


@pytest.mark.parametrize("case", ["k 0", "unit unknown"])
def test_the_library_refuses_them_at_load(tmp_path: Path, case: str) -> None:
    base, edits, _ = BAD[case]
    with pytest.raises(CheckpointError, match="extra\\["):
        load_checkpoint(_checkpoint(tmp_path, base, **edits))


@pytest.mark.parametrize(("extra", "k", "unit"), [
    (PATIENT, 3, "patient"),
    ({**PATIENT, "records_per_patient": 4}, 4, "patient"),  # a larger k than the data's: still a sound statement
    (IMAGE, 1, "image"),
    ({}, 1, "image"),  # hand-made, or written before the unit was recorded: no unit facts at all
])
def test_valid_checkpoints_give_the_numbers_of_the_same_run_given_by_flags(tmp_path: Path, extra: dict, k: int,
                                                                          unit: str) -> None:
    # Reference: the same run given as flags (the checkpoint only carries it).
    path = _checkpoint(tmp_path, extra)
    res = runner.invoke(app, ["bounds", "--model", str(path), "--json"])
    assert res.exit_code == 0, res.output
    ref = runner.invoke(app, ["bounds", "--sigma", "1.1", "--q", "0.02", "--steps", "300", "--delta", "1e-6",
                              "--n-train", "100", "--records-per-patient", str(k), "--json"])
    got, want = json.loads(res.stdout), json.loads(ref.stdout)
    assert got == want and got["records_per_patient"] == k and got["privacy_unit"] == unit


def test_an_image_level_checkpoint_gives_the_per_patient_numbers_on_request(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, IMAGE)
    res = runner.invoke(app, ["bounds", "--model", str(path), "--privacy-unit", "patient", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["records_per_patient"] == 3


@pytest.mark.parametrize(("extra", "words"), [
    ({"task": "segmentation"}, "extra['n_train_volumes'] must be recorded by a segmentation checkpoint"),
    ({"task": "segmentation", "n_train_volumes": 0}, "extra['n_train_volumes'] must be an integer >= 1, got 0"),
    ({"task": "segmentation", "n_train_volumes": 101}, "at most n_train (100,"),
])
def test_a_segmentation_checkpoint_records_its_training_volumes(extra: dict, words: str) -> None:
    # Without them kappa would be 1/slices: a smaller prior, and a smaller ReRo bound than the volume's.
    from dpaudit.checkpoint import check_recorded_unit

    with pytest.raises(CheckpointError) as info:
        check_recorded_unit(extra, 100, "segmentation")
    assert words in str(info.value) and "Fix: " in str(info.value)
    assert check_recorded_unit({"n_train_volumes": 4}, 100, "segmentation") is None
