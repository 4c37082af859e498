"""Every CSV a dataset reads (labels files of dicom: and nifti:, csv: manifests; HAM10000's metadata is tested in
test_data.py) says in the loading notes when it was decoded by the cp1252 fallback (README, "Data"), and only then;
a file read as UTF-8 adds no note."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file

from dpaudit.data import load_splits
from dpaudit.tables import read_table

SIZE = 16


def write_csv(path: Path, rows: list[dict[str, str]], encoding: str) -> None:
    with path.open("w", newline="", encoding=encoding) as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def cp1252_note(notes: tuple[str, ...] | list[str], file_name: str) -> list[str]:
    return [n for n in notes if n == f"{file_name} read as cp1252"]


@pytest.mark.parametrize("encoding", ["cp1252", "utf-8"])
def test_dicom_labels_file(tmp_path: Path, rng: np.random.Generator, encoding: str) -> None:
    rows = []
    for p in range(8):
        rel = f"P{p}/IM0.dcm"
        dicom_file(tmp_path / "data" / rel, rng.integers(0, 4096, (SIZE, SIZE)), patient=f"PAT-{p}")
        rows.append({"path": rel, "label": "lésion" if p % 2 else "sain"})  # é: one byte in cp1252
    write_csv(tmp_path / "labels.csv", rows, encoding)
    s = load_splits(f"dicom:{tmp_path / 'data'}", image_size=SIZE, labels=tmp_path / "labels.csv")
    assert s.label_names == ("lésion", "sain")
    assert len(cp1252_note(s.notes, "labels.csv")) == (encoding == "cp1252")


@pytest.mark.parametrize("given", [True, False])
def test_nifti_labels_file_given_or_found_in_the_folder(tmp_path: Path, rng: np.random.Generator,
                                                       given: bool) -> None:
    rows = []
    for v in range(6):
        nifti_file(tmp_path / f"vol{v}.nii.gz", rng.random((SIZE, SIZE, 2)).astype(np.float32))
        rows.append({"file": f"vol{v}.nii.gz", "label": "pathologie" if v % 2 else "normal é"})
    write_csv(tmp_path / "labels.csv", rows, "cp1252")
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE, **({"labels": tmp_path / "labels.csv"} if given else {}))
    assert "normal é" in s.label_names
    assert len(cp1252_note(s.notes, "labels.csv")) == 1


def test_csv_manifest(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = []
    for p in range(8):
        dicom_file(tmp_path / f"{p}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"PAT-{p}")
        rows.append({"path": f"{p}.dcm", "label": "bénin" if p % 2 else "malin"})
    write_csv(tmp_path / "manifest.csv", rows, "cp1252")
    s = load_splits(f"csv:{tmp_path / 'manifest.csv'}", image_size=SIZE)
    assert len(cp1252_note(s.notes, "manifest.csv")) == 1


def test_the_note_is_the_tables_own(tmp_path: Path) -> None:
    for encoding, notes in (("utf-8", ()), ("utf-8-sig", ()), ("cp1252", ("t.csv read as cp1252",)),
                            ("utf-16", ("t.csv read as utf-16",))):
        (tmp_path / "t.csv").write_bytes("a,b\nà,1\n".encode(encoding))
        assert read_table(tmp_path / "t.csv", "t").notes == notes


# ------------------------------------------------------------------------------ files without a patient id


def skip_lines(caplog: pytest.LogCaptureFixture, run):  # type: ignore[no-untyped-def]
    """What ``run`` returns, and the loaders' warnings it logged (the test uses the ``library_log`` fixture)."""
    out = run()
    return out, caplog.text


def manifest_of_dicom_and_png(tmp_path: Path, rng: np.random.Generator, patient_cells: bool) -> Path:
    from PIL import Image

    rows = []
    for p in range(6):
        dicom_file(tmp_path / f"d{p}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"PAT-{p}")
        rows.append({"path": f"d{p}.dcm", "label": str(p % 2)})
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(tmp_path / f"i{i}.png")
        rows.append({"path": f"i{i}.png", "label": str(i % 2)})
    if patient_cells:  # a patient column, filled in for the DICOM rows only
        rows = [{**r, "patient_id": f"PAT-{k}" if k < 6 else ""} for k, r in enumerate(rows)]
    write_csv(tmp_path / "m.csv", rows, "utf-8")
    return tmp_path / "m.csv"


@pytest.mark.usefixtures("library_log")
def test_manifest_without_a_patient_column_says_so(tmp_path: Path, rng: np.random.Generator,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = manifest_of_dicom_and_png(tmp_path, rng, patient_cells=False)
    s, text = skip_lines(caplog, lambda: load_splits(f"csv:{path}", image_size=SIZE))
    assert "20 file(s) have no patient id (the manifest has no patient column" in text
    assert "these files carry none of their own (a DICOM PatientID or StudyInstanceUID" in text
    assert "Fix: add a patient_id column to the manifest" in text
    assert "empty or missing-value cell" not in text
    assert s.unit == "patient"


@pytest.mark.usefixtures("library_log")
def test_manifest_with_empty_patient_cells_names_the_column(tmp_path: Path, rng: np.random.Generator,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = manifest_of_dicom_and_png(tmp_path, rng, patient_cells=True)
    _, text = skip_lines(caplog, lambda: load_splits(f"csv:{path}", image_size=SIZE))
    assert ("20 file(s) have no patient id (an empty or missing-value cell in the manifest's patient column "
            "('patient_id'))") in text
    assert "Fix: fill in their patient ids" in text and "no patient column" not in text


@pytest.mark.usefixtures("library_log")
def test_nifti_without_labels_file_says_it_has_no_patient_column(tmp_path: Path, rng: np.random.Generator,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    for c, cls in enumerate(("a", "b")):
        for k in range(3):  # 3 BIDS subjects per class, and 2 volumes of no subject
            nifti_file(tmp_path / cls / f"sub-{c}{k}" / f"sub-{c}{k}_T1w.nii.gz",
                       rng.random((SIZE, SIZE, 2)).astype(np.float32))
        for k in range(2):
            nifti_file(tmp_path / cls / f"loose{k}.nii.gz", rng.random((SIZE, SIZE, 2)).astype(np.float32))
    _, text = skip_lines(caplog, lambda: load_splits(f"nifti:{tmp_path}", image_size=SIZE))
    assert "4 volume(s) have no patient id (the dataset has no patient column" in text
    assert "Fix: label the volumes with --labels FILE.csv" in text
