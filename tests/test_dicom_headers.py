"""DICOM header elements that a file lacks or holds malformed: never a traceback, never pydicom's own warning.

Each case starts from a valid CT file and changes one element the decoder reads (PhotometricInterpretation,
BitsAllocated, BitsStored, PixelRepresentation, Rescale*, Window*, NumberOfFrames, SamplesPerPixel, Rows, the
palette tables). The file either decodes or is an unreadable file named with the reason (a DataError); the loader
skips it, names it on stderr and counts it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file
from pydicom import dcmread

from dpaudit.data import load_splits
from dpaudit.dicom import decode_dicom, pydicom_warnings_quiet, read_header
from dpaudit.errors import DataError

SIZE = 8

#: element changes; a value in BAD_BYTES is written as a placeholder number and then overwritten in the file's
#: bytes, so the file holds a value pydicom itself refuses to write (a DS or IS that is not a number).
CASES: dict[str, dict[str, object]] = {
    "palette_without_tables": {"PhotometricInterpretation": "PALETTE COLOR"},
    "photometric_unknown": {"PhotometricInterpretation": "BOGUS"},
    "photometric_empty": {"PhotometricInterpretation": ""},
    "photometric_ybr_on_grey": {"PhotometricInterpretation": "YBR_FULL"},
    "bits_allocated_0": {"BitsAllocated": 0},
    "bits_allocated_12": {"BitsAllocated": 12},
    "bits_stored_0": {"BitsStored": 0},
    "bits_stored_40": {"BitsStored": 40},
    "pixel_representation_2": {"PixelRepresentation": 2},
    "rescale_slope_not_a_number": {"RescaleSlope": "7777777", "RescaleIntercept": "0"},
    "rescale_slope_multi": {"RescaleSlope": ["1", "2"], "RescaleIntercept": "0"},
    "rescale_slope_only": {"RescaleSlope": "2"},
    "rescale_intercept_only": {"RescaleIntercept": "-1024"},
    "window_not_a_number": {"WindowCenter": "7777777", "WindowWidth": "400"},
    "window_multi": {"WindowCenter": ["40", "400"], "WindowWidth": ["400", "2000"]},
    "window_empty": {"WindowCenter": "", "WindowWidth": ""},
    "window_width_0": {"WindowCenter": "40", "WindowWidth": "0"},
    "window_width_negative": {"WindowCenter": "40", "WindowWidth": "-5"},
    "window_centre_only": {"WindowCenter": "40"},
    "frames_0": {"NumberOfFrames": "0"},
    "frames_not_a_number": {"NumberOfFrames": "7777777"},
    "frames_more_than_held": {"NumberOfFrames": "5"},
    "samples_0": {"SamplesPerPixel": 0},
    "samples_3_on_grey": {"SamplesPerPixel": 3},
    "rows_0": {"Rows": 0},
    "rows_more_than_held": {"Rows": 100},
    "planar_configuration_5": {"PlanarConfiguration": 5},
    "voi_lut_sequence_empty": {"VOILUTSequence": []},
}
BAD_BYTES = {b"7777777 ": b"1e+1e+x", b"7777777": b"abcdefg"}  # DS / IS values padded to even length


def write_case(path: Path, rng: np.random.Generator, changes: dict[str, object]) -> None:
    dicom_file(path, rng.integers(0, 4096, (SIZE, SIZE)), patient="P-FUZZ")
    ds = dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    raw = path.read_bytes()
    for placeholder, bad in BAD_BYTES.items():
        raw = raw.replace(placeholder, bad)
    path.write_bytes(raw)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_header_decodes_or_is_unreadable_never_a_traceback(tmp_path: Path, rng: np.random.Generator,
                                                                       case: str) -> None:
    path = tmp_path / f"{case}.dcm"
    write_case(path, rng, CASES[case])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # under the quiet filter: any other warning still shows
        with pydicom_warnings_quiet():
            try:
                read_header(path)
                frames = decode_dicom(path, SIZE, 1, None)
            except DataError as exc:
                assert str(path) in str(exc) and "Fix:" in str(exc)
            else:
                assert frames and all(np.isfinite(f.data).all() for f in frames)
    assert not [w for w in seen if "pydicom" in w.filename], [str(w.message) for w in seen]


@pytest.mark.usefixtures("library_log")
def test_the_loader_skips_and_names_each_malformed_file(tmp_path: Path, rng: np.random.Generator,
                                                        caplog: pytest.LogCaptureFixture,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    for i in range(6):
        dicom_file(tmp_path / "a" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"A{i}")
        dicom_file(tmp_path / "b" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"B{i}")
    for case in ("palette_without_tables", "window_width_0", "window_not_a_number", "frames_0",
                 "rescale_slope_not_a_number"):
        write_case(tmp_path / "a" / f"{case}.dcm", rng, CASES[case])
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    named = caplog.text
    for case in ("palette_without_tables", "window_width_0", "window_not_a_number", "rescale_slope_not_a_number"):
        assert f"{case}.dcm" in named
    assert "PALETTE COLOR without its palette lookup table" in named
    assert "Window Width 0" in named and "pass --window LOW,HIGH" in named
    assert s.skipped.get("unreadable") == 4
    assert any("1 DICOM file(s) hold a Number of Frames the standard does not allow" in n for n in s.notes)
    assert "UserWarning" not in capfd.readouterr().err


@pytest.mark.usefixtures("library_log")
def test_images_blank_after_their_rescale_and_window_are_counted_and_named(tmp_path: Path, rng: np.random.Generator,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A window far from the data (centre -999999, width 1e9), a huge width alone: every pixel one value. Reference: the linear window of PS3.3 C.11.2.1.2.1 maps stored values 0..4095 of such a
    file to within 4096 / 1e9 of one value, under one 8-bit grey level."""
    for i in range(6):
        dicom_file(tmp_path / "a" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"A{i}")
        dicom_file(tmp_path / "b" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"B{i}")
    blank = {"far": {"WindowCenter": "-999999", "WindowWidth": "1e9"},
             "wide": {"WindowCenter": "40", "WindowWidth": "1e9"}}
    for case, changes in blank.items():
        write_case(tmp_path / "b" / f"{case}.dcm", rng, changes)
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    (tmp_path / "m.csv").write_text("path,label,patient_id\n" + "".join(
        f"{p.relative_to(tmp_path).as_posix()},{p.parent.name},{p.stem}\n"
        for p in sorted(tmp_path.rglob("*.dcm"))))
    m = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    w = load_splits(f"dicom:{tmp_path}", image_size=SIZE, window=(0.0, 4095.0))
    for splits, n in ((s, 2), (m, 2)):
        note = next(x for x in splits.notes if "blank after" in x)
        assert note.startswith(f"{n} DICOM image(s) blank") and "--window" in note
        assert "P-FUZZ" not in note and "A0" not in note
    assert not any("blank after" in x for x in w.notes)  # --window maps them by other numbers
    assert all(f"{case}.dcm" in caplog.text for case in blank)
    assert "P-FUZZ" not in caplog.text  # named by path, never by PatientID
    assert not any("blank after" in x for x in load_splits(f"dicom:{tmp_path / 'a'}", image_size=SIZE).notes)


