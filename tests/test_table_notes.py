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
