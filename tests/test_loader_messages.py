"""What the loaders say about a labels file naming skipped files, an MSD folder without dataset.json, and DICOM
files without a usable PatientID."""

from __future__ import annotations

import contextlib
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


@pytest.mark.usefixtures("library_log")
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
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE, labels=tmp_path.parent / "labels.csv")
    assert "labelled but skipped: 'notes.txt' (not DICOM), 'sub/sr.dcm' (not an image (no pixel data))" in caplog.text
    assert "labelled but not found: 'gone.dcm'" in caplog.text
    assert "notes.txt" not in caplog.text.split("labelled but not found")[1]
    assert any(n.startswith("2 row(s) of the labels file name files that were skipped (1 not DICOM, 1 not an image")
               for n in s.notes)
    assert any(n.startswith("1 row(s) of the labels file match no image") for n in s.notes)


@pytest.mark.usefixtures("library_log")
def test_nifti_labels_naming_a_skipped_file(tmp_path: Path, rng: np.random.Generator,
                                           caplog: pytest.LogCaptureFixture) -> None:
    rows = ["file,label"]
    for i in range(6):
        nifti_file(tmp_path / f"v{i}.nii", rng.random((SIZE, SIZE, 2)).astype(np.float32))
        rows.append(f"v{i}.nii,{i % 2}")
    (tmp_path / "readme.txt").write_text("x")
    rows.append("readme.txt,0")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    load_splits(f"nifti:{tmp_path}", image_size=SIZE)
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


# ----------------------------------------------------------------------------------------------------------------
# How a message names a file: as the user wrote it (a manifest's path and data row, a folder dataset's path relative
# to its folder), once, never absolute; a library's exception text without the path it repeats.


def _pngs(folder: Path, rng: np.random.Generator, n: int = 6) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / f"{i}.png")


def _named_once(text: str, shown: str, root: Path) -> None:
    """``text`` names the file ``shown`` exactly once and holds no absolute path of the test's data."""
    assert text.count(shown) == 1, text
    assert str(root.resolve()) not in text and str(root) not in text, text


def _skip_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted({r.getMessage() for r in caplog.records if "skipped an unreadable file" in r.getMessage()})


@pytest.mark.usefixtures("library_log")
def test_a_folder_dataset_names_a_skipped_file_relative_to_its_folder_once(tmp_path: Path, rng: np.random.Generator,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "png"
    for cls in ("benign", "malignant"):
        _pngs(root / cls / "Doe_Jane", rng)
    (root / "benign" / "Doe_Jane" / "corrupt.png").write_bytes(b"not a png")
    load_splits(f"folder:{root}", image_size=SIZE)  # absolute, as a user may type it
    (warning,) = _skip_warnings(caplog)
    _named_once(warning, "'benign/Doe_Jane/corrupt.png'", tmp_path)
    assert "(UnidentifiedImageError: cannot identify image file)" in warning  # the library's reason, kept


def test_a_folder_dataset_names_identical_images_under_two_labels_by_class_name(tmp_path: Path,
                                                                               rng: np.random.Generator) -> None:
    import shutil

    root = tmp_path / "png"
    for cls in ("benign", "malignant"):
        _pngs(root / cls, rng)
    shutil.copy(root / "benign" / "0.png", root / "malignant" / "copy.png")
    with pytest.raises(DataError) as info:
        load_splits(f"folder:{root}", image_size=SIZE)
    message = str(info.value)
    _named_once(message.split(": ", 1)[1], "'benign/0.png'", tmp_path)  # after the dataset's name, as typed
    assert "'malignant/copy.png'" in message and "under different labels ('benign' and 'malignant')" in message


def test_a_manifest_names_a_file_by_its_path_as_written_and_its_data_row(tmp_path: Path, rng: np.random.Generator
                                                                         ) -> None:
    import shutil

    _pngs(tmp_path / "img", rng)
    rows = ["path,label"] + [f"img/{i}.png,{'ab'[i % 2]}" for i in range(6)]
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "m.csv").write_text("\n".join([*rows, "img/../img/bad.png,a"]) + "\n")
    with pytest.raises(DataError) as info:
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    message = str(info.value).removeprefix(f"csv:{tmp_path / 'm.csv'}: ")
    _named_once(message, "'img/../img/bad.png' (data row 7)", tmp_path)
    assert "does not decode (UnidentifiedImageError: cannot identify image file)" in message
    # identical images under two labels: both rows, both class names as written
    shutil.copy(tmp_path / "img" / "0.png", tmp_path / "img" / "copy.png")
    (tmp_path / "m.csv").write_text("\n".join([*rows, "img/copy.png,b"]) + "\n")
    with pytest.raises(DataError) as info:
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    message = str(info.value).removeprefix(f"csv:{tmp_path / 'm.csv'}: ")
    _named_once(message, "'img/0.png' (data row 1)", tmp_path)
    assert "'img/copy.png' (data row 7)" in message and "different labels ('a' and 'b')" in message