def test_a_colour_minority_is_converted_to_grey_and_said(tmp_path: Path, rng: np.random.Generator) -> None:
    """One RGB secondary capture among greyscale CT: the dataset stays 1-channel, the colour file becomes ITU-R
    601-2 luma (0.299 R + 0.587 G + 0.114 B, Pillow's convert("L")), and a note counts it. A colour majority keeps
    3 channels, the greyscale files repeated, also said."""
    from PIL import Image

    for i in range(6):
        dicom_file(tmp_path / "a" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"A{i}")
        dicom_file(tmp_path / "b" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"B{i}")
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3))
    dicom_file(tmp_path / "b" / "capture.dcm", rgb, photometric="RGB", bits_stored=8, patient="SC")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert s.in_channels == 1
    assert any(n.startswith("1 of 13 DICOM files are colour: converted to greyscale") for n in s.notes)
    luma = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L"), dtype=np.float64) / 255
    images = np.concatenate([p.images.numpy() for p in (s.train, s.val, s.test)])
    assert np.abs(images[:, 0] - luma).reshape(len(images), -1).max(axis=1).min() <= 1 / 255 + 1e-6

    folder = tmp_path / "png"
    for cls in ("x", "y"):
        (folder / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / "x" / "grey.png")
    f = load_splits(f"folder:{folder}", image_size=SIZE)
    assert f.in_channels == 3
    assert any(n.startswith("1 of 11 files are greyscale: repeated over 3 channels") for n in f.notes)
    assert not any("colour" in n for n in load_splits(f"dicom:{tmp_path / 'a'}", image_size=SIZE).notes)


