"""Columns of a user's table that identify people are never subgroups or sites, a column is a subgroup only when
its name is a known subgroup attribute or the user marks it (subgroup_NAME), and every column that names the patient
(patient_id in the field's spellings, an MRN, a national number, ...) is read as the patient, several linked: planted
names, ids and free text reach no output (console, every JSON, the report), and k counts a patient's images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.data import load_splits, privacy_unit
from dpaudit.identifiers import (
    column_key,
    identifier_like,
    identifier_reason,
    patient_id_columns,
    subgroup_name,
)

runner = CliRunner()
#: In every planted identifier (any case): searched for in everything a run writes.
PLANTED = "zyqx"
PER_PATIENT = 3
SMALL = ["--image-size", "16", "--arch", "smallcnn", "--arch-args", '{"width": 4}', "--threads", "1"]


#: Columns that name a person besides the patient_id spellings: each is read as the patient.
PERSON_COLUMNS = ["MRN", "medical_record_number", "hospital_number", "NHS Number", "OtherPatientIDs", "SSN",
                  "national_id", "personnummer", "sub", "Patient Name"]


@pytest.mark.parametrize("name", ["patient_id", "PatientID", "patientid", "Patient ID", "PATIENT-ID", "patient.id",
                                  "Patient_Identifier", "patient", "subject_id", "participant_id", "case_id",
                                  *PERSON_COLUMNS])
def test_the_patient_id_column_in_the_fields_spellings(name: str) -> None:
    assert patient_id_columns(["path", "label", name, "sex"]) == [name]
    assert identifier_reason(name) is not None and subgroup_name(name) is None  # never a subgroup nor a site


def test_several_patient_columns_are_all_read() -> None:
    assert patient_id_columns(["PatientID", "site", "patient_id", "MRN"]) == ["PatientID", "patient_id", "MRN"]
    # a name holding patient_id or medical_record is read as the patient too (k never understated), marked as a
    # subgroup or not; an issuer is not: it is shared by every patient
    assert patient_id_columns(["IssuerOfPatientID", "patient_id_old", "subgroup_patient_id", "site"]) == [
        "patient_id_old", "subgroup_patient_id"]


@pytest.mark.parametrize(("name", "group"), [
    ("sex", "sex"), ("Gender", "Gender"), ("Age", "age_band"), ("patient_age", "age_band"), ("age_group", "age_group"),
    ("Site", "Site"), ("centre", "centre"), ("InstitutionName", "InstitutionName"), ("Manufacturer Model Name",
    "Manufacturer Model Name"), ("field_strength", "field_strength"), ("Fitzpatrick", "Fitzpatrick"),
    ("body_part_examined", "body_part_examined"), ("ViewPosition", "ViewPosition"), ("localization", "localization"),
    ("subgroup_pt_group", "pt_group"), ("subgroup:fluid type", "fluid type"), ("Subgroup_age", "age_band"),
    ("pt_id", None), ("remark", None), ("fluid_type", None), ("subgroup_", None)])
def test_a_column_is_a_subgroup_when_allowed_or_marked(name: str, group: str | None) -> None:
    assert subgroup_name(name) == group


@pytest.mark.parametrize("name", [
    "PatientName", "patient_name", "Patient's Name", "OtherPatientIDs", "PatientBirthDate", "date_of_birth", "DOB",
    "AccessionNumber", "accession", "StudyInstanceUID", "Series Instance UID", "SOPInstanceUID", "StudyID", "MRN",
    "medical_record_number", "first_name", "Surname", "address", "Phone", "e-mail", "SSN", "national_id",
    "image_id", "file_name", "StudyInstanceUID_note", "patient_id_old", "subgroup_mrn", "subgroup_birth_date"])
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
    and planted identifiers: a name and an MRN (patient columns too), and a free-text column marked as a subgroup
    ('subgroup_remark': dropped by content)."""
    from PIL import Image

    root.mkdir(parents=True)
    rows = [f"path,label,{patient_column},sex,site,scanner,PatientName,mrn,subgroup_remark"]
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
    assert "3 columns of the manifest name the patient ('Patient ID', 'PatientName', 'mrn'): all read" in notes
    assert ("column 'subgroup_remark' of the manifest not used as a subgroup: most of its values belong to a single "
            "patient each") in notes  # marked, and dropped by content
    assert "column 'subgroup_remark' of the manifest is not used as a subgroup or site" in res.stderr
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