def test_a_manifest_names_a_damaged_dicom_or_nifti_file_by_its_row(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        dicom_file(tmp_path / f"{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"P{i}")
    good = "path,label\n" + "".join(f"{i}.dcm,{i % 2}\n" for i in range(4))
    cut = tmp_path / "cut.dcm"
    dicom_file(cut, rng.integers(0, 4096, (SIZE, SIZE)), patient="P9")
    cut.write_bytes(cut.read_bytes()[:-100])
    (tmp_path / "nii").mkdir()
    (tmp_path / "nii" / "bad.nii.gz").write_bytes(b"not a volume")
    for row, written in ((5, "cut.dcm"), (5, "nii/bad.nii.gz")):
        (tmp_path / "m.csv").write_text(good + f"{written},1\n")
        with pytest.raises(DataError) as info:
            load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
        _named_once(str(info.value).removeprefix(f"csv:{tmp_path / 'm.csv'}: "), f"{written!r} (data row {row})",
                    tmp_path)


@pytest.mark.usefixtures("library_log")
def test_a_nifti_folder_names_an_unreadable_volume_relative_to_it_once(tmp_path: Path, rng: np.random.Generator,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    for i in range(4):
        nifti_file(tmp_path / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii", rng.random((SIZE, SIZE, 2)))
    (tmp_path / "sub-00" / "anat" / "sub-00_T2w.nii.gz").write_bytes(b"not a volume")
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(
        f"sub-{i:02d}/anat/sub-{i:02d}_T{t}w.nii{'.gz' if t == 2 else ''},{i % 2}\n" for i in range(4) for t in (1, 2)
        if t == 1 or i == 0))
    load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    (warning,) = _skip_warnings(caplog)
    _named_once(warning, "'sub-00/anat/sub-00_T2w.nii.gz'", tmp_path)
    assert "does not load (" in warning and warning.count("sub-00_T2w") == 1  # the reason without the path


def test_library_reason_drops_the_path_it_repeats_and_keeps_the_reason() -> None:
    from dpaudit.errors import library_reason, shown_path

    p = "/data/scans/sub-01/x.nii.gz"
    assert library_reason(OSError(f'Cannot work out file type of "{p}"'), p) == "OSError: Cannot work out file type"
    assert library_reason(EOFError("Compressed file ended before the end-of-stream marker was reached"), p) == (
        "EOFError: Compressed file ended before the end-of-stream marker was reached")
    assert library_reason(ValueError(p), p) == "ValueError: no reason given"
    assert shown_path(p, "/data/scans") == "'sub-01/x.nii.gz'"
    assert shown_path(p, "/elsewhere") == repr(p)  # not below the root: as given


def test_a_warning_line_on_a_closed_stderr_does_not_end_the_load(tmp_path: Path, rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's "warning: ..." lines (a handler on the library's logger) are written from inside the
    loaders, also from their decode threads (a skipped unreadable file). A stderr that is gone (``dpaudit ... 2>&1 |
    head`` after head exits) drops the line: rich's default there, SystemExit(1) after pointing stdout at /dev/null,
    ended the data load from within a logging call (and silenced the command's JSON)."""
    import os

    import dpaudit.cli._common  # noqa: F401  (installs the handler, as every command does)

    for c in ("a", "b"):
        for p in range(4):
            dicom_file(tmp_path / "ct" / c / f"p{p}" / "IM0", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"{c}{p}")
    whole = (tmp_path / "ct" / "a" / "p0" / "IM0").read_bytes()
    (tmp_path / "ct" / "a" / "p0" / "IM1").write_bytes(whole[:-20])  # pixel data cut short: skipped in a decode thread
    read, write = os.pipe()
    os.close(read)  # nobody reads stderr any more: a write raises BrokenPipeError
    closed_pipe = os.fdopen(write, "w", buffering=1)
    try:
        with (tmp_path / "stdout.txt").open("w") as stdout:
            monkeypatch.setattr("sys.stderr", closed_pipe)
            monkeypatch.setattr("sys.stdout", stdout)  # rich would point this file's descriptor at /dev/null
            s = load_splits(f"dicom:{tmp_path / 'ct'}", image_size=SIZE)
            monkeypatch.undo()
            assert os.path.samefile(f"/proc/self/fd/{stdout.fileno()}", tmp_path / "stdout.txt")
    finally:
        monkeypatch.undo()
        with contextlib.suppress(BrokenPipeError):
            closed_pipe.close()
    assert s.skipped == {"unreadable": 1}
