"""Dataset paths and patient identifiers: errors and stderr warnings name the file (the user needs it to fix it),
but nothing dpaudit writes (JSON, metrics.json, checkpoints) holds a path or file name found inside a dataset; a
labelled-data inconsistency is never dropped without a word; a placeholder PatientID is no patient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.errors import DataError

runner = CliRunner()
#: Fake patient names in the file and folder names, as in a usual export layout.
NAMES = ("SMITH_JOHN", "DOE_JANE")
TRAIN = ["train", "--epsilon", "8", "--epochs", "1", "--image-size", "16", "--arch", "smallcnn", "--arch-args",
         '{"width": 4}', "--batch-size", "4", "--threads", "1"]


def _written(out: Path, stdout: str) -> bytes:
    """Every byte a run wrote (checkpoint included: a zip of pickles, searched as bytes) and its JSON output."""
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()) + stdout.encode()


def _assert_no_identifier(data: bytes, *more: str) -> None:
    for name in (*NAMES, *more):
        assert name.encode() not in data, name


def _dicom_tree(root: Path, rng: np.random.Generator, *, patient: str | None) -> Path:
    for c, cls in enumerate(("benign", "malignant")):
        for i in range(16):
            pixels = (rng.random((12, 12)) * 1000 + 1000 * c).astype(np.uint16)
            dicom_file(root / cls / f"{NAMES[i % 2]}_PID{i:04d}" / f"IM{i:04d}.dcm", pixels, patient=patient)
    # One file that does not decode (its pixel data cut off), in a folder named after a patient.
    bad = root / "benign" / "DOE_JANE_PID9999" / "IM9999.dcm"
    dicom_file(bad, rng.integers(0, 4000, (12, 12)).astype(np.uint16), patient=patient)
    bad.write_bytes(bad.read_bytes()[:-100])
    return bad


@pytest.mark.parametrize("patient", ["ANONYMOUS", "SITE-7", None])
def test_a_placeholder_patient_id_is_no_patient_and_no_name_is_written(patient: str | None, tmp_path: Path,
                                                                       rng: np.random.Generator) -> None:
    bad = _dicom_tree(tmp_path / "data", rng, patient=patient)
    out = tmp_path / "out"
    res = runner.invoke(app, [*TRAIN, "--dataset", f"dicom:{tmp_path / 'data'}", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    # stderr names the unreadable file, so that the user can fix it ...
    shown = bad.relative_to(tmp_path / "data").as_posix()  # relative to the dataset's folder, named once
    assert f"skipped an unreadable file: DICOM file {shown!r}" in res.stderr
    assert str(tmp_path) not in res.stderr.split("skipped an unreadable file")[1].split("\n")[0]
    assert "no file has a usable PatientID" in res.stderr and "--privacy-unit image" in res.stderr
    obj = json.loads(res.stdout)
    # ... the grouping's source is said truthfully ...
    assert obj["privacy"]["data_unit"] == "study"
    assert "grouped by StudyInstanceUID" in " ".join(obj["data_notes"])
    # ... and nothing written holds a name from the dataset's paths (nor the placeholder).
    _assert_no_identifier(_written(out, res.stdout), "PID0", *(() if patient is None else (patient,)))
    # The per-image guarantee the warning offers works (the split no longer collapses into one "patient").
    res = runner.invoke(app, [*TRAIN, "--dataset", f"dicom:{tmp_path / 'data'}", "--privacy-unit", "image"])
    assert res.exit_code == 0, res.output
    assert "privacy unit: image (--privacy-unit image; k = 1)" in res.stdout


def test_nifti_names_stay_on_stderr_and_labels_without_images_are_counted(tmp_path: Path,
                                                                          rng: np.random.Generator) -> None:
    root = tmp_path / "mri"
    rows = ["file,label"]
    for i in range(12):
        name = f"{NAMES[i % 2]}_{i:02d}.nii.gz"
        nifti_file(root / name, rng.random((10, 10, 3)).astype(np.float32) + (i % 2))
        rows.append(f"{name},{'ab'[i % 2]}")
    (root / "SMITH_JOHN_99.nii.gz").write_bytes((root / "SMITH_JOHN_00.nii.gz").read_bytes()[:40])  # truncated
    rows += ["SMITH_JOHN_99.nii.gz,a", "DOE_JANE_77.nii.gz,b"]  # the second: labelled, but there is no such file
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    res = runner.invoke(app, [*TRAIN, "--dataset", f"nifti:{root}", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert "SMITH_JOHN_99.nii.gz" in res.stderr and "skipped an unreadable file" in res.stderr
    assert "labelled but not found: 'DOE_JANE_77.nii.gz'" in res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["skipped"] == {"unreadable": 1}
    assert "1 row(s) of the labels file match no image (by file)" in " ".join(metrics["data"]["notes"])
    _assert_no_identifier(_written(out, res.stdout), ".nii")


def test_an_msd_volume_without_its_label_map_is_an_error(tmp_path: Path, rng: np.random.Generator) -> None:
    from test_segmentation import write_msd

    from dpaudit.volumes import load_segmentation_splits

    root = write_msd(tmp_path / "Task03_Liver", rng)
    (root / "labelsTr" / "liver_3.nii.gz").unlink()
    with pytest.raises(DataError, match=r"1 file\(s\) without their pair \(imagesTr/liver_3\.nii\.gz has no "
                                        r"label map liver_3\.nii\(\.gz\) in labelsTr/\)\. Fix: add the missing"):
        load_segmentation_splits(f"msd:{root}", image_size=16)


PROFILE = ["profile", "--epsilons", "8", "--seeds", "1", "--epochs", "1", "--image-size", "16", "--arch", "smallcnn",
           "--arch-args", '{"width": 4}', "--batch-size", "4", "--attack-images", "2", "--threads", "1"]


@pytest.mark.parametrize("patient", ["real", "ANONYMOUS"])
def test_class_folders_that_are_patients_are_refused_and_no_name_is_written(patient: str, tmp_path: Path,
                                                                            rng: np.random.Generator) -> None:
    """A PACS export by patient (first-level folders SMITH_JOHN_PID0000, ...): with real PatientIDs every class
    is one patient; with a placeholder PatientID (and studies that do not group) the folder names hold the
    files' PatientName. Refused either way, before anything is written, with a fix that names a flag of the
    command."""
    root = tmp_path / "export"
    for p in range(8):
        for j in range(3):
            pid = f"MRN{p:05d}" if patient == "real" else "ANONYMOUS"
            dicom_file(root / f"{NAMES[p % 2]}_PID{p:04d}" / f"IM{j:04d}.dcm",
                       (rng.random((12, 12)) * 1000).astype(np.uint16), patient=pid,
                       StudyInstanceUID=f"1.2.3.{p}.{j}", PatientName=NAMES[p % 2].replace("_", "^"))
    out = tmp_path / "out"
    res = runner.invoke(app, [*PROFILE, "--dataset", f"dicom:{root}", "--out", str(out), "--max-rero", "0.05"])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip().splitlines()[-1]
    if patient == "real":
        assert "every class folder holds the images of one patient (8 class folders, one patient each)" in line
    else:
        assert "class folder 'DOE_JANE_PID0001' (8 of 8 class folders) holds the PatientID, PatientName or subject label" in line
    assert "Fix: label the files with --labels FILE.csv" in line and "Traceback" not in res.output
    assert not (out / "profile.json").exists() and not (out / "report.pdf").exists()
    _assert_no_identifier(_written(out, res.stdout) if out.exists() else res.stdout.encode(), "PID000")
    # The fix works: a labels file keyed by path gives the classes, and no folder name is written.
    rows = ["path,label"] + [f"{p.relative_to(root).as_posix()},{'ab'[int(p.parent.name[-1]) % 2]}"
                             for p in sorted(root.rglob("*.dcm"))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    res = runner.invoke(app, [*TRAIN, "--dataset", f"dicom:{root}", "--labels", str(tmp_path / "labels.csv"),
                              "--out", str(out), "--json", "--privacy-unit", "image"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["label_names"] == ["a", "b"]
    _assert_no_identifier(_written(out, res.stdout), "PID000")


def test_a_class_folder_named_after_the_patient_in_it_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    """Folders of several patients pass whatever their names ('site_001'); a folder whose name holds the PatientID
    or the PatientName of its files does not, whatever the case and punctuation ('doe_jane' for DOE^JANE)."""
    from dpaudit.data import load_splits

    root = tmp_path / "tree"
    for c, folder in enumerate(("site_001", "malignant", "PATIENT")):
        for p in range(1 if c == 2 else 4):
            for j in range(2):
                dicom_file(root / folder / f"p{p}" / f"IM{j}.dcm", (rng.random((12, 12)) * 1000).astype(np.uint16),
                           patient="PID0042" if c == 2 else f"MRN{c}{p}",
                           PatientName="DOE^JANE" if c == 2 else f"ROE^R{c}{p}")
    for named in ("DOE_JANE_PID0042", "doe jane", "PID0042", "Jane"):
        (root / next(d for d in root.iterdir() if d.name not in ("site_001", "malignant"))).rename(root / named)
        with pytest.raises(DataError, match=rf"class folder '{named}' \(1 of 3 class folders\) holds the PatientID, "
                                            r"PatientName or subject label of the files in it: a patient identifier.*Fix: label the "
                                            r"files with --labels FILE.csv .*, or rename the class folders"):
            load_splits(f"dicom:{root}", image_size=16)
    (root / "Jane").rename(root / "benign")
    assert load_splits(f"dicom:{root}", image_size=16).label_names == ("benign", "malignant", "site_001")


ORDINARY = ("class_001", "T2_2020", "ISIC_2019_MEL", "100X", "CD138", "ICD10_C509", "2019", "covid19", "grade_1")


def test_ordinary_class_names_with_digits_load(tmp_path: Path, rng: np.random.Generator) -> None:
    """Class names with digits are classes: image folders (no patient ids) and DICOM trees with a placeholder
    PatientID (grouped by study) and with real ones load them."""
    from PIL import Image

    from dpaudit.data import load_splits

    for c, folder in enumerate(ORDINARY):
        for i in range(3):
            d = tmp_path / "png" / folder
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / f"{i}.png")
            for tree, pid in (("anon", "ANONYMOUS"), ("ids", f"MRN{c}{i}")):
                dicom_file(tmp_path / tree / folder / f"p{i}" / "IM0.dcm",
                           (rng.random((12, 12)) * 1000).astype(np.uint16), patient=pid)
    assert load_splits(f"folder:{tmp_path / 'png'}", image_size=8).label_names == tuple(sorted(ORDINARY))
    for tree in ("anon", "ids"):
        assert load_splits(f"dicom:{tmp_path / tree}", image_size=8).label_names == tuple(sorted(ORDINARY)), tree


def test_nifti_and_image_folders_check_their_class_folder_names(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    from dpaudit.data import load_splits

    for i in range(4):
        nifti_file(tmp_path / "mri" / f"{NAMES[i % 2]}_{i:03d}" / "t1.nii.gz", rng.random((8, 8, 3)).astype(np.float32))
        for j in range(3):
            d = tmp_path / "png" / f"{NAMES[i % 2]}^{i}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / f"{j}.png")
    with pytest.raises(DataError, match=r"every class folder holds the images of one volume .* Fix: label the "
                                        r"volumes with --labels FILE.csv"):
        load_splits(f"nifti:{tmp_path / 'mri'}", image_size=8)
    with pytest.raises(DataError, match=r"class folder 'DOE_JANE\^1' \(4 of 4 class folders\) holds a '\^', DICOM's "
                                        r"separator .* Fix: list the images with their labels in a manifest "
                                        r"\(--dataset csv:FILE.*, or rename the class folders to class names"):
        load_splits(f"folder:{tmp_path / 'png'}", image_size=8)


def test_a_nifti_class_folder_named_after_its_bids_subject_is_refused(tmp_path: Path, rng: np.random.Generator
                                                                     ) -> None:
    from dpaudit.data import load_splits

    for folder, subjects in (("benign", ("01", "02")), ("malignant", ("03", "04")), ("case_DOE42", ("DOE42",))):
        for sub in subjects:
            for ses in ("1", "2"):
                nifti_file(tmp_path / folder / f"sub-{sub}" / f"ses-{ses}" / f"sub-{sub}_ses-{ses}_T1w.nii.gz",
                           rng.random((8, 8, 2)).astype(np.float32))
    with pytest.raises(DataError, match=r"class folder 'case_DOE42' \(1 of 3 class folders\) holds the PatientID, "
                                        r"PatientName or subject label of the files in it.*Fix: label the volumes with --labels"):
        load_splits(f"nifti:{tmp_path}", image_size=8)
    (tmp_path / "case_DOE42").rename(tmp_path / "cyst")
    assert load_splits(f"nifti:{tmp_path}", image_size=8).label_names == ("benign", "cyst", "malignant")