def test_several_patient_columns_in_a_manifest_are_linked(tmp_path: Path, rng: np.random.Generator) -> None:
    """An NHS number shared by patients 0 and 1 (and by 2 and 3) joins them: one unit each, k = 6. A missing value
    ('NA', empty) joins nobody."""
    manifest = _png_manifest(tmp_path / "data", rng, patient_column="PatientID")
    text = manifest.read_text().splitlines()
    extra = [f"NHS-{i // (2 * PER_PATIENT)}" if i < 4 * PER_PATIENT else ("NA" if i % 2 else "")
             for i in range(len(text) - 1)]
    manifest.write_text("\n".join([text[0] + ",nhs_number", *(f"{r},{e}" for r, e in zip(text[1:], extra,
                                                                                          strict=True))]) + "\n")
    splits = load_splits(f"csv:{manifest}", image_size=8)
    ids = np.concatenate([s.patient_ids for s in (splits.train, splits.val, splits.test)])
    assert sorted(np.unique(ids, return_counts=True)[1].tolist()) == [PER_PATIENT] * 20 + [2 * PER_PATIENT] * 2
    notes = " ".join(splits.notes)
    assert "4 columns of the manifest name the patient ('PatientID', 'PatientName', 'mrn', 'nhs_number')" in notes
    assert "2 group(s) joined that one key alone keeps apart" in notes
    # the link note names the keys the rows carry: no file is in a BIDS layout, so no BIDS subject
    assert ("carry several of a patient id ('PatientID' column), a patient id ('PatientName' column), a patient id "
            "('mrn' column) and a patient id ('nhs_number' column): grouped by all") in notes
    assert "BIDS" not in notes


