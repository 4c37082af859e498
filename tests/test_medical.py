"""DICOM trees, NIfTI folders and CSV manifests, on files built here (see ``medical_fixtures``).

Expected pixel values are computed from the values written and the DICOM standard's formulas (PS3.3 C.11), in
the test, independently of dpaudit's decoder.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from medical_fixtures import dicom_file, encapsulated, float_dicom_file, jpeg_lossless_sv1, nifti_file
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dpaudit.data import DatasetSplits, load_splits, privacy_unit
from dpaudit.errors import DataError

SIZE = 16


def images_of(s: DatasetSplits) -> np.ndarray:
    return torch.cat([s.train.images, s.val.images, s.test.images]).numpy()


def assert_contains(loaded: np.ndarray, expected: list[np.ndarray], atol: float = 1e-6) -> None:
    """Every expected C x H x W image is among the loaded ones (order is the split's business)."""
    for k, e in enumerate(expected):
        err = np.abs(loaded - e[None]).reshape(len(loaded), -1).max(axis=1)
        assert err.min() <= atol, (k, float(err.min()))


def ramp(rng: np.random.Generator, top: int, shape: tuple[int, ...] = (SIZE, SIZE)) -> np.ndarray:
    return rng.integers(0, top + 1, shape)


def load(root: Path, **kw) -> DatasetSplits:
    return load_splits(f"dicom:{root}", image_size=SIZE, **kw)


def fillers(root: Path, rng: np.random.Generator, n: int = 3) -> None:
    """Extra plain files so that every split gets a patient."""
    for i in range(n):
        dicom_file(root / f"filler{i}.dcm", ramp(rng, 4095), patient=f"FILL-{i}")


# ------------------------------------------------------------------------------------------------ transfer syntaxes


@pytest.mark.parametrize("syntax", ["little", "big", RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_lossless_transfer_syntaxes_give_the_values_written(tmp_path: Path, rng: np.random.Generator,
                                                            syntax: str) -> None:
    pixels = ramp(rng, 4095, (64, 64))  # 64 px: JPEG 2000's default 6 decomposition levels need >= 32
    path = tmp_path / "IM0001"  # no extension, as PACS exports often are
    if syntax in ("little", "big"):
        dicom_file(path, pixels, big_endian=syntax == "big")
    elif syntax == JPEGLosslessSV1:
        encapsulated(path, pixels, syntax)
    else:
        ds = dicom_file(path, pixels)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    fillers(tmp_path, rng)
    # No window in the file: the 12 stored bits' full range, 0..4095 (modality LUT identity), maps to [0, 1].
    assert_contains(images_of(load_splits(f"dicom:{tmp_path}", image_size=64)), [pixels[None] / 4095])


def test_jpeg_baseline_matches_an_independent_decode(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pixels = (8 * xx + 4 * yy).astype(np.uint8)  # smooth, so JPEG keeps it close
    encapsulated(tmp_path / "a.dcm", pixels, JPEGBaseline8Bit, bits_stored=8)
    fillers(tmp_path, rng)
    import io

    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    ds = dcmread(tmp_path / "a.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    reference = np.asarray(Image.open(io.BytesIO(frame)), dtype=np.float64) / 255  # Pillow's libjpeg
    # The loader may decode with another libjpeg build (pylibjpeg): equal up to one level of 255.
    assert_contains(images_of(load(tmp_path)), [reference[None]], atol=1.01 / 255)


def test_jpeg_lossless_fixture_encoder_is_sound() -> None:
    # Our test encoder against pylibjpeg-libjpeg directly, 16-bit precision and byte stuffing included.
    from libjpeg import decode

    arr = np.random.default_rng(5).integers(0, 65536, (9, 13)).astype(np.uint16)
    assert np.array_equal(decode(jpeg_lossless_sv1(arr, 16)), arr)


def test_missing_decoder_names_the_file_and_the_package(tmp_path: Path, rng: np.random.Generator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ds = dicom_file(tmp_path / "a.dcm", ramp(rng, 4095))
    ds.compress(JPEGLSLossless)
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    fillers(tmp_path, rng)
    import pydicom.pixels

    class Absent:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Absent())
    with pytest.raises(DataError, match=r"a\.dcm.*JPEG-LS Lossless.*Fix: pip install pyjpegls"):
        load(tmp_path)
    monkeypatch.undo()
    from pydicom.encaps import encapsulate

    ds = dicom_file(tmp_path / "a.dcm", ramp(rng, 4095))
    ds.PixelData = encapsulate([bytes(ds.PixelData)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: nothing decodes it
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match=r"a\.dcm.*Fix: export the images uncompressed"):
        load(tmp_path)


# ------------------------------------------------------------------------------------------------ pixel rules


def linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 with y in [0, 1], written out from the standard."""
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    return np.where(x <= lo, 0.0, np.where(x > hi, 1.0, (x - (c - 0.5)) / (w - 1) + 0.5))


def test_rescale_window_and_the_window_option(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = ramp(rng, 4095)
    hu = stored * 1.0 - 1024.0
    dicom_file(tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40,
               WindowWidth=400)
    fillers(tmp_path, rng)
    assert_contains(images_of(load(tmp_path)), [linear_window(hu, 40, 400)[None]])
    # --window LOW,HIGH in Hounsfield units overrides the file's window.
    assert_contains(images_of(load(tmp_path, window="-100,200")), [np.clip((hu + 100) / 300, 0, 1)[None]])


def test_window_option_on_other_modalities_is_said_once(tmp_path: Path, rng: np.random.Generator) -> None:
    """--window is in modality units; -100,200 is a CT (Hounsfield) window. On a tree that mixes modalities it is
    applied to every file as asked (values checked), and one note counts the non-CT files by modality; the note
    names no file (notes reach metrics.json and the report)."""
    stored = {m: ramp(rng, 4095) for m in ("CT", "MR", "DX", "US")}
    for i, (modality, values) in enumerate(stored.items()):
        for k in range(2):
            dicom_file(tmp_path / f"{modality}{k}.dcm", values if k == 0 else ramp(rng, 4095), patient=f"P{i}{k}",
                       Modality=modality)
    s = load(tmp_path, window="-100,200")
    assert_contains(images_of(s), [np.clip((v + 100) / 300, 0, 1)[None] for v in stored.values()])
    notes = [n for n in s.notes if "--window" in n]
    assert notes == ["--window -100,200 applied to 2 CT file(s) and to 6 DICOM file(s) of other modalities too "
                     "(DX 2, MR 2, US 2), whose values are not Hounsfield units: check that the window fits them, or "
                     "load each modality from its own folder with a --window for it"]
    assert not any(str(tmp_path) in n or ".dcm" in n for n in s.notes)
    assert not any("--window" in n for n in load(tmp_path).notes)  # no window asked: nothing to say
    # Several modalities, none CT: no "too"; their scales differ, so one window per modality.
    for k in range(2):
        (tmp_path / f"CT{k}.dcm").unlink()
    assert [n for n in load(tmp_path, window="0,500").notes if "--window" in n] == [
        "--window 0,500 applied to 6 DICOM file(s) of 3 modalities, none CT (DX 2, MR 2, US 2), whose values are "
        "not Hounsfield units and differ in scale between modalities: load each modality from its own folder with "
        "a --window for it, or leave out --window to map each file by its own window (else its stored range)"]
    # One modality alone (an MR tree): no "too", no other folder to load; the window is read in MR values.
    for m in ("DX", "US"):
        for k in range(2):
            (tmp_path / f"{m}{k}.dcm").unlink()
    fillers(tmp_path, rng)  # three more files, MR like the rest
    for f in tmp_path.glob("filler*.dcm"):
        dicom_file(f, ramp(rng, 4095), patient=f.stem, Modality="MR")
    assert [n for n in load(tmp_path, window="0,500").notes if "--window" in n] == [
        "--window 0,500 applied to 5 DICOM file(s) of modality MR, none CT: the window is read in their "
        "modality's values, not Hounsfield units; check that it fits them, or leave out --window to map each file "
        "by its own window (else its stored range)"]
    for m in ("MR",):
        for k in range(2):
            (tmp_path / f"{m}{k}.dcm").unlink()
    for f in tmp_path.glob("filler*.dcm"):
        dicom_file(f, ramp(rng, 4095), patient=f.stem)
    assert not any("--window" in n for n in load(tmp_path, window="-100,200").notes)  # CT only


def test_rescale_without_window_and_signed_pixels(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(-2048, 2048, (SIZE, SIZE))
    dicom_file(tmp_path / "s.dcm", stored, signed=True, RescaleSlope=2, RescaleIntercept=100)
    fillers(tmp_path, rng)
    # Full range of 12 signed stored bits, -2048..2047, through the modality LUT: 2 * v + 100.
    lo, hi = 2 * -2048 + 100, 2 * 2047 + 100
    assert_contains(images_of(load(tmp_path)), [((2 * stored + 100 - lo) / (hi - lo))[None]])


def pet_slice(path: Path, activity: np.ndarray, patient: str, **kw: object) -> tuple[np.ndarray, float]:
    """A PET slice as scanners export them: int16, scaled slice by slice to the full 16-bit range by its own
    Rescale Slope; returns the stored values and the slope (as written, a DS of 8 significant digits)."""
    slope = float(f"{activity.max() / 32767:.8g}")
    stored = np.round(activity / slope).astype(np.int16)
    dicom_file(path, stored, patient=patient, bits_stored=16, signed=True, Modality="PT", RescaleSlope=f"{slope:.8g}",
               RescaleIntercept=0, **kw)
    return stored, slope


def test_per_file_rescale_slope_without_a_window_maps_one_activity_to_one_intensity(
        tmp_path: Path, rng: np.random.Generator) -> None:
    """PET slices, each with its own Rescale Slope and no window: by their stored ranges the same 1000 Bq/ml
    would load as 0.75 in one slice and 0.525 in another. Mapped jointly by their modality values, one activity
    gives one intensity in every file; expected values from the activities written and the slopes (the modality
    LUT of PS3.3 C.11.1), mapped by the joint minimum and maximum computed here; a note says so. In a manifest
    too, and MONOCHROME1 inverted."""
    activities = []
    for i in range(6):
        a = np.full((SIZE, SIZE), 1000.0)
        a[0, 0] = [2000.0, 20000.0, 5000.0][i % 3]  # a hot spot, a different one per slice: a different slope
        a[1:4, 1:4] = rng.uniform(0, 1500, (3, 3))
        activities.append(a)
    written = [pet_slice(tmp_path / f"s{i}.dcm", a, f"P{i}") for i, a in enumerate(activities)]
    modality_values = [stored * slope for stored, slope in written]
    lo, hi = min(float(v.min()) for v in modality_values), max(float(v.max()) for v in modality_values)
    s = load(tmp_path)
    loaded = images_of(s)
    assert_contains(loaded, [((v - lo) / (hi - lo))[None] for v in modality_values], atol=1e-6)
    # 1000 Bq/ml is one intensity in every slice, to the stored values' rounding (half the largest slope); by the
    # stored ranges it was 0.75 where the hot spot is 2000 and 0.525 where it is 20000.
    background = [float(x[0, 8, 8]) for x in loaded]
    assert max(background) - min(background) <= max(slope for _, slope in written) / (hi - lo) + 1e-6
    assert [n for n in s.notes if "stored values map" in n] == [
        "6 DICOM file(s) without a window whose stored values map to modality values differently (3 stored ranges in "
        "modality values: Rescale Slope/Intercept, Modality LUT or Bits Stored differ between files or frames): "
        "mapped to [0, 1] by their modality values, with the dataset's float images, by one affine map from their "
        "joint minimum and maximum, so that one value gives one intensity in every file; pass --window LOW,HIGH "
        "for a fixed map"]
    # The same files in a manifest.
    (tmp_path / "m.csv").write_text("path,label,patient_id\n" + "".join(f"s{i}.dcm,{i % 2},P{i}\n" for i in range(6)))
    m = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    assert_contains(images_of(m), [((v - lo) / (hi - lo))[None] for v in modality_values], atol=1e-6)
    assert any("stored values map" in n for n in m.notes)
    # --window: a fixed map in modality units, no joint map and no note.
    w = load(tmp_path, window="0,4000")
    assert_contains(images_of(w), [np.clip(v / 4000, 0, 1)[None] for v in modality_values], atol=1e-6)
    assert not any("stored values map" in n for n in w.notes)
    # MONOCHROME1 (0 is white) never joins a joint map (negated beside MONOCHROME2 frames it would take a band of
    # it): each file by its own stored range, inverted, as before joint maps existed.
    for i, a in enumerate(activities):
        pet_slice(tmp_path / f"s{i}.dcm", a, f"P{i}", PhotometricInterpretation="MONOCHROME1")
    mono1 = load(tmp_path)
    assert_contains(images_of(mono1), [(1 - (st.astype(np.float64) + 32768) / 65535)[None] for st, _ in written],
                    atol=1e-6)
    assert not any("stored values map" in n for n in mono1.notes)


def test_x_rays_with_an_identity_rescale_and_both_photometrics_keep_their_stored_range_maps(tmp_path: Path,
                                                                                            rng: np.random.Generator
                                                                                            ) -> None:
    """DX files with Rescale Slope 1 / Intercept 0 (no unit: an X-ray's identity rescale), 12-bit MONOCHROME1 beside
    14-bit MONOCHROME2, no window: each image spans its own stored range, as before joint maps (a joint map put the
    MONOCHROME1 images in [0, 0.2] and the others in [0.2, 1]: the band alone would tell vendors, or classes, apart)."""
    expected = []
    for i in range(6):
        mono1 = i % 2 == 0
        bits = 12 if mono1 else 14
        stored = rng.integers(0, 2 ** bits, (SIZE, SIZE)).astype(np.uint16)
        dicom_file(tmp_path / f"x{i}.dcm", stored, patient=f"P{i}", bits_stored=bits, signed=False, Modality="DX",
                   RescaleSlope=1, RescaleIntercept=0,
                   PhotometricInterpretation="MONOCHROME1" if mono1 else "MONOCHROME2")
        unit = stored.astype(np.float64) / (2 ** bits - 1)
        expected.append((1 - unit if mono1 else unit)[None])
    s = load(tmp_path)
    assert_contains(images_of(s), expected, atol=1e-6)
    assert not any("stored values map" in n for n in s.notes)


def test_slices_with_one_rescale_keep_their_stored_range_map(tmp_path: Path, rng: np.random.Generator) -> None:
    """A CT series with one Rescale Slope/Intercept (and files without any: no unit to agree on, as secondary
    captures) keeps the fixed map of its stored range, with no note; a file's own window is its own map, so
    slices with their own slopes and windows are not mapped jointly either."""
    stored = [ramp(rng, 4095) for _ in range(4)]
    for i, v in enumerate(stored):
        dicom_file(tmp_path / f"ct{i}.dcm", v, patient=f"P{i}", RescaleSlope=1, RescaleIntercept=-1024)
    dicom_file(tmp_path / "sc.dcm", ramp(rng, 255), bits_stored=8, patient="SC")  # no rescale: / 255
    s = load(tmp_path)
    assert_contains(images_of(s), [(v / 4095)[None] for v in stored])  # (v - 1024 - -1024) / 4095
    assert not any("stored values map" in n for n in s.notes)
    for i in range(3):
        pet_slice(tmp_path / f"pet{i}.dcm", np.full((SIZE, SIZE), 1000.0 * (i + 1)), f"Q{i}", WindowCenter=1500,
                  WindowWidth=3000)
    assert not any("stored values map" in n for n in load(tmp_path).notes)


def test_two_scanners_and_per_frame_rescale_map_one_value_to_one_intensity(tmp_path: Path,
                                                                            rng: np.random.Generator) -> None:
    """Mixed series: one scanner's CT as 12-bit unsigned with intercept -1024, another's as 16-bit signed
    Hounsfield units (intercept 0); and an enhanced multi-frame file whose frames carry their own Pixel Value
    Transformation. Without a window, each stored range would map one Hounsfield value differently; jointly
    mapped, -1000 HU (air) is one intensity everywhere, values as computed here from the values written."""
    from pydicom.dataset import Dataset

    hu = [rng.integers(-1000, 2000, (SIZE, SIZE)) for _ in range(5)]
    for h in hu:
        h[0, 0] = -1000  # air in every image
    dicom_file(tmp_path / "a.dcm", hu[0] + 1024, patient="A", RescaleSlope=1, RescaleIntercept=-1024)
    dicom_file(tmp_path / "b.dcm", hu[1], patient="B", bits_stored=16, signed=True, RescaleSlope=1,
               RescaleIntercept=0)
    dicom_file(tmp_path / "c.dcm", hu[2] + 1024, patient="C", RescaleSlope=1, RescaleIntercept=-1024)

    def transformation(slope: float, intercept: float) -> Dataset:
        inner, outer = Dataset(), Dataset()
        inner.RescaleSlope, inner.RescaleIntercept, inner.RescaleType = slope, intercept, "HU"
        outer.PixelValueTransformationSequence = [inner]
        return outer

    # Frame 0: stored = HU + 1024 (slope 1); frame 1: stored = (HU + 2000) / 0.5 (slope 0.5, intercept -2000).
    frames = np.stack([hu[3] + 1024, (hu[4] + 2000) * 2])
    dicom_file(tmp_path / "enh.dcm", frames, patient="E", bits_stored=16,
               PerFrameFunctionalGroupsSequence=[transformation(1, -1024), transformation(0.5, -2000)])
    s = load(tmp_path)
    lo, hi = min(float(h.min()) for h in hu), max(float(h.max()) for h in hu)
    loaded = images_of(s)
    assert_contains(loaded, [((h - lo) / (hi - lo))[None] for h in hu], atol=1e-6)
    assert len({round(float(x[0, 0, 0]), 6) for x in loaded}) == 1
    assert any(n.startswith("4 DICOM file(s) without a window whose stored values map to modality values "
                            "differently (4 stored ranges") for n in s.notes)


def test_map_jointly_gives_modality_values_as_float_pixels(tmp_path: Path) -> None:
    """decode_dicom alone cannot see the dataset: map_jointly gives the frame's modality values (slope times
    stored plus intercept) for the dataset-wide map, kind float, with their extremes."""
    from dpaudit.dicom import decode_dicom, read_header, stored_ranges_differ

    stored = np.arange(SIZE * SIZE).reshape(SIZE, SIZE)
    dicom_file(tmp_path / "x.dcm", stored, RescaleSlope=0.5, RescaleIntercept=-10)
    dicom_file(tmp_path / "y.dcm", stored, RescaleSlope=0.25, RescaleIntercept=-10)
    (p,) = decode_dicom(tmp_path / "x.dcm", SIZE, 1, None, map_jointly=True)
    assert p.kind == "float" and (p.low, p.high) == (-10.0, 0.5 * (SIZE * SIZE - 1) - 10)
    np.testing.assert_allclose(p.data[0], 0.5 * stored - 10, atol=1e-5)
    headers = [read_header(tmp_path / f) for f in ("x.dcm", "y.dcm")]
    assert headers[0].stored_ranges == ((-10.0, 0.5 * 4095 - 10),)
    assert stored_ranges_differ(headers) and not stored_ranges_differ(headers[:1] * 2)


@pytest.mark.parametrize("signed", [False, True])
def test_32_bit_integer_pixels_use_their_full_stored_range(tmp_path: Path, rng: np.random.Generator,
                                                           signed: bool) -> None:
    low, high = (-(2 ** 31), 2 ** 31 - 1) if signed else (0, 2 ** 32 - 1)
    stored = rng.integers(low, high, (SIZE, SIZE), endpoint=True)
    dicom_file(tmp_path / "d32.dcm", stored, bits_stored=32, signed=signed)
    fillers(tmp_path, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy cast warning anywhere on the way
        loaded = images_of(load(tmp_path))
    assert_contains(loaded, [((stored - low) / (high - low))[None]])


@pytest.mark.parametrize("double", [False, True])
def test_float_pixel_data_maps_its_values_not_a_stored_range(tmp_path: Path, rng: np.random.Generator,
                                                             double: bool) -> None:
    """Float and Double Float Pixel Data (parametric maps such as ADC, values 8..3000 in 1e-6 mm^2/s) have no
    stored range: without a window, all such images of the dataset share one affine map from their joint minimum
    and maximum (the rule of float TIFFs and NIfTI volumes), with a note; a file's window and --window apply as
    to any other image."""
    maps = [rng.uniform(8, 3000, (SIZE, SIZE)).astype(np.float64 if double else np.float32) for _ in range(4)]
    for i, m in enumerate(maps):
        float_dicom_file(tmp_path / f"adc{i}.dcm", m, double=double, patient=f"ADC-{i}")
    fillers(tmp_path, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load(tmp_path)
    lo, hi = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    assert_contains(images_of(s), [((m - lo) / (hi - lo))[None] for m in maps], atol=1e-5)
    assert [n for n in s.notes if "float pixel data" in n] == [
        "4 DICOM file(s) with float pixel data (Float or Double Float Pixel Data) and no window: mapped to [0, 1] "
        "with the dataset's other float images by one affine map from their joint minimum and maximum; pass "
        "--window LOW,HIGH for a fixed map"]
    w = load(tmp_path, window="0,1000")
    assert_contains(images_of(w), [np.clip(m / 1000.0, 0, 1)[None] for m in maps], atol=1e-5)
    assert not any("float pixel data" in n for n in w.notes)
    # A window in the file: the linear VOI function, and no note.
    float_dicom_file(tmp_path / "adc0.dcm", maps[0], double=double, patient="ADC-0", WindowCenter=1500,
                     WindowWidth=2000)
    s = load(tmp_path)
    assert_contains(images_of(s), [linear_window(maps[0].astype(np.float64), 1500, 2000)[None]], atol=1e-5)
    assert any(n.startswith("3 DICOM file(s) with float pixel data") for n in s.notes)


def test_float_pixel_data_in_unit_range_kept_and_multi_frame(tmp_path: Path, rng: np.random.Generator) -> None:
    probabilities = rng.uniform(0, 1, (3, SIZE, SIZE)).astype(np.float32)  # e.g. a probability map, 3 frames
    float_dicom_file(tmp_path / "p.dcm", probabilities, patient="PM")
    fillers(tmp_path, rng)
    s = load(tmp_path)
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 6
    assert_contains(images_of(s), [f[None] for f in probabilities])


@pytest.mark.usefixtures("library_log")
def test_float_pixel_data_outside_monochrome2_is_unreadable_and_named(tmp_path: Path, rng: np.random.Generator,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    float_dicom_file(tmp_path / "inv.dcm", rng.uniform(0, 1, (SIZE, SIZE)), patient="INV", photometric="MONOCHROME1")
    fillers(tmp_path, rng)
    s = load(tmp_path)
    assert s.skipped == {"unreadable": 1}
    assert "inv.dcm" in caplog.text and "MONOCHROME2" in caplog.text
    assert not any("inv.dcm" in n for n in s.notes)


def test_voi_lut_sequence(tmp_path: Path, rng: np.random.Generator) -> None:
    from pydicom.dataset import Dataset

    stored = ramp(rng, 4095)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 10]  # 4096 entries, first input value 0, 10-bit output
    item.LUTData = (np.arange(4096) // 4).tolist()  # 0..1023
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    dicom_file(tmp_path / "v.dcm", stored, VOILUTSequence=[item])
    fillers(tmp_path, rng)
    assert_contains(images_of(load(tmp_path)), [((stored // 4) / 1023)[None]])


def test_voi_lut_maps_values_beyond_its_ends_to_its_end_entries(tmp_path: Path, rng: np.random.Generator) -> None:
    """PS3.3 C.11.2.1.1: input values below the first mapped value take the first entry, above the last the last
    one, whatever the pixel type: 32-bit integers far above the LUT (pydicom alone wraps them in the LUT's 16-bit
    type) and float pixel data up to +-1e30."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 10]
    item.LUTData = (np.arange(4096) // 4).tolist()
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    wide = rng.integers(0, 2 ** 20, (SIZE, SIZE))
    dicom_file(tmp_path / "w.dcm", wide, bits_stored=32, VOILUTSequence=[item])
    floats = rng.uniform(-5000, 5000, (SIZE, SIZE))
    floats[0, :4] = [1e30, -1e30, 4095.4, 0.6]
    float_dicom_file(tmp_path / "f.dcm", floats, double=True, patient="F", VOILUTSequence=[item])
    fillers(tmp_path, rng)
    expect_wide = (np.minimum(wide, 4095) // 4) / 1023
    expect_float = (np.clip(np.round(floats), 0, 4095) // 4) / 1023
    assert expect_float[0, :4].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert_contains(images_of(load(tmp_path)), [expect_wide[None], expect_float[None]])


def test_a_bits_stored_past_63_is_an_unreadable_file_not_a_traceback(tmp_path: Path,
                                                                     rng: np.random.Generator) -> None:
    """Bits Stored 64 on integer pixel data (malformed: integers hold at most 32 bits) overflowed int64 in the
    stored range the header read computes, and crashed the whole load."""
    dicom_file(tmp_path / "b.dcm", rng.integers(0, 4096, (SIZE, SIZE)).astype(np.uint16), patient="B",
               RescaleSlope=2, RescaleIntercept=0)
    from pydicom import dcmread

    ds = dcmread(tmp_path / "b.dcm")
    ds.BitsStored = 64
    ds.save_as(tmp_path / "b.dcm")
    fillers(tmp_path, rng)
    s = load(tmp_path)
    assert sum(s.skipped.values()) == 1 and len(images_of(s)) == 3


def test_float_pixel_data_with_a_modality_lut_is_unreadable(tmp_path: Path, rng: np.random.Generator) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = list(range(4096))
    item.ModalityLUTType = "HU"
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    float_dicom_file(tmp_path / "m.dcm", rng.uniform(0, 4000, (SIZE, SIZE)), patient="M", ModalityLUTSequence=[item])
    fillers(tmp_path, rng)
    assert load(tmp_path).skipped == {"unreadable": 1}


def test_monochrome1_is_inverted(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = ramp(rng, 4095)
    dicom_file(tmp_path / "cr.dcm", stored, photometric="MONOCHROME1")
    fillers(tmp_path, rng)
    assert_contains(images_of(load(tmp_path)), [(1 - stored / 4095)[None]])


def test_rgb_ybr_and_palette_colour(tmp_path: Path, rng: np.random.Generator) -> None:
    from pydicom.pixels import convert_color_space

    rgb = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    dicom_file(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8, patient="C1")
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    dicom_file(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL", bits_stored=8, patient="C2")
    idx = rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)
    lut = rng.integers(0, 65536, (3, 256)).astype(np.uint16)
    dicom_file(tmp_path / "pal.dcm", idx, photometric="PALETTE COLOR", bits_stored=8, patient="C3",
               RedPaletteColorLookupTableDescriptor=[256, 0, 16],
               GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
               BluePaletteColorLookupTableDescriptor=[256, 0, 16],
               RedPaletteColorLookupTableData=lut[0].astype("<u2").tobytes(),
               GreenPaletteColorLookupTableData=lut[1].astype("<u2").tobytes(),
               BluePaletteColorLookupTableData=lut[2].astype("<u2").tobytes())
    grey = ramp(rng, 4095)
    dicom_file(tmp_path / "grey.dcm", grey, patient="C4")
    s = load(tmp_path)
    assert s.in_channels == 3
    got = images_of(s)
    assert_contains(got, [rgb.transpose(2, 0, 1) / 255])
    assert_contains(got, [rgb.transpose(2, 0, 1) / 255], atol=2.5 / 255)  # YBR -> RGB rounds
    assert_contains(got, [lut[:, idx] / 65535])
    assert_contains(got, [np.repeat(grey[None] / 4095, 3, axis=0)])  # grey in a colour dataset: repeated


def test_multi_frame_gives_one_image_per_frame_of_one_patient(tmp_path: Path, rng: np.random.Generator) -> None:
    frames = ramp(rng, 4095, (5, SIZE, SIZE))
    dicom_file(tmp_path / "mf.dcm", frames, patient="MF")
    fillers(tmp_path, rng)
    s = load(tmp_path)
    assert_contains(images_of(s), [f[None] / 4095 for f in frames])
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 8
    # All five frames belong to one patient, on one side of the split.
    per_split = [np.unique(p.patient_ids, return_counts=True)[1].tolist() for p in (s.train, s.val, s.test)]
    assert sum(c.count(5) for c in per_split) == 1 and sorted(c for cs in per_split for c in cs) == [1, 1, 1, 5]


# ------------------------------------------------------------------------------------------------ discovery, labels


def test_tree_discovery_labels_and_skips(tmp_path: Path, rng: np.random.Generator) -> None:
    for cls in ("normal", "nodule"):
        for p in range(4):
            for k in range(2):
                dicom_file(tmp_path / cls / f"patient{p}" / "study" / f"IM{k}", ramp(rng, 4095),
                           patient=f"{cls}-{p}", preamble=k == 0)  # some files without the 128-byte preamble
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 200)
    (tmp_path / "normal" / "notes.txt").write_text("not dicom")
    (tmp_path / "normal" / ".DS_Store").write_bytes(b"\0")
    sr = dicom_file(tmp_path / "nodule" / "report.dcm", ramp(rng, 4095), patient="nodule-0")
    del sr.PixelData, sr.Rows, sr.Columns  # a structured report: no pixel data
    sr.save_as(tmp_path / "nodule" / "report.dcm", enforce_file_format=True)
    s = load(tmp_path)
    assert s.label_names == ("nodule", "normal")
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 16
    assert s.skipped == {"DICOMDIR": 1, "not DICOM": 1, "hidden": 1, "not an image (no pixel data)": 1}
    assert s.unit == "patient" and privacy_unit(s).records_per_patient == 2  # every patient has 2 images
    assert set(s.train.groups) == {"sex", "age_band"} and set(s.train.groups["age_band"]) == {"40-59"}
    for seed in range(5):  # patient-disjoint for every seed
        t = load(tmp_path, seed=seed)
        ids = [set(p.patient_ids) for p in (t.train, t.val, t.test)]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_dicom_objects_without_pixel_data_are_not_images_not_unreadable(tmp_path: Path,
                                                                         rng: np.random.Generator) -> None:
    """Structured reports, RT structure sets and presentation states sit beside the images in a PACS export. They
    hold no pixel data (some keep the referenced image's Rows and Columns); each is counted as "not an image (no
    pixel data)", never as "unreadable" (which would send the user looking for a damaged file)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    for cls in ("normal", "nodule"):
        for p in range(3):
            ds = dicom_file(tmp_path / cls / f"patient{p}" / "IM0", ramp(rng, 4095), patient=f"{cls}-{p}")
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # one deflated image per class
        ds.save_as(tmp_path / cls / "patient2" / "IM0", enforce_file_format=True)
    kinds = {"sr.dcm": ("1.2.840.10008.5.1.4.1.1.88.22", False),  # Enhanced SR
             "rtstruct.dcm": ("1.2.840.10008.5.1.4.1.1.481.3", False),  # RT Structure Set
             "gsps.dcm": ("1.2.840.10008.5.1.4.1.1.11.1", True),  # Grayscale Softcopy Presentation State
             "stripped.dcm": ("1.2.840.10008.5.1.4.1.1.2", True),  # a CT header exported without its pixel data
             "deflated.dcm": ("1.2.840.10008.5.1.4.1.1.2", True)}  # the same, deflated
    for name, (sop_class, with_size) in kinds.items():
        ds = dicom_file(tmp_path / "nodule" / name, ramp(rng, 4095), patient="nodule-0")
        del ds.PixelData
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        if not with_size:
            del ds.Rows, ds.Columns
        if name == "rtstruct.dcm":  # nested items: a contour referencing an image, no pixel data anywhere
            contour = Dataset()
            contour.ContourData = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
            roi = Dataset()
            roi.ContourSequence = [contour]
            roi.ReferencedSOPInstanceUID = generate_uid()
            ds.ROIContourSequence = [roi]
        if name == "deflated.dcm":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(tmp_path / "nodule" / name, enforce_file_format=True)
    s = load(tmp_path)
    assert s.skipped == {"not an image (no pixel data)": 5}
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 6
    from dpaudit.data import loading_notes

    assert loading_notes(s)[0] == "5 file(s) skipped (5 not an image (no pixel data))"


def as_object(path: Path, sop_class: str | None, modality: str, pixels: np.ndarray, patient: str,
              bits_stored: int = 12) -> None:
    """A DICOM object with pixel data of another SOP Class (None: no SOP Class UID at all) and Modality."""
    ds = dicom_file(path, pixels, patient=patient, bits_stored=bits_stored)
    ds.Modality = modality
    if sop_class is None:
        del ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID
    else:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.save_as(path, enforce_file_format=sop_class is not None)


def test_non_image_objects_with_pixel_data_are_skipped_by_kind(tmp_path: Path, rng: np.random.Generator) -> None:
    """A treatment-planning export keeps segmentations, RT dose grids and RT (portal) images beside the CT images,
    often for one class only: loaded as images they would be a label leak. Only image storage classes load
    (an allow-list); a class dpaudit cannot name loads only with an image Modality; each skip is counted by kind."""
    for cls in ("normal", "nodule"):
        for p in range(3):
            dicom_file(tmp_path / cls / f"patient{p}" / "IM0", ramp(rng, 4095), patient=f"{cls}-{p}")
    objects = {"seg.dcm": ("1.2.840.10008.5.1.4.1.1.66.4", "SEG", 1),  # Segmentation (binary mask frames)
               "dose.dcm": ("1.2.840.10008.5.1.4.1.1.481.2", "RTDOSE", 32),  # RT Dose grid
               "portal.dcm": ("1.2.840.10008.5.1.4.1.1.481.1", "RTIMAGE", 12),  # RT Image
               "private_seg.dcm": ("1.3.6.1.4.1.99999.1.66", "SEG", 8),  # a private class, mask modality
               "private_ct.dcm": ("1.3.6.1.4.1.99999.1.2", "CT", 12),  # a private class of CT images: loads
               "adc.dcm": ("1.2.840.10008.5.1.4.1.1.30", "MR", 12),  # Parametric Map: an image, loads
               "no_class.dcm": (None, "MR", 12)}  # no SOP Class UID, an image modality: loads
    for name, (sop_class, modality, bits) in objects.items():
        pixels = (ramp(rng, 1, (4, SIZE, SIZE)) if bits == 1 else ramp(rng, 2 ** min(bits, 16) - 1))
        as_object(tmp_path / "nodule" / "patient0" / name, sop_class, modality, pixels, "nodule-0", bits)
    s = load(tmp_path)
    assert s.skipped == {"not an image (Segmentation Storage)": 1, "not an image (RT Dose Storage)": 1,
                         "not an image (RT Image Storage)": 1,
                         "not an image (private or unknown SOP Class UID, no image Modality)": 1}
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 6 + 3
    # Listed in a manifest, a non-image object is an error naming the file and its kind.
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "patient_id"], ["nodule/patient0/IM0", "a", "1"],
                                  ["nodule/patient0/seg.dcm", "a", "1"]])
    with pytest.raises(DataError, match=r"seg\.dcm.*not an image \(Segmentation Storage\)\. Fix: list image files"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    from dpaudit.dicom import decode_dicom

    with pytest.raises(DataError, match=r"dose\.dcm.*RT Dose Storage"):
        decode_dicom(tmp_path / "nodule" / "patient0" / "dose.dcm", SIZE, 1, None)


SET_MODALITY = 'Fix: if the files are images, set their Modality (0008,0060)'


def test_files_without_sop_class_and_modality_say_what_is_missing_and_how_to_set_it(
        tmp_path: Path, rng: np.random.Generator) -> None:
    """A minimal research export without SOP Class UID and Modality: the files are there, so the error says what
    they lack and how to give it (a Modality, with DCMTK or pydicom); the fix is checked by following it: with the
    Modality set as the message says, the same files load. Part of a tree: skipped, counted, and a note with the
    fix. In a manifest and in decode_dicom: an error with the same fix."""
    import pydicom

    for cls in ("a", "b"):
        for p in range(3):
            as_object(tmp_path / "tree" / cls / f"p{p}.dcm", None, "", ramp(rng, 4095), f"{cls}-{p}")
    with pytest.raises(DataError) as err:
        load(tmp_path / "tree")
    message = str(err.value)
    assert "6 DICOM file(s) with pixel data have no SOP Class UID and no image Modality" in message
    assert SET_MODALITY in message and 'dcmodify -i "(0008,0060)=CT" FILE' in message
    assert "ds.Modality = \"CT\"; ds.save_as(FILE)" in message
    assert "pass the folder holding" not in message and "\n" not in message
    # A private SOP Class without a Modality: the same fix, naming what is there.
    as_object(tmp_path / "tree" / "a" / "p0.dcm", "1.3.6.1.4.1.99999.1.2", "", ramp(rng, 4095), "a-0")
    with pytest.raises(DataError, match=r"6 DICOM file\(s\) with pixel data have no SOP Class UID \(5\) or a "
                                        r"private or unknown one \(1\), and no image Modality"):
        load(tmp_path / "tree")
    # Following the fix (pydicom, as the message says) makes the files load.
    for f in sorted((tmp_path / "tree").rglob("*.dcm"))[:4]:
        ds = pydicom.dcmread(f, force=True)
        ds.Modality = "CT"
        ds.save_as(f)
    s = load(tmp_path / "tree")
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 4
    assert s.skipped == {"not an image (no SOP Class UID, no image Modality)": 2}
    assert [n for n in s.notes if "SOP Class UID" in n] == [
        "2 DICOM file(s) with pixel data have no SOP Class UID and no image Modality (CT, MR, ...), so they cannot be "
        "told from segmentations or dose grids: skipped; if the files are images, set their Modality (0008,0060) "
        "to the modality they were acquired with, e.g. with DCMTK: dcmodify -i \"(0008,0060)=CT\" FILE, or with "
        "pydicom: ds = pydicom.dcmread(FILE, force=True); ds.Modality = \"CT\"; ds.save_as(FILE) (CT, MR, CR, DX, "
        "US, PT, NM, OT, ...; a SOP Class UID of an image storage class, e.g. CT Image Storage "
        "1.2.840.10008.5.1.4.1.1.2, serves too); files that are not images (masks, dose grids) stay skipped"]
    # Named in a manifest, or decoded alone: an error with the same fix.
    bare = sorted((tmp_path / "tree").rglob("*.dcm"))[-1]
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "patient_id"], [str(bare.relative_to(tmp_path)), "a", "1"]])
    with pytest.raises(DataError, match=r"no SOP Class UID, no image Modality\)\. " + re.escape(SET_MODALITY)):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    from dpaudit.dicom import decode_dicom

    with pytest.raises(DataError, match=re.escape(SET_MODALITY)):
        decode_dicom(bare, SIZE, 1, None)


def test_image_storage_allow_list_matches_the_standards_image_classes() -> None:
    """Checked against pydicom's UID dictionary (an independent transcription of PS3.6): every allowed class is
    named an image (or parametric map, volume) storage class; every standard "... Image Storage" class is allowed
    except the radiotherapy, security-screening (DICOS) and eddy-current ones, which are not patient images."""
    from pydicom._uid_dict import UID_dictionary

    from dpaudit.dicom import IMAGE_STORAGE_CLASSES

    names = {uid: v[0] for uid, v in UID_dictionary.items() if v[1] == "SOP Class"}
    assert IMAGE_STORAGE_CLASSES <= names.keys()
    assert all("Image Storage" in names[u] or names[u] in ("Parametric Map Storage", "Enhanced US Volume Storage")
               for u in IMAGE_STORAGE_CLASSES)
    standard_images = {u for u, n in names.items() if u.startswith("1.2.840.10008.5.1.4.1.1.")
                       and "Image Storage" in n and not n.startswith(("RT ", "Enhanced RT", "Enhanced Continuous RT",
                                                                      "DICOS", "Eddy Current"))}
    assert standard_images <= IMAGE_STORAGE_CLASSES, sorted(names[u] for u in standard_images - IMAGE_STORAGE_CLASSES)


def test_corrupt_dicom_files_are_counted_unreadable_not_as_objects_without_pixels(tmp_path: Path,
                                                                                    rng: np.random.Generator) -> None:
    """A 128-byte preamble, "DICM" and random bytes parse (pydicom, force=True) to a data set of garbage tags: no
    SOP Class UID, no image. That is a damaged file ("unreadable"), not a structured report ("no pixel data")."""
    for cls in ("normal", "nodule"):
        for p in range(3):
            dicom_file(tmp_path / cls / f"patient{p}" / "IM0", ramp(rng, 4095), patient=f"{cls}-{p}")
    for i in range(3):
        (tmp_path / "nodule" / f"corrupt{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(2000))
    s = load(tmp_path)
    assert s.skipped == {"unreadable": 3}
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 6
    from dpaudit.dicom import read_header
    from dpaudit.images import UnreadableImageError

    with pytest.raises(UnreadableImageError, match=r"corrupt0\.dcm' holds no recognisable DICOM object"):
        read_header(tmp_path / "nodule" / "corrupt0.dcm")


@pytest.mark.usefixtures("library_log")
def test_dicom_files_cut_inside_their_header_are_unreadable_and_named(tmp_path: Path, rng: np.random.Generator,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A CT file cut short inside its header (a copy interrupted at 400 bytes) parses, with force=True, to the
    elements before the cut and no pixel data: it is damaged ("unreadable", named on stderr), not a DICOM object
    without an image. Cut inside the file meta, inside an element's value, and inside the next element's tag."""

    for cls in ("normal", "nodule"):
        for p in range(3):
            dicom_file(tmp_path / cls / f"patient{p}" / "IM0", ramp(rng, 4095), patient=f"{cls}-{p}")
    whole = (tmp_path / "nodule" / "patient0" / "IM0").read_bytes()
    header_end = whole.index(b"\xe0\x7f\x10\x00")  # the Pixel Data tag
    cuts = {"meta": whole.index(b"\x02\x00\x03\x00") + 20,  # inside (0002,0003) Media Storage SOP Instance UID
            "value": whole.index(b"\x08\x00\x18\x00") + 20,  # inside (0008,0018) SOP Instance UID
            "tag": whole.index(b"\x08\x00\x18\x00") + 4}  # its tag read, its VR and length cut off
    for name, at in cuts.items():
        assert at < header_end
        (tmp_path / "nodule" / f"cut-{name}.dcm").write_bytes(whole[:at])
    s = load(tmp_path)
    assert s.skipped == {"unreadable": 3}
    named = " ".join(r.getMessage() for r in caplog.records)
    for name in cuts:
        assert f"cut-{name}.dcm' is cut short" in named, named
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 6


@pytest.mark.parametrize("key", ["PatientID", "path"])
def test_labels_csv(tmp_path: Path, rng: np.random.Generator, key: str) -> None:
    data = tmp_path / "data"
    rows = []
    for p in range(10):  # two sites of 5 patients: each site value is held by enough patients to be reported
        for k in range(3):
            rel = f"P{p}/IM{k}.dcm"
            dicom_file(data / rel, ramp(rng, 4095), patient=f"SECRET-{p}")
            if key == "path":
                rows.append({"path": rel, "label": "yes" if p % 2 else "no", "site": f"site{p // 5}"})
        if key == "PatientID":
            rows.append({"PatientID": f"SECRET-{p}", "label": "yes" if p % 2 else "no", "site": f"site{p // 5}"})
    dicom_file(data / "unlisted" / "x.dcm", ramp(rng, 4095), patient="SECRET-X")
    if key == "path":
        rows = [r for r in rows if not r["path"].startswith("unlisted")]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    s = load(data, labels=tmp_path / "labels.csv")
    assert s.label_names == ("no", "yes")
    assert s.skipped == {"not in the labels file": 1}
    assert set(s.train.groups) == {"sex", "age_band", "site"}
    assert privacy_unit(s).records_per_patient == 3
    assert not any("SECRET" in str(v) for part in (s.train, s.val, s.test) for v in part.patient_ids)


def test_missing_patient_id_falls_back_to_the_study(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(4):
        dicom_file(tmp_path / f"{i}.dcm", ramp(rng, 4095), patient=None, sex=None, age=None)
    s = load(tmp_path)
    assert any("StudyInstanceUID (4)" in n for n in s.notes)
    assert set(s.train.groups) == set()


def test_second_load_is_served_from_the_cache(tmp_path: Path, rng: np.random.Generator,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(4):
        dicom_file(tmp_path / "d" / f"{i}.dcm", ramp(rng, 4095), patient=f"P{i}")
    first = images_of(load(tmp_path / "d"))
    import dpaudit.medical

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(dpaudit.medical, "decode_dicom", refuse)
    assert np.array_equal(images_of(load(tmp_path / "d")), first)
    with pytest.raises(AssertionError, match="decoded again"):  # other options: another key
        load(tmp_path / "d", window="0,100")
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", "off")
    with pytest.raises(AssertionError, match="decoded again"):
        load(tmp_path / "d")



def _rewrite_keeping_size_and_mtime(path: Path, write) -> None:
    """Rewrite ``path`` in place (``write(path)``) and set its mtime back to the old value, to the nanosecond: a
    rewrite within one timestamp tick (or ``cp -p``, ``rsync -t``) as the size-and-mtime key saw it."""
    before = path.stat()
    write(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("kind", ["dicom", "nifti"])
def test_a_file_rewritten_with_the_same_size_and_mtime_is_decoded_again(tmp_path: Path, rng: np.random.Generator,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       kind: str) -> None:
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "d"
    for i in range(4):  # uncompressed files whose last bytes are the pixel data (DICOM: 16-bit, NIfTI: float32)
        if kind == "dicom":
            dicom_file(root / f"{i}.dcm", ramp(rng, 4095), patient=f"P{i}")
        else:
            nifti_file(root / f"{i}.nii", rng.random((SIZE, SIZE, 1)).astype(np.float32))
    name = "0.dcm" if kind == "dicom" else "0.nii"
    pixels = ramp(rng, 4095).astype("<u2") if kind == "dicom" else rng.random((SIZE, SIZE)).astype("<f4")
    first = images_of(load_splits(f"{kind}:{root}", image_size=SIZE))
    _rewrite_keeping_size_and_mtime(root / name, lambda p: p.write_bytes(p.read_bytes()[:-pixels.nbytes]
                                                                         + pixels.tobytes()))
    again = images_of(load_splits(f"{kind}:{root}", image_size=SIZE))
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", "off")
    fresh = images_of(load_splits(f"{kind}:{root}", image_size=SIZE))
    assert not np.array_equal(fresh, first)  # the rewrite changed an image
    assert np.array_equal(again, fresh)  # and the cache gave the new one


def test_the_cache_key_is_the_file_identity(tmp_path: Path) -> None:
    """The key changes with each part of the identity that a rewrite changes: the contents with the same size and
    mtime (ctime), a file replaced by a rename (inode)."""
    from dpaudit.cache import file_identity

    path = tmp_path / "a.bin"
    path.write_bytes(b"one")
    first = file_identity(path)
    assert file_identity(path) == first  # nothing changed: the same key, the cache is used
    _rewrite_keeping_size_and_mtime(path, lambda p: p.write_bytes(b"two"))
    second = file_identity(path)
    assert second != first
    other = tmp_path / "b.bin"
    other.write_bytes(b"six")
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # same path, size and mtime; another inode
    assert file_identity(path) not in (first, second)


# ------------------------------------------------------------------------------------------------ NIfTI


def test_nifti_axial_slices_window_and_patients(tmp_path: Path, rng: np.random.Generator) -> None:
    vols = {}
    for i in range(4):
        vol = rng.uniform(-1000, 1000, (SIZE, SIZE, 3)).astype(np.float32)  # x, y, z in RAS+ (identity affine)
        vols[f"v{i}.nii.gz"] = vol
        nifti_file(tmp_path / f"v{i}.nii.gz", vol)
    # LAS storage of the same kind of volume: x reversed; the loader reorients it to RAS+.
    las = rng.uniform(-1000, 1000, (SIZE, SIZE, 3)).astype(np.float32)
    nifti_file(tmp_path / "las.nii", las, np.diag([-1.0, 1, 1, 1]))
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        fh.write("file,label,patient_id\nv0.nii.gz,0,A\nv1.nii.gz,1,A\nv2.nii.gz,0,B\nv3.nii.gz,1,C\nlas.nii,1,D\n")
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE, window="-100,200")
    expect = [np.clip((np.rot90(v[:, :, k]) + 100) / 300, 0, 1)[None] for v in vols.values() for k in range(3)]
    expect += [np.clip((np.rot90(las[::-1, :, k]) + 100) / 300, 0, 1)[None] for k in range(3)]
    assert_contains(images_of(s), expect)
    assert s.unit == "patient" and sum(len(p) for p in (s.train, s.val, s.test)) == 15
    ids = [set(p.patient_ids) for p in (s.train, s.val, s.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Patient A owns two volumes (6 slices); the others 3 slices each.
    assert privacy_unit(s).records_per_patient in (3, 6) and len(set().union(*ids)) == 4
    # Without a window: one affine map from the dataset's minimum and maximum voxel values.
    t = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    lo = min(float(v.min()) for v in [*vols.values(), las])
    hi = max(float(v.max()) for v in [*vols.values(), las])
    assert_contains(images_of(t), [((np.rot90(v[:, :, k]) - lo) / (hi - lo))[None] for v in vols.values()
                                   for k in range(3)], atol=2e-6)
    # Coronal: one slice per voxel along the posterior-anterior axis, 16 per volume.
    c = load_splits(f"nifti:{tmp_path}", image_size=SIZE, slice_axis="coronal")
    assert sum(len(p) for p in (c.train, c.val, c.test)) == 5 * SIZE


def test_nifti_non_finite_voxel_names_file_and_voxel(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(3):
        vol = rng.random((SIZE, SIZE, 2)).astype(np.float32)
        if i == 1:
            vol[3, 4, 1] = np.nan
        nifti_file(tmp_path / f"v{i}.nii", vol)
    # That volume is unreadable: skipped and named (the others train); a manifest that lists it stops.
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"unreadable": 1}
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"v{i}.nii,{i % 2}\n" for i in range(3)))
    with pytest.raises(DataError, match=r"v1\.nii.*non-finite voxel value \(voxel 3, 4, 1"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)


def write_bids(root: Path, rng: np.random.Generator, subjects: int = 8) -> None:
    """The BIDS layout (sub-<label>/ses-<label>/anat/sub-<label>_ses-<label>_<suffix>.nii.gz): two sessions and two
    sequences of each subject, all of one anatomy; a labels CSV ``file,label`` without patient ids."""
    rows = ["file,label"]
    for s in range(subjects):
        anatomy = rng.normal(100, 30, (SIZE, SIZE, 3)).astype(np.float32)
        for ses in ("1", "2"):
            for suffix in ("T1w", "T2w"):
                rel = f"sub-{s:02d}/ses-{ses}/anat/sub-{s:02d}_ses-{ses}_{suffix}.nii.gz"
                nifti_file(root / rel, anatomy + rng.normal(0, 5, anatomy.shape).astype(np.float32))
                rows.append(f"{rel},{s % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.usefixtures("library_log")
def test_nifti_bids_subjects_group_their_sessions_and_sequences(tmp_path: Path, rng: np.random.Generator,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A subject's 4 volumes (2 sessions x 2 sequences, 3 slices each) are one patient: k = 12, and no subject is
    on two sides of the split; the output says the groups are BIDS subjects, not patient ids."""
    write_bids(tmp_path, rng)
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert not caplog.records, caplog.text
    assert s.unit == "subject"
    parts = [set(p.patient_ids) for p in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(set().union(*parts)) == 8 and not any("sub" in i for i in set().union(*parts))
    pu = privacy_unit(s)
    assert pu.unit == "patient" and pu.records_per_patient == 12
    assert "BIDS subject labels" in pu.describe() and "patient ids;" not in pu.describe()
    from dpaudit.audit.profile.schema import PrivacyInfo

    info = PrivacyInfo("patient", 12, "subject", n_units=pu.images_per_unit.n_units, max_images_per_unit=12)
    assert "BIDS subject labels" in info.describe()


@pytest.mark.usefixtures("library_log")
def test_folders_named_sub_something_are_bids_subjects_only_in_a_bids_layout(
        tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture) -> None:
    """A class folder ``sub-acute/`` (beside ``acute/`` and ``chronic/``) is not a subject: its volumes fall back to
    one patient each, with the warning and a note naming why; the same folders beside a dataset_description.json
    (BIDS declared) are subjects, as are file names that repeat ``sub-<label>_``."""
    for c in ("sub-acute", "acute", "chronic"):
        for i in range(4):
            nifti_file(tmp_path / "a" / c / f"case{i}.nii.gz", rng.random((SIZE, SIZE, 3)).astype(np.float32))
    s = load_splits(f"nifti:{tmp_path / 'a'}", image_size=SIZE)
    assert s.unit == "volume" and "each volume is taken as its own patient" in caplog.text
    assert "dataset_description.json" in caplog.text
    assert any(n.startswith("4 volume(s) in sub-<label> folders not grouped by them: not a BIDS layout")
               for n in s.notes), s.notes
    assert privacy_unit(s).records_per_patient == 3  # was 12: the whole class as one patient
    # Cohort folders holding several patients each, labelled by a CSV: each volume alone, not two "patients".
    rows = ["file,label"]
    for g in ("A", "B"):
        for i in range(6):
            rel = f"sub-cohort{g}/pt{i}_T1.nii.gz"
            nifti_file(tmp_path / "d" / rel, rng.random((SIZE, SIZE, 3)).astype(np.float32))
            rows.append(f"{rel},{i % 2}")
    (tmp_path / "d" / "labels.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"nifti:{tmp_path / 'd'}", image_size=SIZE)
    assert s.unit == "volume" and len(set().union(*(set(p.patient_ids) for p in (s.train, s.val, s.test)))) == 12
    # Declared BIDS (dataset_description.json beside the sub-<label> folders): the folders are subjects even where
    # the file names do not repeat them (2 volumes of 3 slices each: k = 6).
    rows = ["file,label"]
    for sub in range(6):
        for scan in ("a", "b"):
            rel = f"sub-{sub:02d}/anat/scan_{scan}.nii.gz"
            nifti_file(tmp_path / "e" / rel, rng.random((SIZE, SIZE, 3)).astype(np.float32))
            rows.append(f"{rel},{sub % 2}")
    (tmp_path / "e" / "labels.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"nifti:{tmp_path / 'e'}", image_size=SIZE)
    assert s.unit == "volume" and privacy_unit(s).records_per_patient == 3
    (tmp_path / "e" / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    s = load_splits(f"nifti:{tmp_path / 'e'}", image_size=SIZE)
    assert s.unit == "subject" and privacy_unit(s).records_per_patient == 6
    # csv: manifests take the same rule (dataset_description.json beside the sub-<label> folder).
    from dpaudit.medical import bids_subject

    assert bids_subject(Path("sub-01/anat/scan_a.nii.gz"), tmp_path / "e") == "01"
    assert bids_subject(Path("sub-acute/case0.nii.gz"), tmp_path / "a") is None
    assert bids_subject(Path("sub-cohortA/sub-07_T1w.nii.gz")) == "07"
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(
        f"a/{c}/case{i}.nii.gz,{c}\n" for c in ("sub-acute", "acute", "chronic") for i in range(4)))
    s = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    assert s.unit == "volume" and any("in sub-<label> folders not grouped" in n for n in s.notes)


@pytest.mark.usefixtures("library_log")
def test_nifti_without_patient_ids_warns_and_says_each_volume_is_a_patient(tmp_path: Path, rng: np.random.Generator,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    for i in range(6):
        nifti_file(tmp_path / f"scan{i}.nii.gz", rng.random((SIZE, SIZE, 3)).astype(np.float32))
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(f"scan{i}.nii.gz,{i % 2}\n" for i in range(6)))
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert s.unit == "volume"
    assert "each volume is taken as its own patient" in caplog.text and "patient_id column" in caplog.text
    assert "--privacy-unit image" in caplog.text
    assert any("each volume taken as one patient" in n for n in s.notes)
    line = privacy_unit(s).describe()
    assert "each volume counts as one patient" in line and "k = 3 slices per volume" in line, line
    # With a patient_id column: the patients' ids; a row without one falls back, a note says so and a warning (its
    # file may be another image of a patient, whose k it would understate).
    caplog.clear()
    (tmp_path / "labels.csv").write_text("file,label,patient_id\n" + "".join(
        f"scan{i}.nii.gz,{i % 2},{'P' + str(i // 2) if i < 5 else ''}\n" for i in range(6)))
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert s.unit == "patient" and len({r.getMessage() for r in caplog.records}) == 1
    assert "1 volume(s) have no patient id" in caplog.text and "Fix: fill in their patient ids" in caplog.text
    assert privacy_unit(s).records_per_patient == 6
    assert any("1 volume(s) without a patient_id or BIDS subject" in n for n in s.notes), s.notes


def test_a_nifti_file_of_several_volumes_is_refused_naming_the_file(tmp_path: Path, rng: np.random.Generator
                                                                   ) -> None:
    """A 4-D file (5 time points) is an error naming it, not its first volume silently; X x Y x Z x 1 is one
    volume."""
    for i in range(3):
        nifti_file(tmp_path / f"v{i}.nii.gz", rng.random((SIZE, SIZE, 3, 1)).astype(np.float32))
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 9
    nifti_file(tmp_path / "bold.nii.gz", rng.random((SIZE, SIZE, 3, 5)).astype(np.float32))
    with pytest.raises(DataError, match=r"bold\.nii\.gz' holds 5 volumes \(shape \(16, 16, 3, 5\)\).*Fix: split it"):
        load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    (tmp_path / "m.csv").write_text("path,label\nbold.nii.gz,0\nv0.nii.gz,1\nv1.nii.gz,0\nv2.nii.gz,1\n")
    with pytest.raises(DataError, match=r": NIfTI file 'bold\.nii\.gz' \(data row 1\) holds 5 volumes"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)


# ------------------------------------------------------------------------------------------------ CSV manifests


def test_csv_manifest_mixes_formats_and_refuses_repeats(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    png = rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)
    Image.fromarray(png).save(tmp_path / "a.png")
    dcm = ramp(rng, 4095, (2, SIZE, SIZE))
    dicom_file(tmp_path / "scans" / "b.dcm", dcm, patient="SECRET")
    vol = rng.random((SIZE, SIZE, 4)).astype(np.float32)
    nifti_file(tmp_path / "c.nii.gz", vol)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)).save(tmp_path / f"f{i}.png")
    lines = ["path,label,patient_id,sex", "a.png,0,p1,female", "scans/b.dcm,1,p2,male", "c.nii.gz,0,p3,female"]
    lines += [f"f{i}.png,{i % 2},p{4 + i},male" for i in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    s = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    got = images_of(s)
    assert_contains(got, [png[None] / 255, *(f[None] / 4095 for f in dcm),
                          *(np.rot90(vol[:, :, k])[None] for k in range(4))])
    assert s.unit == "patient" and sum(len(p) for p in (s.train, s.val, s.test)) == 10
    # 2 female and 4 male patients: both values too rare to report (small-cell suppression), so no sex subgroup
    assert set(s.train.groups) == set()
    assert "subgroup 'sex' not reported: fewer than 2 of its values are held by 5 patients or more" in s.notes
    (tmp_path / "dup.csv").write_text("path,label\na.png,0\nf0.png,1\n./a.png,1\n")
    with pytest.raises(DataError, match=r"data rows 1 and 3 list the same image"):
        load_splits(f"csv:{tmp_path / 'dup.csv'}", image_size=SIZE)
    (tmp_path / "missing.csv").write_text("path,label\na.png,0\nnope.png,1\n")
    with pytest.raises(DataError, match=r"data row 2 names 'nope\.png', which is not a file"):
        load_splits(f"csv:{tmp_path / 'missing.csv'}", image_size=SIZE)


@pytest.mark.usefixtures("library_log")
def test_csv_manifest_says_where_its_patient_grouping_came_from(tmp_path: Path, rng: np.random.Generator,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """No patient_id column: BIDS paths group by subject; other volumes are each a patient, with a warning (not
    "the data's patient ids"); rows that list single slices of one volume are that volume's, not images alone."""
    write_bids(tmp_path / "bids", rng, subjects=6)
    rows = ["path,label"] + [f"bids/{r}" for r in (tmp_path / "bids" / "labels.csv").read_text().split()[1:]]
    (tmp_path / "bids.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"csv:{tmp_path / 'bids.csv'}", image_size=SIZE)
    assert s.unit == "subject" and privacy_unit(s).records_per_patient == 12
    for i in range(6):
        nifti_file(tmp_path / f"v{i}.nii.gz", rng.random((SIZE, SIZE, 3)).astype(np.float32))
    (tmp_path / "vols.csv").write_text("path,label\n" + "".join(f"v{i}.nii.gz,{i % 2}\n" for i in range(6)))
    s = load_splits(f"csv:{tmp_path / 'vols.csv'}", image_size=SIZE)
    assert s.unit == "volume" and "each file is taken as its own patient" in caplog.text
    assert "patient ids;" not in privacy_unit(s).describe()
    (tmp_path / "slices.csv").write_text("path,label,index\n" + "".join(
        f"v{i}.nii.gz,{i % 2},{k}\n" for i in range(6) for k in range(3)))
    s = load_splits(f"csv:{tmp_path / 'slices.csv'}", image_size=SIZE)
    assert s.unit == "volume" and privacy_unit(s).records_per_patient == 3



def test_max_images_below_one_patients_series_still_loads(tmp_path: Path, rng: np.random.Generator) -> None:
    for p in range(2):
        dicom_file(tmp_path / f"p{p}.dcm", ramp(rng, 4095, (40, SIZE, SIZE)), patient=f"P{p}")  # 40 frames each
    s = load(tmp_path, max_images=10)
    assert sum(len(p) for p in (s.train, s.val, s.test)) == 10 and len(s.train) == 10  # one patient, one side


def test_enhanced_multi_frame_rescale_and_window_from_functional_groups(tmp_path: Path,
                                                                       rng: np.random.Generator) -> None:
    from pydicom.dataset import Dataset

    frames = ramp(rng, 4095, (2, SIZE, SIZE))

    def item(sequence: str, **values: object) -> Dataset:
        inner = Dataset()
        for k, v in values.items():
            setattr(inner, k, v)
        outer = Dataset()
        setattr(outer, sequence, [inner])
        return outer

    shared = item("PixelValueTransformationSequence", RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")
    per_frame = [item("FrameVOILUTSequence", WindowCenter=40, WindowWidth=400),
                 item("FrameVOILUTSequence", WindowCenter=500, WindowWidth=1000)]
    dicom_file(tmp_path / "enh.dcm", frames, patient="E", SharedFunctionalGroupsSequence=[shared],
               PerFrameFunctionalGroupsSequence=per_frame)
    fillers(tmp_path, rng)
    hu = frames - 1024.0
    assert_contains(images_of(load(tmp_path)), [linear_window(hu[0], 40, 400)[None],
                                                linear_window(hu[1], 500, 1000)[None]])


def _same_name_volumes(root: Path, rng: np.random.Generator, rows: list[str]) -> None:
    """8 volumes v0..v7 (labels 0, 1 in turn, 2 slices each) and a/scan.nii.gz, b/scan.nii.gz, with ``rows`` (file,
    label, patient_id) added to the labels file."""
    lines = ["file,label,patient_id", *(f"v{i}.nii.gz,{i % 2},p{i}" for i in range(8)), *rows]
    for rel in [*(f"v{i}.nii.gz" for i in range(8)), "a/scan.nii.gz", "b/scan.nii.gz"]:
        nifti_file(root / rel, rng.random((8, 8, 2)).astype(np.float32))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_a_labels_row_keyed_by_a_file_name_two_volumes_share_is_refused(tmp_path: Path,
                                                                        rng: np.random.Generator) -> None:
    """'scan.nii.gz' names a/scan.nii.gz and b/scan.nii.gz: which one the row labels cannot be told. It was attached
    to both (12 slices of class 1, one patient across two folders); now refused, naming the row, the name and both
    files, with the fix, exit code 2 on the command line."""
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    _same_name_volumes(tmp_path, rng, ["scan.nii.gz,1,p9"])
    expected = ("labels.csv data row 9 keys 'scan.nii.gz' by file name, and 2 volumes have that name "
                "('a/scan.nii.gz', 'b/scan.nii.gz'): which one it labels is ambiguous. Fix: key that row by the file's "
                "path relative to the dataset folder (e.g. 'a/scan.nii.gz'), one row per volume, in the file column.")
    with pytest.raises(DataError, match=re.escape(expected)):
        load_splits(f"nifti:{tmp_path}", image_size=8)
    res = CliRunner().invoke(app, ["train", "--dataset", f"nifti:{tmp_path}", "--arch", "smallcnn", "--image-size",
                                   "8", "--sigma", "1.0", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and expected in " ".join(res.output.split()) and "Traceback" not in res.output


def test_a_file_name_row_beside_a_top_level_file_of_that_name_is_refused_unless_each_has_its_path(
        tmp_path: Path, rng: np.random.Generator) -> None:
    """A top-level scan.nii.gz is keyed 'scan.nii.gz' by its path; a/scan.nii.gz without a row of its own would take
    that row by its name too: ambiguous. With a row for a/scan.nii.gz (and b/) each volume has its own label."""
    _same_name_volumes(tmp_path, rng, ["scan.nii.gz,1,p9"])
    (tmp_path / "b" / "scan.nii.gz").rename(tmp_path / "scan.nii.gz")
    with pytest.raises(DataError, match=r"data row 9 keys 'scan.nii.gz' by file name, and 2 volumes have that name "
                                        r"\('a/scan.nii.gz', 'scan.nii.gz'\)"):
        load_splits(f"nifti:{tmp_path}", image_size=8)
    with (tmp_path / "labels.csv").open("a") as fh:
        fh.write("a/scan.nii.gz,0,p10\n")
    s = load_splits(f"nifti:{tmp_path}", image_size=8)
    labels = torch.cat([s.train.labels, s.val.labels, s.test.labels])
    assert torch.bincount(labels).tolist() == [10, 10]  # 5 volumes of 2 slices per class


def test_volumes_that_share_a_name_are_labelled_by_their_relative_paths(tmp_path: Path,
                                                                        rng: np.random.Generator) -> None:
    """Keyed by relative path, a/scan.nii.gz is class 0 and b/scan.nii.gz class 1: 10 slices each (had the bare
    name labelled both, class 1 would hold 12)."""
    _same_name_volumes(tmp_path, rng, ["a/scan.nii.gz,0,p8", "b/scan.nii.gz,1,p9"])
    s = load_splits(f"nifti:{tmp_path}", image_size=8)
    labels = torch.cat([s.train.labels, s.val.labels, s.test.labels])
    assert s.label_names == ("0", "1") and torch.bincount(labels).tolist() == [10, 10]


def test_a_copied_nifti_volume_never_straddles_the_split(tmp_path: Path, rng: np.random.Generator) -> None:
    vols = [rng.random((SIZE, SIZE, 2)).astype(np.float32) for _ in range(6)]
    for i, v in enumerate(vols):
        nifti_file(tmp_path / f"v{i}.nii", v)
    nifti_file(tmp_path / "copy_of_v0.nii", vols[0])  # the same scan exported twice, as another "patient"
    for seed in range(6):
        s = load_splits(f"nifti:{tmp_path}", image_size=SIZE, seed=seed)
        sides = [{im.numpy().tobytes() for im in p.images} for p in (s.train, s.val, s.test)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_one_label_written_as_several_numbers_is_one_class_with_a_note(tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    """Excel writes 1 in some rows and 1.0 in others: one class, not two, in every place labels are read."""
    from PIL import Image

    spellings = ["0", "0.0", "1", "1.0", "01", "1e0"]
    rows, nifti_rows, dicom_rows = ["path,label,patient_id"], ["file,label,patient_id"], ["path,label"]
    for i in range(36):
        lab = spellings[i % 6]
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab},p{i // 2}")
        nifti_file(tmp_path / "nii" / f"v{i}.nii.gz", rng.random((8, 8, 2)).astype(np.float32))
        nifti_rows.append(f"v{i}.nii.gz,{lab},p{i // 2}")
        dicom_file(tmp_path / "dcm" / f"IM{i}.dcm", (rng.random((8, 8)) * 1000).astype(np.uint16),
                   patient=f"P{i // 2}")
        dicom_rows.append(f"IM{i}.dcm,{lab}")
    dicom_rows.append("IM0.dcm,0.0")  # the same key twice, one label in two spellings: no conflict
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "nii" / "labels.csv").write_text("\n".join(nifti_rows) + "\n")
    (tmp_path / "dcm.csv").write_text("\n".join(dicom_rows) + "\n")
    for name, labels, where in [(f"csv:{tmp_path / 'm.csv'}", None, "the manifest's label column"),
                                (f"nifti:{tmp_path / 'nii'}", None, "the labels file's label column"),
                                (f"dicom:{tmp_path / 'dcm'}", tmp_path / "dcm.csv", "the labels file's label column")]:
        splits = load_splits(name, image_size=8, labels=labels)
        assert splits.label_names == ("0", "1"), name
        notes = " ".join(splits.notes)
        assert f"labels '0', '0.0' in {where} are one number: merged as class '0'" in notes, name
        assert f"labels '01', '1', '1.0', '1e0' in {where} are one number: merged as class '1'" in notes, name


def test_labels_that_differ_only_in_case_are_refused_naming_them(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    rows = ["path,label"]
    for i, lab in enumerate(["benign", "Benign", "malignant"] * 3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"the manifest's label column spells one label in several ways that differ "
                                        r"only in case \('Benign', 'benign'\)\. Fix: write each class one way"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=8)


def _png_manifest(tmp_path: Path, rng: np.random.Generator, labels: list[str]) -> str:
    from PIL import Image

    rows = ["path,label,patient_id,site"]
    for i, lab in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab},p{i},{'nan' if i % 2 else 'A'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{tmp_path / 'm.csv'}"


@pytest.mark.parametrize("missing", ["nan", "NaN", "NA", "N/A", "None", "null", "#N/A", ""])
def test_a_missing_value_spelt_as_text_is_refused_like_an_empty_label(tmp_path: Path, rng: np.random.Generator,
                                                                      missing: str) -> None:
    """pandas' astype(str) writes a missing label as 'nan', R as 'NA': missing, never a class of its own."""
    name = _png_manifest(tmp_path, rng, (["0", "1", "1", missing] * 10))
    spelt = rf" \(spelt '{missing}'\)" if missing else ""
    with pytest.raises(DataError, match=rf"the manifest's label column has no label in 10 data row\(s\){spelt}; the "
                                        r"first is data row 4 .*Fix: fill in those labels or delete the rows"):
        load_splits(name, image_size=8)
    # the same in a labels file beside NIfTI volumes, naming that file's column
    rows = ["file,label,patient_id"]
    for i in range(12):
        nifti_file(tmp_path / "nii" / f"v{i}.nii.gz", rng.random((8, 8, 1)).astype(np.float32))
        rows.append(f"v{i}.nii.gz,{['benign', 'malignant', missing][i % 3]},p{i}")
    (tmp_path / "nii" / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"labels.csv's label column has no label in 4 data row\(s\)"):
        load_splits(f"nifti:{tmp_path / 'nii'}", image_size=8)


def test_a_missing_subgroup_value_is_unknown(tmp_path: Path, rng: np.random.Generator) -> None:
    splits = load_splits(_png_manifest(tmp_path, rng, ["0", "1"] * 20), image_size=8)
    sites = set().union(*(set(p.groups["site"]) for p in (splits.train, splits.val, splits.test)))
    assert sites == {"A", "unknown"}


@pytest.mark.parametrize(("spellings", "classes"), [
    (["12345678901234567", "12345678901234568"], ("12345678901234567", "12345678901234568")),  # beyond float's 2**53
    (["1_0", "10"], ("10", "1_0")),  # float() and Decimal() read '1_0' as 10: not a spreadsheet's number
    (["1", "10"], ("1", "10")),
    (["0.1", "0.10000000000000001"], ("0.1", "0.10000000000000001")),  # one float, two numbers
])
def test_labels_that_are_different_numbers_stay_different_classes(tmp_path: Path, rng: np.random.Generator,
                                                                  spellings: list[str], classes: tuple) -> None:
    splits = load_splits(_png_manifest(tmp_path, rng, spellings * 20), image_size=8)
    assert splits.label_names == classes
    assert not [n for n in splits.notes if "one number" in n]


@pytest.mark.parametrize(("spellings", "canon"), [
    (["0.5", ".5"], ".5"), (["01", "1"], "1"), (["+1", "1"], "1"), (["-0", "0"], "0"), (["1e0", "1"], "1"),
    (["12345678901234567", "12345678901234567.0"], "12345678901234567"),
])
def test_exactly_equal_numbers_merge_with_a_note(tmp_path: Path, rng: np.random.Generator, spellings: list[str],
                                                 canon: str) -> None:
    splits = load_splits(_png_manifest(tmp_path, rng, [*spellings, "7", "7"] * 10), image_size=8)
    assert set(splits.label_names) == {canon, "7"}
    assert [n for n in splits.notes if f"one number: merged as class {canon!r}" in n]