@pytest.mark.parametrize(("changes", "named"), [
    ({"RescaleSlope": "1", "RescaleIntercept": "nan"}, "Rescale Intercept 'nan'"),
    ({"RescaleSlope": "inf", "RescaleIntercept": "0"}, "Rescale Slope 'inf'"),
    ({"RescaleSlope": "nan", "RescaleIntercept": "0"}, "Rescale Slope 'nan'"),
    ({"WindowCenter": "nan", "WindowWidth": "400"}, "Window Center 'nan'"),
    ({"WindowCenter": "40", "WindowWidth": "inf"}, "Window Width 'inf'"),
])
@pytest.mark.usefixtures("library_log")
def test_a_non_finite_header_number_skips_its_file_naming_the_element(tmp_path: Path, rng: np.random.Generator,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      changes: dict[str, str], named: str) -> None:
    """A NaN or infinite Rescale Slope/Intercept or Window Center/Width: that file is unreadable, named with the
    element and its value, and skipped (was: the whole run stopped, blaming 'a non-finite pixel value')."""
    for i in range(6):
        dicom_file(tmp_path / "a" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"A{i}")
        dicom_file(tmp_path / "b" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"B{i}")
    with pydicom_warnings_quiet():  # pydicom warns on writing a DS it would not write itself
        write_case(tmp_path / "b" / "bad.dcm", rng, changes)
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"unreadable": 1}
    assert f"bad.dcm' holds {named}" in caplog.text and "not a finite number" in caplog.text
    assert "pixel value" not in caplog.text


def test_a_rescale_slope_of_0_is_unreadable_with_its_own_fix(tmp_path: Path, rng: np.random.Generator) -> None:
    """Slope 0 makes every modality value the intercept: no image, and no --window can bring one back (was: warned
    blank with the --window fix). The file is named with its Rescale Slope; a manifest listing it stops."""
    path = tmp_path / "slope0.dcm"
    write_case(path, rng, {"RescaleSlope": "0", "RescaleIntercept": "-1024"})
    for window in (None, (0.0, 4095.0)):
        with pytest.raises(DataError, match=r"slope0.dcm' holds Rescale Slope 0: every modality value is its Rescale "
                                            r"Intercept, so the file holds no image. Fix: replace or remove the file"):
            decode_dicom(path, SIZE, 1, window)


