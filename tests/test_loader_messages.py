"""What the loaders say about a labels file naming skipped files, an MSD folder without dataset.json, and DICOM
files without a usable PatientID."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dpaudit.data import load_splits
from dpaudit.errors import DataError
from dpaudit.volumes import load_segmentation_splits

SIZE = 8


def listen(caplog: pytest.LogCaptureFixture):
    log = logging.getLogger("dpaudit.data.skipped")
    log.addHandler(caplog.handler)  # the CLI tests may have stopped the logger propagating
    return log


def test_labelled_files_that_were_skipped_are_said_to_be_skipped_and_why(tmp_path: Path, rng: np.random.Generator,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    rows = ["path,label"]
    for i in range(8):
        dicom_file(tmp_path / f"{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"P{i}")
        rows.append(f"{i}.dcm,{i % 2}")
    (tmp_path / "notes.txt").write_text("not an image")
    report = Dataset()  # a structured report: DICOM without pixel data
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.SOPInstanceUID = generate_uid()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    (tmp_path / "sub").mkdir()
    report.save_as(tmp_path / "sub" / "sr.dcm", enforce_file_format=True)
    rows += ["notes.txt,0", "sub\\sr.dcm,1", "gone.dcm,1"]
    (tmp_path.parent / "labels.csv").write_text("\n".join(rows) + "\n")
    log = listen(caplog)
    try:
        with caplog.at_level(logging.WARNING, logger="dpaudit.data.skipped"):
            s = load_splits(f"dicom:{tmp_path}", image_size=SIZE, labels=tmp_path.parent / "labels.csv")
    finally:
        log.removeHandler(caplog.handler)
    assert "labelled but skipped: 'notes.txt' (not DICOM), 'sub/sr.dcm' (not an image (no pixel data))" in caplog.text
    assert "labelled but not found: 'gone.dcm'" in caplog.text
    assert "notes.txt" not in caplog.text.split("labelled but not found")[1]
    assert any(n.startswith("2 row(s) of the labels file name files that were skipped (1 not DICOM, 1 not an image")
               for n in s.notes)
    assert any(n.startswith("1 row(s) of the labels file match no image") for n in s.notes)


def test_nifti_labels_naming_a_skipped_file(tmp_path: Path, rng: np.random.Generator,
                                           caplog: pytest.LogCaptureFixture) -> None:
    rows = ["file,label"]
    for i in range(6):
        nifti_file(tmp_path / f"v{i}.nii", rng.random((SIZE, SIZE, 2)).astype(np.float32))
        rows.append(f"v{i}.nii,{i % 2}")
    (tmp_path / "readme.txt").write_text("x")
    rows.append("readme.txt,0")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    log = listen(caplog)
    try:
        with caplog.at_level(logging.WARNING, logger="dpaudit.data.skipped"):
            load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    finally:
        log.removeHandler(caplog.handler)
    assert "labelled but skipped: 'readme.txt' (not NIfTI)" in caplog.text and "not found" not in caplog.text


def test_msd_folder_without_dataset_json_says_it_is_missing_and_what_it_holds(tmp_path: Path) -> None:
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / "Task09" / sub).mkdir(parents=True)
    with pytest.raises(DataError, match=r"the task folder has no dataset.json \(imagesTr/ and labelsTr/ are there\)"
                       r".*Fix: add a dataset.json holding the class names.*\"labels\"") as info:
        load_segmentation_splits(f"msd:{tmp_path / 'Task09'}", image_size=SIZE)
    assert "pass the task folder itself" not in str(info.value)
    (tmp_path / "Task09" / "dataset.json").write_text('{"labels": {"0": "background", "1": "x"}}')
    with pytest.raises(DataError, match=r"no dataset.json, imagesTr/ or labelsTr/ in this folder\. Fix: pass the task "
                       r"folder that holds it: --dataset msd:.*Task09"):
        load_segmentation_splits(f"msd:{tmp_path}", image_size=SIZE)


def test_missing_patient_id_note_gives_the_fix(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        dicom_file(tmp_path / f"{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=None, sex=None, age=None)
    note = next(n for n in load_splits(f"dicom:{tmp_path}", image_size=SIZE).notes if "StudyInstanceUID (4)" in n)
    assert "--dataset csv:FILE with path, label and patient_id columns" in note and "--privacy-unit image" in note


def test_msd_volume_copied_under_another_case_name_is_refused_naming_both(tmp_path: Path,
                                                                          rng: np.random.Generator) -> None:
    """A copied scan would count as two patients (k half the person's slices) and could lie in two splits."""
    import shutil

    from test_segmentation import write_msd

    root = write_msd(tmp_path / "Task03_Liver", rng)
    assert load_segmentation_splits(f"msd:{root}", image_size=SIZE).records_per_patient == 6
    shutil.copy(root / "imagesTr" / "liver_1.nii.gz", root / "imagesTr" / "liver_9.nii.gz")
    shutil.copy(root / "labelsTr" / "liver_1.nii.gz", root / "labelsTr" / "liver_9.nii.gz")
    with pytest.raises(DataError, match=r"imagesTr/liver_1.nii.gz and imagesTr/liver_9.nii.gz are identical files.*"
                       r"Fix: remove one of them and its label map"):
        load_segmentation_splits(f"msd:{root}", image_size=SIZE)
