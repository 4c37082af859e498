"""The patient as the privacy unit, end to end: attack, train, bounds --model and profile on a DICOM tree
and a NIfTI folder built here; k equals the data's maximum; no PatientID string reaches stdout, stderr, JSON, the
checkpoint's metadata or the PDF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, float_dicom_file, nifti_file
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()
SECRET = "SECRET-PATIENT"
IMAGES_PER_PATIENT = 3  # every patient has exactly 3 images: k = 3 whatever the split


def blob(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
    return 1000 + 2500 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(10, 40))


@pytest.fixture
def dicom_tree(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "dicom"
    for p in range(12):
        cls = "nodule" if p % 2 else "normal"
        for k in range(IMAGES_PER_PATIENT):
            dicom_file(root / cls / f"{SECRET}-{p:02d}" / f"IM{k}", blob(rng, 24).astype(np.uint16),
                       patient=f"{SECRET}-{p:02d}", WindowCenter=2000, WindowWidth=3000)
    return root


def test_attack_train_bounds_profile_on_a_dicom_tree(tmp_path: Path, dicom_tree: Path) -> None:
    res = runner.invoke(app, ["attack", "--dataset", f"dicom:{dicom_tree}", "--arch", "smallcnn", "--image-size",
                              "16", "--sigmas", "0,1e-3", "--n-images", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert {r["noise_multiplier"] for r in json.loads(res.stdout)["rows"]} == {0.0, 1e-3}
    assert "privacy unit: patient" in res.output and SECRET not in res.output

    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", f"dicom:{dicom_tree}", "--arch", "smallcnn", "--image-size", "16",
                              "--sigma", "1.0", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--out",
                              str(out), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["privacy"]["unit"] == "patient" and obj["privacy"]["records_per_patient"] == IMAGES_PER_PATIENT
    # Direction: three images moving together are protected less than one (group privacy).
    assert obj["epsilon_patient"] > obj["epsilon_achieved"]
    assert SECRET not in res.output and SECRET not in (out / "metrics.json").read_text()
    from dpaudit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.extra["records_per_patient"] == IMAGES_PER_PATIENT
    assert SECRET not in json.dumps(ckpt.extra) + str(ckpt.label_names) + str(ckpt.dataset or "").replace(
        str(dicom_tree), "")

    res = runner.invoke(app, ["bounds", "--model", str(out / "model.pt"), "--json"])
    assert res.exit_code == 0, res.output
    b = json.loads(res.stdout)
    assert b["records_per_patient"] == IMAGES_PER_PATIENT and b["privacy_unit"] == "patient"
    # the same two keys as train's result: epsilon per image, epsilon_patient per patient
    assert b["epsilon_patient"] == pytest.approx(obj["epsilon_patient"], rel=1e-9)
    assert b["epsilon"] < b["epsilon_patient"]
    res = runner.invoke(app, ["bounds", "--model", str(out / "model.pt"), "--privacy-unit", "image", "--json"])
    assert json.loads(res.stdout)["records_per_patient"] == 1

    prof = tmp_path / "prof"
    res = runner.invoke(app, ["profile", "--dataset", f"dicom:{dicom_tree}", "--arch", "smallcnn", "--image-size",
                              "16", "--epsilons", "8", "--no-non-private", "--seeds", "1", "--epochs", "1",
                              "--batch-size", "4", "--attack-images", "2", "--decoder", "strong", "--threads", "1",
                              "--out", str(prof), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["privacy_unit"] == "patient" and summary["records_per_patient"] == IMAGES_PER_PATIENT
    text = (prof / "profile.json").read_text()
    data = json.loads(text)
    assert data["dataset"]["privacy"]["records_per_patient"] == IMAGES_PER_PATIENT
    assert data["dataset"]["privacy"]["histogram"] == [[IMAGES_PER_PATIENT, data["dataset"]["privacy"]["n_units"]]]
    assert all(b["records_per_patient"] == IMAGES_PER_PATIENT and b["epsilon_patient"] > b["epsilon"]
               for b in data["bounds"])
    from pypdf import PdfReader

    pages = [p.extract_text() for p in PdfReader(prof / "report.pdf").pages]
    assert "privacy unit: patient" in " ".join(pages[0].split())
    assert SECRET not in res.output
    # No identifier in profile.json or the PDF (the data path itself names the folder, not a patient).
    assert SECRET not in text.replace(str(dicom_tree), "")
    assert SECRET not in "".join(pages).replace(str(dicom_tree), "")
    assert SECRET.encode() not in (prof / "report.pdf").read_bytes().replace(str(dicom_tree).encode(), b"")


def test_train_on_a_nifti_folder_volume_is_the_patient(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "nifti"
    for i in range(10):
        vol = np.stack([blob(rng, 16) for _ in range(4)], axis=-1).astype(np.float32)
        nifti_file(root / ("a" if i % 2 else "b") / f"vol{i}.nii.gz", vol)
    res = runner.invoke(app, ["train", "--dataset", f"nifti:{root}", "--arch", "smallcnn", "--image-size", "16",
                              "--sigma", "1.0", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["privacy"]["unit"] == "patient" and obj["privacy"]["records_per_patient"] == 4  # 4 axial slices per volume


def test_image_level_data_say_so_and_refuse_patient_unit(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    args = ["train", "--dataset", f"folder:{tmp_path}", "--arch", "smallcnn", "--image-size", "16", "--sigma", "1",
            "--epochs", "1", "--batch-size", "4", "--threads", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "privacy unit: image (the data carry no patient ids; k = 1)" in res.output
    res = runner.invoke(app, [*args, "--privacy-unit", "patient"])
    assert res.exit_code == 2 and "--privacy-unit image" in res.output and "Traceback" not in res.output


def test_bad_dicom_file_is_one_line_naming_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    for p in range(4):
        dicom_file(tmp_path / f"p{p}.dcm", blob(rng, 16).astype(np.uint16), patient=f"P{p}")
    bad = dicom_file(tmp_path / "bad.dcm", blob(rng, 16).astype(np.uint16), patient="P9")
    bad.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    from pydicom.encaps import encapsulate

    bad.PixelData = encapsulate([b"\0" * 16])
    bad["PixelData"].VR = "OB"
    bad["PixelData"].is_undefined_length = True
    bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    res = runner.invoke(app, ["attack", "--dataset", f"dicom:{tmp_path}", "--arch", "smallcnn", "--image-size",
                              "16", "--sigmas", "0", "--n-images", "2"])
    assert res.exit_code == 2 and "bad.dcm" in res.output and "Fix:" in res.output
    assert "Traceback" not in res.output


def test_float_maps_non_image_objects_and_window_name_no_file_outside_stderr(tmp_path: Path,
                                                                            rng: np.random.Generator) -> None:
    """Parametric maps (float pixel data), a segmentation and an RT dose grid beside them, an unreadable float file,
    MR and CT images under --window: what was mapped or skipped is counted in the JSON and the console notes, and
    the files are named on stderr only."""
    root = tmp_path / "dicom"
    for p in range(8):
        cls = "nodule" if p % 2 else "normal"
        float_dicom_file(root / cls / f"{SECRET}-{p}" / f"{SECRET}-adc.dcm", blob(rng, 16), patient=f"{SECRET}-{p}")
        dicom_file(root / cls / f"{SECRET}-{p}" / f"{SECRET}-ct.dcm", blob(rng, 16).astype(np.uint16),
                   patient=f"{SECRET}-{p}")
    for name, sop_class in (("seg", "1.2.840.10008.5.1.4.1.1.66.4"), ("dose", "1.2.840.10008.5.1.4.1.1.481.2")):
        ds = dicom_file(root / "nodule" / f"{SECRET}-1" / f"{SECRET}-{name}.dcm", blob(rng, 16).astype(np.uint16),
                        patient=f"{SECRET}-1")
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.save_as(root / "nodule" / f"{SECRET}-1" / f"{SECRET}-{name}.dcm", enforce_file_format=True)
    float_dicom_file(root / "normal" / f"{SECRET}-0" / f"{SECRET}-bad.dcm", blob(rng, 16), patient=f"{SECRET}-0",
                     photometric="MONOCHROME1")
    args = ["train", "--dataset", f"dicom:{root}", "--arch", "smallcnn", "--image-size", "16", "--sigma", "1.0",
            "--epochs", "1", "--batch-size", "4", "--threads", "1", "--json"]
    for i, (extra, expected) in enumerate((([], "8 DICOM file(s) with float pixel data"),
                                           (["--window", "0,3000"], "--window 0,3000 applied to 8 CT file(s) and to 8 "
                                                                    "DICOM file(s) of other modalities too (MR 8)"))):
        res = runner.invoke(app, [*args, "--out", str(tmp_path / f"run{i}"), *extra])
        assert res.exit_code == 0, res.output
        for out in (res.stdout, (tmp_path / f"run{i}" / "metrics.json").read_text()):
            out = out.replace(str(root), "").replace(str(tmp_path), "")
            assert expected in out
            for reason in ("not an image (Segmentation Storage)", "not an image (RT Dose Storage)", "unreadable"):
                assert reason in out
            assert SECRET not in out and ".dcm" not in out
        assert f"{SECRET}-bad.dcm" in res.stderr  # the unreadable file is named where only the user sees it
