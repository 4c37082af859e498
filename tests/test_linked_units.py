"""Copies of one image are one record, and patients linked by copies are one privacy unit.

An export copied and re-pseudonymised (same pixels, another PatientID, perhaps remapped UIDs) puts one person's
images under two ids: counted per id, that person's k is half the images that trained, and the per-patient epsilon
is not a bound. Every loader that detects identical content (DICOM, NIfTI, CSV manifests, image folders) merges the
linked ids; with the image as the unit, a content that trains twice is refused (its k is 2, not 1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from PIL import Image
from pydicom import dcmread

from dpaudit.data import load_splits, privacy_unit, training_copies
from dpaudit.errors import DataError

SIZE = 8


def _units(s) -> dict[str, int]:
    ids, counts = np.unique(s.train.patient_ids, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def dicom_tree_with_a_repseudonymised_copy(root: Path, rng: np.random.Generator, per_patient: int = 3,
                                          patients: int = 8) -> None:
    """``patients`` per class, ``per_patient`` images each; then every file copied under another PatientID (the
    re-pseudonymised export): each person then has 2 * per_patient images under two ids."""
    for cls in ("benign", "malignant"):
        for p in range(patients):
            for i in range(per_patient):
                dicom_file(root / cls / f"P{p}" / f"{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)),
                           patient=f"{cls}-{p}")
    for src in sorted(root.rglob("*.dcm")):
        ds = dcmread(src)
        ds.PatientID = f"PSEUDO-{ds.PatientID}"  # same pixels, same SOPInstanceUID, other PatientID
        dst = root / "export2" / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst)


def test_dicom_patients_linked_by_copies_are_one_unit_for_k_and_the_split(tmp_path: Path,
                                                                          rng: np.random.Generator) -> None:
    root = tmp_path / "d"
    dicom_tree_with_a_repseudonymised_copy(root, rng)
    (root / "export2" / "benign").rename(root / "benign" / "export2")  # the copies under the class folders
    (root / "export2" / "malignant").rename(root / "malignant" / "export2")
    for seed in range(3):
        s = load_splits(f"dicom:{root}", image_size=SIZE, seed=seed)
        # Reference: each person has 3 images and 3 copies of them = 6 training images per unit.
        assert set(_units(s).values()) == {6}
        unit = privacy_unit(s)
        assert (unit.unit, unit.records_per_patient) == ("patient", 6)
        note = next(n for n in s.notes if "repeat the content" in n)
        assert "48 image(s) repeat" in note and "32 patient ids share identical images and count as 16" in note
        assert "PSEUDO" not in " ".join(s.notes) and "benign-" not in " ".join(s.notes)
        with pytest.raises(DataError, match=r"48 training image|up to 2 copies") as info:
            privacy_unit(s, "image")
        assert "leave out --privacy-unit image" in str(info.value)
        assert training_copies(s)[1] == 2


def test_dicom_copies_with_remapped_uids_are_found_by_their_pixels(tmp_path: Path, rng: np.random.Generator) -> None:
    """De-identification tools remap every UID as well as the PatientID: a copy is still the same stored pixels
    (even re-encoded big-endian), and links the two ids. Constant images of different patients stay apart."""
    from pydicom.uid import generate_uid

    root = tmp_path / "d"
    for cls in ("benign", "malignant"):
        for p in range(6):
            for i in range(2):
                dicom_file(root / cls / f"P{p}" / f"{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"{cls}-{p}")
            # one blank image per patient: equal stored values in every patient, not a copy
            dicom_file(root / cls / f"P{p}" / "blank.dcm", np.full((SIZE, SIZE), 1000), patient=f"{cls}-{p}")
    for src in sorted(root.rglob("[0-9].dcm")):
        ds = dcmread(src)
        ds.PatientID, ds.PatientName = f"NEW-{ds.PatientID}", "Anon"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        dst = src.parent.parent / f"re-{src.parent.name}" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst)
    s = load_splits(f"dicom:{root}", image_size=SIZE)
    # Reference: each person has 2 images, their blank one, and the 2 copies under the new id = 5 per unit.
    assert set(_units(s).values()) == {5}
    assert privacy_unit(s).records_per_patient == 5


def test_dicom_images_sharing_one_uid_are_not_copies(tmp_path: Path, rng: np.random.Generator) -> None:
    """An anonymiser that writes one constant SOPInstanceUID into every file: different images stay different (was:
    'hold identical images under different labels')."""
    for cls in ("benign", "malignant"):
        for p in range(6):
            for i in range(2):
                dicom_file(tmp_path / cls / f"P{p}" / f"{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)),
                           patient=f"{cls}-{p}", SOPInstanceUID="1.2.3.4")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert not any("repeat the content" in n for n in s.notes)
    assert set(_units(s).values()) == {2} and training_copies(s) == (0, 1)


def test_a_copy_under_the_same_patient_counts_in_k_and_is_refused_per_image(tmp_path: Path,
                                                                             rng: np.random.Generator) -> None:
    for p in range(8):
        for i in range(2):
            dicom_file(tmp_path / f"{p}_{i}.dcm", rng.integers(0, 4096, (SIZE, SIZE)), patient=f"P{p}")
    for p in range(8):
        shutil.copy(tmp_path / f"{p}_0.dcm", tmp_path / f"{p}_0_again.dcm")  # an export copied twice
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert privacy_unit(s).records_per_patient == 3
    with pytest.raises(DataError, match=r"up to 2 copies of one image.*their k is 2, not 1"):
        privacy_unit(s, "image")
    # a k given by hand covers the copies
    assert privacy_unit(s, "image", given_k=2).unit == "image"


def test_image_folder_copies_are_refused_with_the_image_unit(tmp_path: Path, rng: np.random.Generator) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    s = load_splits(f"folder:{tmp_path}", image_size=SIZE)
    assert privacy_unit(s).records_per_patient == 1  # distinct images: k = 1 holds
    for i in range(10):
        shutil.copy(tmp_path / "a" / f"{i}.png", tmp_path / "a" / f"copy{i}.png")
    s = load_splits(f"folder:{tmp_path}", image_size=SIZE)
    repeats, most = training_copies(s)
    assert most == 2 and repeats >= 1
    with pytest.raises(DataError, match=r"each image must train once.*Fix: keep one file of each set of copies and "
                                        r"remove the others from the data: \d+ set\(s\) of copies, e.g. ") as info:
        privacy_unit(s)
    assert "--privacy-unit image (per patient" not in str(info.value)  # no patient ids: that fix does not apply
    # The error names up to 3 sets of copies by their paths (no note is printed before it), with the count.
    message = str(info.value)
    sets = int(message.split(": ")[-1].split(" set(s)")[0].rsplit(" ", 1)[-1])
    assert sets == repeats  # two copies per content: one set per repeat
    shown = message.split("e.g. ")[1].rstrip(".").split(" and ")[0].split("; ")
    assert len(shown) == min(3, sets)
    for group in shown:
        a, b = (tmp_path / x.strip("'") for x in group.split(" = "))  # relative to the dataset's folder
        assert a.read_bytes() == b.read_bytes() and {a.name, b.name} == {a.name.removeprefix("copy"),
                                                                         "copy" + a.name.removeprefix("copy")}
    assert (sets > 3) == (f"and {sets - 3} more set(s)" in message)
    assert not any(str(tmp_path) in n for n in s.notes)  # paths stay out of what is written


def test_csv_manifest_patients_linked_by_a_copied_file_are_one_unit(tmp_path: Path,
                                                                    rng: np.random.Generator) -> None:
    rows = ["path,label,patient_id"]
    for p in range(10):
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{p}_{i}.png")
            rows.append(f"{p}_{i}.png,{p % 2},p{p}")
    for p in range(10):  # each person's images again under a second id
        for i in range(2):
            shutil.copy(tmp_path / f"{p}_{i}.png", tmp_path / f"again_{p}_{i}.png")
            rows.append(f"again_{p}_{i}.png,{p % 2},q{p}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    assert set(_units(s).values()) == {4}
    assert privacy_unit(s).records_per_patient == 4


def test_nifti_volume_copied_as_another_patient_is_one_unit(tmp_path: Path, rng: np.random.Generator) -> None:
    vols = [rng.random((SIZE, SIZE, 3)).astype(np.float32) for _ in range(6)]
    for i, v in enumerate(vols):
        nifti_file(tmp_path / f"v{i}.nii", v)
        nifti_file(tmp_path / f"copy_of_v{i}.nii", v)  # every scan exported twice, as another "patient"
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert set(_units(s).values()) == {6}  # 3 slices, twice
    assert privacy_unit(s).records_per_patient == 6


def test_image_copies_re_encoded_under_another_patient_are_linked_by_their_pixels(tmp_path: Path,
                                                                                  rng: np.random.Generator) -> None:
    """A PNG re-saved at another compression level (other bytes, the same pixels), a TIFF of it, a copy with an
    EXIF orientation and pixels rotated to match, a grey image stored as RGB: each is the same decoded image and
    links the two patient ids (was: a hash of the file's bytes, k half the truth). Constant images of different
    patients stay apart."""
    import tifffile

    rows = ["path,label,patient_id"]
    for p in range(8):
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / f"{p}_{i}.png",
                                                                                 compress_level=1)
            rows.append(f"{p}_{i}.png,{p % 2},p{p}")
        Image.fromarray(np.full((12, 10), 77, np.uint8)).save(tmp_path / f"{p}_blank.png")
        rows.append(f"{p}_blank.png,{p % 2},p{p}")
    for p in range(8):  # each person's two images again under a second id, each re-encoded another way
        a0 = np.asarray(Image.open(tmp_path / f"{p}_0.png"))
        a1 = np.asarray(Image.open(tmp_path / f"{p}_1.png"))
        if p % 2:
            Image.fromarray(a0).save(tmp_path / f"re_{p}_0.png", compress_level=9)
            tifffile.imwrite(tmp_path / f"re_{p}_1.tif", a1)
            names = [f"re_{p}_0.png", f"re_{p}_1.tif"]
        else:
            Image.fromarray(np.repeat(a0[..., None], 3, axis=-1)).save(tmp_path / f"re_{p}_0.png")  # grey as RGB
            exif = Image.Exif()
            exif[0x0112] = 6  # "rotate 90 clockwise to view": the stored pixels rotated back
            Image.fromarray(np.rot90(a1, 1).copy()).save(tmp_path / f"re_{p}_1.png", exif=exif)
            names = [f"re_{p}_0.png", f"re_{p}_1.png"]
        assert (tmp_path / names[0]).read_bytes() != (tmp_path / f"{p}_0.png").read_bytes()
        rows += [f"{n},{p % 2},q{p}" for n in names]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    # Reference: each person has 2 images, 1 blank one and the 2 copies under the second id = 5 per unit.
    assert set(_units(s).values()) == {5}
    assert privacy_unit(s).records_per_patient == 5


@pytest.mark.parametrize("with_257", [False, True])
def test_png_copies_at_another_bit_depth_are_linked_by_their_training_input(tmp_path: Path, rng: np.random.Generator,
                                                                              with_257: bool) -> None:
    """Two files are copies when the loader gives the same values in [0, 1]. With 16-bit PNGs holding 257 v
    (the standard 8 -> 16-bit conversion) the dataset's 16-bit divisor is 65535, and 257 v / 65535 = v / 255: the
    8-bit PNG holding v and its conversion are copies, while the 16-bit PNG holding the same integers v (v / 65535)
    is another input (was: linked to v, its conversion missed). Without them every 16-bit value stays below 256,
    the divisor is 255, and the 16-bit PNG holding v gives v / 255 like the 8-bit file: copies."""
    rows = ["path,label,patient_id"]
    for p in range(8):
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / f"{p}_{i}.png")
            rows.append(f"{p}_{i}.png,{p % 2},p{p}")
        v = np.asarray(Image.open(tmp_path / f"{p}_0.png")).astype(np.uint16)
        assert v.max() >= 128  # so 257 v needs 16 bits
        Image.fromarray(v).save(tmp_path / f"same_ints_{p}.png")  # the same integers stored in 16 bits
        assert Image.open(tmp_path / f"same_ints_{p}.png").mode.startswith("I;16")
        rows.append(f"same_ints_{p}.png,{p % 2},r{p}")
        for i in range(2 * with_257):  # both of p's images converted to 16 bits
            w = np.asarray(Image.open(tmp_path / f"{p}_{i}.png")).astype(np.uint16)
            Image.fromarray(w * 257).save(tmp_path / f"x257_{p}_{i}.png")
            rows.append(f"x257_{p}_{i}.png,{p % 2},q{p}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)
    ids = np.concatenate([s.train.patient_ids, s.val.patient_ids, s.test.patient_ids])
    sizes = sorted(np.unique(ids, return_counts=True)[1].tolist())
    # Reference: beside the 257 v files, p's 2 images with q's 2 conversions = 4 per unit, and r's v on its own;
    # without them, p's 2 images with r's v = 3.
    assert sizes == ([1] * 8 + [4] * 8 if with_257 else [3] * 8)
    assert privacy_unit(s).records_per_patient == 3 + with_257


def test_dicom_copies_are_identified_by_mapped_values_not_stored_ones(tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    """The same stored values through other Modality LUTs (x -> 10 x, x -> 63 - x), other palettes, or read as RGB
    and as YBR_FULL are other images (was: linked by their stored values); the same LUT or palette is a copy."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dpaudit.dicom import decode_dicom

    def lut(table: np.ndarray) -> dict[str, object]:
        item = Dataset()
        item.LUTDescriptor = [len(table), 0, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = np.asarray(table, np.uint16).tobytes()
        return {"ModalityLUTSequence": Sequence([item])}

    def palette(seed: int) -> dict[str, object]:
        maps = np.random.default_rng(seed).integers(0, 65536, (3, 256)).astype("<u2")
        out: dict[str, object] = {}
        for colour, table in zip(("Red", "Green", "Blue"), maps, strict=True):
            out[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
            out[f"{colour}PaletteColorLookupTableData"] = table.tobytes()
        return out

    def digest(name: str, pixels: np.ndarray, **kw: object) -> str:
        dicom_file(tmp_path / f"{name}.dcm", pixels, **kw)
        (got,) = decode_dicom(tmp_path / f"{name}.dcm", SIZE, 3 if pixels.ndim == 3 else 1, None)
        assert got.digest
        return got.digest

    v = rng.integers(0, 64, (SIZE, SIZE))
    ten, mirror = lut(np.arange(64) * 10), lut(63 - np.arange(64))
    assert digest("I", v, bits_stored=16, **ten) != digest("J", v, bits_stored=16, **mirror)
    assert digest("I", v, bits_stored=16, **ten) == digest("I2", v, bits_stored=16, **lut(np.arange(64) * 10))
    idx = rng.integers(0, 256, (SIZE, SIZE))
    assert digest("P1", idx, bits_stored=8, photometric="PALETTE COLOR", **palette(1)) != digest(
        "P2", idx, bits_stored=8, photometric="PALETTE COLOR", **palette(2))
    assert digest("P1", idx, bits_stored=8, photometric="PALETTE COLOR", **palette(1)) == digest(
        "P3", idx, bits_stored=8, photometric="PALETTE COLOR", **palette(1))
    rgb = rng.integers(0, 256, (SIZE, SIZE, 3))
    assert digest("RGB", rgb, bits_stored=8, photometric="RGB") != digest("YBR", rgb, bits_stored=8,
                                                                          photometric="YBR_FULL")
