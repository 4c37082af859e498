"""Columns of a user's table that identify people are never subgroups or sites, and a patient-id column in any of
the field's spellings is read as the patient: planted names, ids and free text reach no output (console, every
JSON, the report), and k counts a patient's images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.data import load_splits, privacy_unit
from dpaudit.errors import DataError
from dpaudit.identifiers import column_key, identifier_like, identifier_reason, patient_id_column

runner = CliRunner()
#: In every planted identifier (any case): searched for in everything a run writes.
PLANTED = "zyqx"
PER_PATIENT = 3
SMALL = ["--image-size", "16", "--arch", "smallcnn", "--arch-args", '{"width": 4}', "--threads", "1"]


@pytest.mark.parametrize("name", ["patient_id", "PatientID", "patientid", "Patient ID", "PATIENT-ID", "patient.id",
                                  "Patient_Identifier", "patient", "subject_id", "participant_id", "case_id"])
def test_the_patient_id_column_in_the_fields_spellings(name: str) -> None:
    assert patient_id_column(["path", "label", name, "sex"], "m.csv") == name
    assert identifier_reason(name) is not None  # and so never a subgroup nor a site


def test_two_patient_id_columns_are_refused_naming_both() -> None:
    with pytest.raises(DataError, match=r"m.csv has 2 columns that name the patient \('PatientID', 'patient_id'\)"):
        patient_id_column(["PatientID", "patient_id"], "m.csv")


@pytest.mark.parametrize("name", [
    "PatientName", "patient_name", "Patient's Name", "OtherPatientIDs", "PatientBirthDate", "date_of_birth", "DOB",
    "AccessionNumber", "accession", "StudyInstanceUID", "Series Instance UID", "SOPInstanceUID", "StudyID", "MRN",
    "medical_record_number", "first_name", "Surname", "address", "Phone", "e-mail", "SSN", "national_id",
    "image_id", "file_name", "StudyInstanceUID_note", "patient_id_old"])
def test_identifying_attributes_are_identifiers_by_name(name: str) -> None:
    assert identifier_reason(name) is not None, name


@pytest.mark.parametrize("name", ["sex", "Sex", "age", "site", "scanner", "Manufacturer", "InstitutionName",
                                  "modality", "fluid_type", "class_name"])
def test_subgroup_columns_are_not_identifiers(name: str) -> None:
    assert identifier_reason(name) is None, name


def test_identifier_like_by_content() -> None:
    patients = [f"p{i // 2}" for i in range(12)]
    assert identifier_like([f"note {p}" for p in patients], patients)  # one value per patient
    assert identifier_like([f"note {i}" for i in range(12)], patients)  # free text per image
    assert not identifier_like(["A", "B", "C"] * 4, patients)  # three sites of several patients each
    assert not identifier_like(["F", "M"] * 6, patients)
    assert column_key(" Patient-ID ") == "patientid"


def _png_manifest(root: Path, rng: np.random.Generator, patient_column: str = "Patient ID") -> Path:
    """24 patients x 3 PNGs with a patient-id column spelt ``patient_column``, real subgroups (sex, site, scanner)
    and planted identifiers: a name, an MRN, and a free-text column named like no identifier ('remark')."""
    from PIL import Image

    root.mkdir(parents=True)
    rows = [f"path,label,{patient_column},sex,site,scanner,PatientName,mrn,remark"]
    for p in range(24):
        lab = p % 2
        for j in range(PER_PATIENT):
            name = f"i{p}_{j}.png"
            Image.fromarray((rng.random((8, 8)) * 100 + 150 * lab).astype(np.uint8)).save(root / name)
            rows.append(f"{name},{'ab'[lab]},PID-Zyqx-{p},{'FM'[p % 2]},{'AB'[p // 12]},S{p % 3},"
                        f"Doe^Zyqx{p},MRN-ZYQX-{p},seen by Dr Zyqx on visit {p}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def _no_planted(*texts: str) -> None:
    for text in texts:
        assert PLANTED not in text.casefold(), text[max(0, text.casefold().find(PLANTED) - 200):][:400]


def _written(out: Path) -> str:
    """Every JSON and the report's text under ``out``."""
    from pypdf import PdfReader

    parts = [p.read_text() for p in sorted(out.rglob("*.json"))]
    parts += [" ".join(page.extract_text() or "" for page in PdfReader(p).pages) for p in sorted(out.rglob("*.pdf"))]
    return "\n".join(parts)