def test_a_copy_with_shifted_stored_values_and_intercept_is_linked(tmp_path: Path, rng: np.random.Generator) -> None:
    """A re-export that stores each value + 100 with Rescale Intercept -100 (and another PatientID) holds the same
    modality values: the same image, and its patient is linked (was: identified by stored values, k halved). A
    different image whose stored values happen to equal the shifted ones (another intercept: other Hounsfield
    units) is not linked, and constant frames stay unknown."""
    from dpaudit.data import privacy_unit

    originals = {}
    for cls in ("benign", "malignant"):
        for p in range(6):
            for i in range(2):
                px = rng.integers(0, 3000, (SIZE, SIZE))
                originals[(cls, p, i)] = px
                dicom_file(tmp_path / cls / f"P{p}" / f"{i}.dcm", px, patient=f"{cls}-{p}", RescaleSlope="1",
                           RescaleIntercept="-1024")
    for (cls, p, i), px in originals.items():
        dicom_file(tmp_path / cls / f"copy-P{p}" / f"{i}.dcm", px + 100, patient=f"NEW-{cls}-{p}", RescaleSlope="1",
                   RescaleIntercept="-1124")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    _, counts = np.unique(s.train.patient_ids, return_counts=True)
    # Reference: each person's 2 images and their 2 copies under the new PatientID = 4 per unit.
    assert set(counts.tolist()) == {4}
    assert privacy_unit(s).records_per_patient == 4
    # The same stored values under another intercept are another image (other modality values): never linked.
    for f in (tmp_path / "benign").rglob("copy-P*/*.dcm"):
        f.unlink()
    for f in (tmp_path / "malignant").rglob("copy-P*/*.dcm"):
        f.unlink()
    for (cls, p, i), px in originals.items():
        dicom_file(tmp_path / cls / f"other-P{p}" / f"{i}.dcm", px, patient=f"OTHER-{cls}-{p}", RescaleSlope="1",
                   RescaleIntercept="0")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert not any("repeat the content" in n for n in s.notes)


def test_the_colour_note_counts_only_files_that_decode(tmp_path: Path, rng: np.random.Generator) -> None:
    """A colour file skipped as unreadable (PALETTE COLOR without its tables) was not converted: no colour note
    (was: '1 of 13 DICOM files are colour: converted ...'), and a note that is due counts decoded files only."""
    for i in range(6):
        dicom_file(tmp_path / "a" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"A{i}")
        dicom_file(tmp_path / "b" / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"B{i}")
    write_case(tmp_path / "b" / "palette.dcm", rng, CASES["palette_without_tables"])
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"unreadable": 1}
    assert not any("colour" in n for n in s.notes), s.notes
    dicom_file(tmp_path / "b" / "capture.dcm", rng.integers(0, 256, (SIZE, SIZE, 3)), photometric="RGB",
               bits_stored=8, patient="SC")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    # 12 greyscale files and 1 RGB decoded (the palette file did not): the other 12, not 13.
    assert any(n.startswith("1 of 13 DICOM files are colour: converted to greyscale (ITU-R 601-2 luma) like the "
                            "other 12,") for n in s.notes), s.notes


@pytest.mark.parametrize("key", ["path", "SOPInstanceUID"])
def test_a_labels_row_whose_file_is_unreadable_in_decoding_counts_as_skipped(tmp_path: Path,
                                                                             rng: np.random.Generator,
                                                                             key: str) -> None:
    """Window Width 0 is found while decoding, after the header scan: the labels file's row naming that file is
    counted with the skipped rows, by its reason (was: left out of the count, though the file was skipped). A UID
    key is counted, never shown."""
    rows = [f"{key},label"]
    for i in range(6):
        for cls in ("a", "b"):
            ds = dicom_file(tmp_path / cls / f"ok{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"{cls}{i}")
            rows.append(f"{cls}/ok{i}.dcm,{cls}" if key == "path" else f"{ds.SOPInstanceUID},{cls}")
    write_case(tmp_path / "b" / "width0.dcm", rng, CASES["window_width_0"])
    (tmp_path / "notes.txt").write_text("not DICOM")
    uid = dcmread(tmp_path / "b" / "width0.dcm").SOPInstanceUID
    rows.append("b/width0.dcm,b" if key == "path" else f"{uid},b")
    if key == "path":
        rows.append("notes.txt,a")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE, labels=tmp_path / "labels.csv")
    note = next(n for n in s.notes if "row(s) of the labels file" in n)
    expected = ("2 row(s) of the labels file name files that were skipped (1 not DICOM, 1 unreadable)" if key == "path"
                else "1 row(s) of the labels file name files that were skipped (1 unreadable)")
    assert note.startswith(expected), s.notes
    assert uid not in " ".join(s.notes)