def _reviewer_manifest(root: Path, rng: np.random.Generator, column: str, value: str = "JOHN-DOE-{p:03d}",
                       extra: str = "") -> Path:
    """12 patients x 4 PNGs, ``path,label,COLUMN,site[,EXTRA]``: COLUMN holds ``value`` per patient, EXTRA (when
    given) a ward: two of 6 patients each (the patients 0, 1, 4, 5, ... and 2, 3, 6, 7, ...)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = [f"path,label,{column},site" + (f",{extra}" if extra else "")]
    for p in range(12):
        for j in range(4):
            name = f"im_{p}_{j}.png"
            Image.fromarray((rng.random((16, 16)) * 100 + 150 * (p % 2)).astype(np.uint8)).save(root / name)
            rows.append(f"{name},{'ab'[p % 2]},{value.format(p=p)},{'AB'[p // 6]}" + (f",G{p // 2 % 2}" if extra else ""))
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_a_column_not_asked_for_is_no_subgroup_and_its_values_reach_no_output(tmp_path: Path,
                                                                              rng: np.random.Generator) -> None:
    """'pt_id' (patient names, no recognised spelling) on data whose images are each their own unit: the content
    rule cannot tell, so only the name decides; it is dropped, named with the fix, and no value is written."""
    manifest = _reviewer_manifest(tmp_path / "data", rng, "pt_id", value="JOHN-DOE-Zyqx-{p:03d}")
    out = tmp_path / "train"
    res = runner.invoke(app, ["train", "--dataset", f"csv:{manifest}", *SMALL, "--epsilon", "8", "--epochs", "1",
                              "--batch-size", "8", "--privacy-unit", "image", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert {g["group"] for g in obj["metrics"]["subgroups"]} == {"site"}
    note = ("column 'pt_id' of the manifest not used as a subgroup: not a known subgroup attribute (sex, age, site, "
            "scanner, ...); rename it subgroup_pt_id to report it as a subgroup; if it names the patient, rename it "
            "patient_id")
    assert note in obj["data_notes"]
    assert "column 'pt_id' of the manifest is not used as a subgroup or site" in res.stderr
    _no_planted(res.stdout, res.stderr, _written(out))
    # --partition on it: no such metadata column, and the message says how to make it one
    res = runner.invoke(app, ["federated", "train", "--dataset", f"csv:{manifest}", *SMALL, "--clients", "2",
                              "--rounds", "1", "--epsilon", "8", "--partition", "column:pt_id"])
    line = res.output.strip().splitlines()[-1]  # after the loader's warning on the column
    assert res.exit_code == 2 and line.startswith("error: --partition column:pt_id: the dataset has no metadata "
                                                  "column 'pt_id'") and "Traceback" not in res.output, res.output
    assert "Fix: rename the column subgroup_pt_id in the table" in line
    _no_planted(res.output)


def test_a_marked_column_is_a_subgroup_and_a_site(tmp_path: Path, rng: np.random.Generator) -> None:
    manifest = _reviewer_manifest(tmp_path / "data", rng, "patient_id", extra="subgroup:ward")
    splits = load_splits(f"csv:{manifest}", image_size=16)
    assert set(splits.train.groups) == {"site", "ward"} and privacy_unit(splits).records_per_patient == 4
    res = runner.invoke(app, ["federated", "train", "--dataset", f"csv:{manifest}", *SMALL, "--clients", "2",
                              "--rounds", "1", "--epsilon", "8", "--batch-size", "4", "--partition", "column:ward",
                              "--json"])
    assert res.exit_code == 0, res.output


def test_two_columns_read_as_one_subgroup_are_one_line(tmp_path: Path, rng: np.random.Generator) -> None:
    manifest = _reviewer_manifest(tmp_path / "data", rng, "patient_id", extra="subgroup_site")
    res = runner.invoke(app, ["train", "--dataset", f"csv:{manifest}", *SMALL, "--epsilon", "8"])
    line = res.output.strip()
    assert res.exit_code == 2 and "\n" not in line, res.output
    assert "the manifest has two columns read as subgroup 'site' ('site' and 'subgroup_site')" in line


@pytest.mark.parametrize("column", PERSON_COLUMNS)
def test_a_person_number_column_is_read_as_the_patient(column: str, tmp_path: Path, rng: np.random.Generator) -> None:
    manifest = _reviewer_manifest(tmp_path / "data", rng, f'"{column}"', value="N{p:05d}")
    splits = load_splits(f"csv:{manifest}", image_size=16)
    assert splits.unit == "patient" and privacy_unit(splits).records_per_patient == 4


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
    assert ("carry several of a patient id ('PatientID' column), a patient id ('PatientName' column) and a BIDS "
            "subject") in notes
    assert "group(s) joined that one key alone keeps apart" in notes
    assert "2 columns of the labels file name the patient ('PatientID', 'PatientName')" in notes
    assert splits.train.groups == {} and PLANTED not in (notes + str(ids.tolist())).casefold()


def test_a_dicom_labels_patient_column_links_header_patients(tmp_path: Path, rng: np.random.Generator) -> None:
    """Keyed by path, the labels give two header PatientIDs one patient_id: one unit, k counts both."""
    root = tmp_path / "dcm"
    rows = ["path,label,patient_id,AccessionNumber,sex"]
    for p in range(12):  # 5 female units (0 and 2 linked) and 6 male: both sexes reported
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
    assert sorted(counts.tolist()) == [2] * 10 + [4]
    if 4 in np.unique(splits.train.patient_ids, return_counts=True)[1]:
        assert privacy_unit(splits).records_per_patient == 4
    notes = " ".join(splits.notes)
    assert "1 group(s) joined" in notes and "'AccessionNumber' of the labels file not used" in notes
    assert set(splits.train.groups) == {"sex", "age_band"}


def _dicom_manifest(root: Path, rng: np.random.Generator, columns: str = "", cells=lambda p, j: "") -> Path:
    """10 header patients (PatientID PAT-p) x 4 DICOM files, each file its own study, listed in a manifest
    ``path,label[,COLUMNS]``."""
    root.mkdir(parents=True)
    rows = ["path,label" + (f",{columns}" if columns else "")]
    for p in range(10):
        for j in range(4):
            name = f"p{p}_{j}.dcm"
            dicom_file(root / name, (rng.random((12, 12)) * 1000 + 1000 * (p % 2)).astype(np.uint16),
                       patient=f"PAT-Zyqx-{p:04d}")
            rows.append(f"{name},{'ab'[p % 2]}" + (f",{cells(p, j)}" if columns else ""))
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_a_manifests_dicom_files_are_grouped_by_their_header_patient(tmp_path: Path,
                                                                    rng: np.random.Generator) -> None:
    """Without a patient column the header's PatientID groups the files (was: each file its own unit, k = 1)."""
    splits = load_splits(f"csv:{_dicom_manifest(tmp_path / 'd', rng)}", image_size=8)
    assert splits.unit == "patient" and privacy_unit(splits).records_per_patient == 4
    ids = np.concatenate([s.patient_ids for s in (splits.train, splits.val, splits.test)])
    assert sorted(np.unique(ids, return_counts=True)[1].tolist()) == [4] * 10
    assert PLANTED not in (" ".join(splits.notes) + str(ids.tolist())).casefold()