def test_a_manifest_with_planted_identifiers_writes_none_and_counts_k(tmp_path: Path,
                                                                       rng: np.random.Generator) -> None:
    manifest = _png_manifest(tmp_path / "data", rng)
    data = ["--dataset", f"csv:{manifest}", *SMALL]
    out = tmp_path / "train"
    res = runner.invoke(app, ["train", *data, "--epsilon", "8", "--epochs", "1", "--batch-size", "8", "--out",
                              str(out), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    # The 'Patient ID' column is the patient: k = 3, not 1 (each image its own unit).
    assert obj["privacy"]["unit"] == "patient" and obj["privacy"]["records_per_patient"] == PER_PATIENT
    notes = " ".join(obj["data_notes"])
    for column in ("PatientName", "mrn", "remark"):
        assert f"column {column!r} of the manifest not used as a subgroup" in notes, notes
        assert f"column {column!r} of the manifest is not used as a subgroup or site" in res.stderr
    assert "most of its values belong to a single patient each" in notes  # 'remark', by content
    assert {g["group"] for g in obj["metrics"]["subgroups"]} == {"sex", "site", "scanner"}  # real ones kept
    _no_planted(res.stdout, res.stderr, _written(out))

    prof = tmp_path / "prof"
    res = runner.invoke(app, ["profile", *data, "--epsilons", "8", "--no-non-private", "--seeds", "1", "--epochs",
                              "1", "--batch-size", "8", "--attack-images", "2", "--out", str(prof), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["records_per_patient"] == PER_PATIENT
    _no_planted(res.stdout, res.stderr, _written(prof))

    res = runner.invoke(app, ["federated", "train", *data, "--clients", "2", "--rounds", "1", "--epsilon", "8",
                              "--batch-size", "4", "--partition", "column:site", "--json"])
    assert res.exit_code == 0, res.output
    _no_planted(res.stdout, res.stderr)
    for column in ("PatientName", "mrn", "Patient_ID"):  # by name: refused before any data are read
        res = runner.invoke(app, ["federated", "train", *data, "--clients", "2", "--rounds", "1", "--epsilon", "8",
                                  "--partition", f"column:{column}"])
        line = res.output.strip()
        assert res.exit_code == 2 and "\n" not in line and "Traceback" not in line, res.output
        assert line.startswith(f"error: --partition column:{column}: the column {column!r} identifies patients")
        assert "Fix: pass --partition column:NAME with a site or scanner column, or --partition iid." in line
    # by content: 'remark' is no metadata column (the loader dropped it), and no value is shown
    res = runner.invoke(app, ["federated", "train", *data, "--clients", "2", "--rounds", "1", "--epsilon", "8",
                              "--partition", "column:remark"])
    assert res.exit_code == 2 and "no metadata column 'remark'" in res.output, res.output
    _no_planted(res.output)


@pytest.mark.parametrize("column", ["participant_id", "subject_id", "patient", "case_id"])
def test_a_person_column_in_other_spellings_is_read_as_the_patient(column: str, tmp_path: Path,
                                                                  rng: np.random.Generator) -> None:
    """A BIDS participant id, a subject id, a bare 'patient' or a case id groups a person's images: k counts them
    (dropped as an identifier and not read, k would be 1)."""
    manifest = _png_manifest(tmp_path / "data", rng, patient_column=column)
    unit = privacy_unit(load_splits(f"csv:{manifest}", image_size=8), "patient")
    assert unit.unit == "patient" and unit.records_per_patient == PER_PATIENT


def test_two_patient_id_columns_in_a_manifest_are_one_line(tmp_path: Path, rng: np.random.Generator) -> None:
    manifest = _png_manifest(tmp_path / "data", rng, patient_column="PatientID")
    text = manifest.read_text().splitlines()
    manifest.write_text("\n".join([text[0] + ",patient_id", *(r + ",x" for r in text[1:])]) + "\n")
    res = runner.invoke(app, ["train", "--dataset", f"csv:{manifest}", *SMALL, "--epsilon", "8"])
    line = res.output.strip()
    assert res.exit_code == 2 and "\n" not in line, res.output
    assert "m.csv has 2 columns that name the patient ('PatientID', 'patient_id')" in line and "Fix: keep one" in line


def test_a_nifti_patient_id_column_is_linked_with_the_bids_subject(tmp_path: Path, rng: np.random.Generator) -> None:
    """BIDS subjects 0..9; the labels' PatientID puts subjects 0 and 2 under one patient, one of subject 2's volumes
    under another patient, who also has a volume without a subject: linked, they are one unit (k counts all their
    slices)."""
    root = tmp_path / "mri"
    rows = ["file,label,PatientID,PatientName"]
    pids = {0: "A", 1: "B", 2: "A", 3: "C", 4: "D", 5: "E"}
    for s in range(6):
        for run in range(2):
            name = f"sub-{s:02d}_run-{run}_T1w.nii.gz"
            nifti_file(root / name, rng.random((8, 8, 2)).astype(np.float32) + s % 2)
            pid = "F" if (s, run) == (2, 1) else pids[s]
            rows.append(f"{name},{'ab'[s % 2]},PID-Zyqx-{pid},Doe^Zyqx{s}")
    for s in (6, 7, 8, 9):  # more patients, one volume each, so that the split has room
        name = f"sub-{s:02d}_T1w.nii.gz"
        nifti_file(root / name, rng.random((8, 8, 2)).astype(np.float32) + s % 2)
        rows.append(f"{name},{'ab'[s % 2]},PID-Zyqx-{s},Doe^Zyqx{s}")
    rows.append("x.nii.gz,a,PID-Zyqx-F,Doe^ZyqxX")  # subject-less volume of patient F: joins it too
    nifti_file(root / "x.nii.gz", rng.random((8, 8, 2)).astype(np.float32))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = load_splits(f"nifti:{root}", image_size=8)
    ids = np.concatenate([s.patient_ids for s in (splits.train, splits.val, splits.test)])
    _, counts = np.unique(ids, return_counts=True)
    # subjects 0 and 2 (2 volumes each) and x.nii.gz: 5 volumes x 2 slices in one unit
    assert sorted(counts.tolist()) == [2, 2, 2, 2, 4, 4, 4, 4, 10]
    notes = " ".join(splits.notes)
    assert "carry both a patient id ('PatientID' column) and a BIDS subject" in notes
    assert "group(s) joined that one key alone keeps apart" in notes
    assert "column 'PatientName' of the labels file not used as a subgroup" in notes
    assert splits.train.groups == {} and PLANTED not in (notes + str(ids.tolist())).casefold()


def test_a_dicom_labels_patient_column_links_header_patients(tmp_path: Path, rng: np.random.Generator) -> None:
    """Keyed by path, the labels give two header PatientIDs one patient_id: one unit, k counts both."""
    root = tmp_path / "dcm"
    rows = ["path,label,patient_id,AccessionNumber,sex"]
    for p in range(10):
        for j in range(2):
            rel = f"p{p}/IM{j}.dcm"
            dicom_file(root / rel, (rng.random((12, 12)) * 1000 + 1000 * (p % 2)).astype(np.uint16),
                       patient=f"HDR-{p}")
            linked = "P0" if p in (0, 2) else f"P{p}"  # header patients 0 and 2: one person
            rows.append(f"{rel},{p % 2},{linked},ACC-Zyqx-{p}-{j},{'FM'[p % 2]}")
    (root.parent / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = load_splits(f"dicom:{root}", image_size=8, labels=root.parent / "labels.csv")
    ids = np.concatenate([s.patient_ids for s in (splits.train, splits.val, splits.test)])
    _, counts = np.unique(ids, return_counts=True)
    assert sorted(counts.tolist()) == [2] * 8 + [4]
    if 4 in np.unique(splits.train.patient_ids, return_counts=True)[1]:
        assert privacy_unit(splits).records_per_patient == 4
    notes = " ".join(splits.notes)
    assert "1 group(s) joined" in notes and "'AccessionNumber' of the labels file not used" in notes
    assert set(splits.train.groups) == {"sex", "age_band"}