def test_a_manifests_patient_column_is_linked_with_the_dicom_header(tmp_path: Path, rng: np.random.Generator) -> None:
    """The manifest's patient_id puts header patients 0 and 2 under one patient: linked, one unit of 8."""
    manifest = _dicom_manifest(tmp_path / "d", rng, "patient_id", lambda p, j: "P0" if p in (0, 2) else f"P{p}")
    splits = load_splits(f"csv:{manifest}", image_size=8)
    ids = np.concatenate([s.patient_ids for s in (splits.train, splits.val, splits.test)])
    assert sorted(np.unique(ids, return_counts=True)[1].tolist()) == [4] * 8 + [8]
    notes = " ".join(splits.notes)
    assert ("40 row(s) carry both a patient id ('patient_id' column) and a grouping from the DICOM header (PatientID, "
            "else StudyInstanceUID)") in notes and "BIDS" not in notes
    # one file each of header patients 3 and 5 given patient P3 (the others none): joins 3 and 5
    manifest = _dicom_manifest(tmp_path / "e", rng, "patient_id",
                               lambda p, j: "P3" if (p, j) in ((3, 1), (5, 0)) else "")
    ids = np.concatenate([s.patient_ids for s in _split_parts(load_splits(f"csv:{manifest}", image_size=8))])
    assert sorted(np.unique(ids, return_counts=True)[1].tolist()) == [4] * 8 + [8]


def _split_parts(splits):
    return splits.train, splits.val, splits.test


@pytest.mark.parametrize("column, cells", [("PatientAge", ["030Y", "045Y", "070Y", "006M"]),
                                           ("age_years", ["30", "45.5", "70", "0.5"])])
def test_an_age_column_in_years_or_dicom_age_strings_is_banded(column: str, cells: list[str]) -> None:
    """A PatientAge column holds DICOM Age Strings (PS3.5: nnnY, nnnM, ...), an age_years column numbers: both are
    the age_band subgroup, banded (never 'unknown' for a readable age, never the raw age)."""
    from collections import Counter

    from dpaudit.medical import _group_value

    bad: Counter[str] = Counter()
    assert [_group_value(column, c, bad) for c in cells] == ["<40", "40-59", "60+", "<40"]
    assert not bad
    # 'NA' is a missing value: unknown, not counted; 'old' is no age: unknown, counted in the note
    assert _group_value(column, "NA", bad) == "unknown" and not bad
    assert _group_value(column, "old", bad) == "unknown" and bad == Counter({"age": 1})


def test_a_second_id_that_joins_patients_is_warned_and_read_once_renamed(tmp_path: Path,
                                                                       rng: np.random.Generator) -> None:
    """A patient column giving each image its own pseudonym, beside an unlisted column naming the person (2 images
    each): the loader cannot know, so it warns that k may be understated and says the name to give it; renamed
    patient_id_2, both columns are read and linked (k = 2). A category (site) draws no such warning."""
    from PIL import Image

    rows = ["path,label,patient_id,{col},site"]
    for p in range(24):
        for j in range(2):
            Image.fromarray((rng.random((8, 8)) * 100 + 150 * (p % 2)).astype(np.uint8)).save(tmp_path / f"{p}_{j}.png")
            rows.append(f"{p}_{j}.png,{'ab'[p % 2]},P{p}_{j},X{p},{'AB'[p % 2]}")
    for col, k in (("pid_hash", 1), ("patient_id_2", 2)):
        (tmp_path / "m.csv").write_text("\n".join(rows).format(col=col) + "\n")
        splits = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=8)
        assert privacy_unit(splits, "patient").records_per_patient == k
        warned = [n for n in splits.notes if "joins several patients per value" in n]
        assert (warned and "rename it patient_id_2" in warned[0] and "'pid_hash'" in warned[0]) if k == 1 else \
            not warned, splits.notes
        assert not any("'site'" in n and "joins" in n for n in splits.notes)
