"""Dataset loaders on fixtures built here in the official layouts (HAM10000, MedMNIST .npz, image folders), and
odd and hostile inputs to them.

Every expected value is stated from how the fixture was written (e.g. a 12-bit gradient 0..4095 must load as
v / 4095), never snapshotted from dpaudit's own output.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from dpaudit.data import (
    HAM10000_IMMEDIATE,
    DatasetSplits,
    ImageDataset,
    dataset_choices,
    load_splits,
    make_demo,
)
from dpaudit.errors import DataError

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
DX = ["nv", "bkl", "df", "vasc", "akiec", "bcc", "mel"]


def make_ham10000(root: Path, rng: np.random.Generator, n_lesions: int = 40, size: tuple[int, int] = (60, 45),
                  columns: list[str] | None = None) -> list[dict[str, str]]:
    """A tiny HAM10000 in the official layout: metadata CSV and ISIC_*.jpg split over the two part folders."""
    rows = []
    k = 0
    for les in range(n_lesions):
        dx = DX[les % len(DX)]
        for _ in range(1 + les % 3):  # 1-3 images per lesion, as in HAM10000
            rows.append({"lesion_id": f"HAM_{les:07d}", "image_id": f"ISIC_{24306 + k:07d}", "dx": dx,
                         "dx_type": "histo", "age": str(5 * int(rng.integers(0, 18))) if k % 7 else "",
                         "sex": ["male", "female", "unknown"][k % 3], "localization": "back"})
            k += 1
    for i, row in enumerate(rows):
        part = root / ("HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2")
        part.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(part / f"{row['image_id']}.jpg", quality=90)
    cols = columns or HAM_COLUMNS
    with (root / "HAM10000_metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def make_medmnist(path: Path, rng: np.random.Generator, *, colour: bool, size: int = 28,
                  counts: tuple[int, int, int] = (30, 8, 10), n_classes: int = 7) -> None:
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        shape = (n, size, size, 3) if colour else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, n_classes, (n, 1)).astype(np.uint8)
    np.savez_compressed(path, **arrays)


def make_folder(root: Path, rng: np.random.Generator, classes: dict[str, int], grey: bool = False) -> None:
    for cls, n in classes.items():
        d = root / cls if cls else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (20, 24) if grey else (20, 24, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"img_{i:03d}.png")


def assert_valid_splits(s: DatasetSplits, channels: int, size: int) -> None:
    for part in (s.train, s.val, s.test):
        assert part.images.dtype == torch.float32
        assert part.images.shape[1:] == (channels, size, size)
        assert part.labels.dtype == torch.int64
        if len(part):
            assert 0.0 <= float(part.images.min()) and float(part.images.max()) <= 1.0
    assert len(s.mean) == channels and len(s.std) == channels


# ------------------------------------------------------------------------------------------------ demo


def test_demo_is_deterministic_and_about_20_80() -> None:
    a = load_splits("demo", image_size=64, seed=3)
    b = load_splits("demo", image_size=64, seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images[:10], load_splits("demo", image_size=64, seed=4).train.images[:10])
    assert_valid_splits(a, 3, 64)
    n = len(a.train) + len(a.val) + len(a.test)
    assert n == 2000 and 1000 <= len(a.train) <= 2000
    labels = torch.cat([a.train.labels, a.val.labels, a.test.labels]).numpy()
    # Lesions are class 1 with probability 0.2: 2000 images of ~1.3 views per lesion, so a wide band.
    assert 0.14 < labels.mean() < 0.26
    # More than 10% non-zero pixels everywhere (the attack excludes images below that).
    assert float((a.train.images.sum(1) > 0).float().mean((1, 2)).min()) > 0.1
    assert set(a.train.groups) == {"sex", "age_band"}


def test_demo_lesions_never_straddle_splits_and_several_views_exist() -> None:
    s = make_demo(600, image_size=16, seed=1)
    ids = [set(p.patient_ids) for p in (s.train, s.val, s.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    _, counts = np.unique(s.train.patient_ids, return_counts=True)
    assert counts.max() > 1
    for part in (s.val, s.test):  # stratified: both classes present in every split
        assert set(part.labels.tolist()) == {0, 1}


# ------------------------------------------------------------------------------------------------ HAM10000


def test_ham10000_official_layout_binary_task_and_no_lesion_leakage(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = make_ham10000(tmp_path, rng)
    s = load_splits("ham10000", data_dir=tmp_path, image_size=32, seed=0)
    assert_valid_splits(s, 3, 32)
    assert s.label_names == ("not immediate", "immediate treatment")
    assert len(s.train) + len(s.val) + len(s.test) == len(rows)
    by_lesion = {r["lesion_id"]: int(r["dx"] in HAM10000_IMMEDIATE) for r in rows}
    for part in (s.train, s.val, s.test):
        assert [by_lesion[p] for p in part.patient_ids] == part.labels.tolist()
    splits = [set(p.patient_ids) for p in (s.train, s.val, s.test)]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    assert {"sex", "age_band"} <= set(s.train.groups)
    assert "unknown" in set(np.concatenate([s.train.groups["age_band"], s.test.groups["age_band"],
                                            s.val.groups["age_band"]]))
    for part in (s.val, s.test):
        assert set(part.labels.tolist()) == {0, 1}
    # Another seed gives another split, but the lesion rule holds for every seed.
    for seed in range(1, 4):
        t = load_splits("ham10000", data_dir=tmp_path, image_size=16, seed=seed, max_images=30)
        assert len(t.train) + len(t.val) + len(t.test) <= 30
        sets = [set(p.patient_ids) for p in (t.train, t.val, t.test)]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_ham10000_errors_name_the_problem(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(DataError, match=r"data_dir must be an existing folder, got .*nope.*--data-dir"):
        load_splits("ham10000", data_dir=tmp_path / "nope", image_size=16)
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv"):
        load_splits("ham10000", data_dir=tmp_path, image_size=16)
    with pytest.raises(DataError, match="--data-dir"):
        load_splits("ham10000", image_size=16)
    make_ham10000(tmp_path, rng, n_lesions=6, columns=["image_id", "dx", "age"])
    with pytest.raises(DataError, match=r"\['lesion_id'\]"):
        load_splits("ham10000", data_dir=tmp_path, image_size=16)
    make_ham10000(tmp_path, rng, n_lesions=6)
    bad = next((tmp_path / "HAM10000_images_part_2").glob("ISIC_*.jpg"))
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=bad.name):
        load_splits("ham10000", data_dir=tmp_path, image_size=16)
    bad.unlink()
    with pytest.raises(DataError, match=bad.stem):
        load_splits("ham10000", data_dir=tmp_path, image_size=16)


def test_ham10000_images_directly_in_data_dir(tmp_path: Path, rng: np.random.Generator) -> None:
    make_ham10000(tmp_path, rng, n_lesions=10)
    for p in list(tmp_path.glob("HAM10000_images_part_*/*.jpg")):
        p.rename(tmp_path / p.name)
    s = load_splits("ham10000", data_dir=tmp_path, image_size=16)
    assert len(s.train) + len(s.val) + len(s.test) == sum(1 + i % 3 for i in range(10))


def test_ham10000_ages_out_of_range_or_not_numbers_are_unknown_and_counted(tmp_path: Path,
                                                                           rng: np.random.Generator) -> None:
    """An age the metadata writes as 420 (a typo), -1 (a placeholder), inf, 1e400 (inf as a float) or 'forty' is
    'unknown' and counted in a note, never banded as 60+ or <40 in the subgroup tables; an empty cell and 'nan'
    (pandas' missing value) are missing, 'unknown' without a count. Every other age is 45: '40-59'."""
    rows = make_ham10000(tmp_path, rng, n_lesions=30)
    written = ["420", "-1", "inf", "1e400", "forty", "nan", ""]
    for i, r in enumerate(rows):
        r["age"] = written[i] if i < len(written) else "45"
    with (tmp_path / "HAM10000_metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HAM_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    s = load_splits("ham10000", data_dir=tmp_path, image_size=16, seed=0)
    bands = np.concatenate([p.groups["age_band"] for p in (s.train, s.val, s.test)]).tolist()
    assert sorted(set(bands)) == ["40-59", "unknown"]
    assert bands.count("unknown") == len(written)
    assert "5 age value(s) outside [0, 130] years (or not finite, or not a number) read as 'unknown'" in s.notes


def test_ham10000_unusable_ages_are_counted_over_the_images_loaded(tmp_path: Path, rng: np.random.Generator) -> None:
    """Every age 420: with --max-images 20 the note counts the images loaded (their age_band is 'unknown'), not
    every row of the metadata file (it said the file's count whatever --max-images selected)."""
    rows = make_ham10000(tmp_path, rng, n_lesions=30)
    for r in rows:
        r["age"] = "420"
    with (tmp_path / "HAM10000_metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HAM_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    s = load_splits("ham10000", data_dir=tmp_path, image_size=16, seed=0, max_images=20)
    bands = np.concatenate([p.groups["age_band"] for p in (s.train, s.val, s.test)]).tolist()
    assert set(bands) == {"unknown"} and len(bands) <= 20 < len(rows)
    assert f"{len(bands)} age value(s) outside [0, 130] years (or not finite, or not a number) read as 'unknown'" \
        in s.notes, s.notes


# ------------------------------------------------------------------------------------------------ MedMNIST


@pytest.mark.parametrize("colour", [False, True])
def test_medmnist_npz_keeps_its_splits_and_labels(tmp_path: Path, rng: np.random.Generator, colour: bool) -> None:
    make_medmnist(tmp_path / "dermamnist.npz", rng, colour=colour)
    s = load_splits("dermamnist", data_dir=tmp_path, image_size=28)
    with np.load(tmp_path / "dermamnist.npz") as raw:
        assert len(s.train) == 30 and len(s.val) == 8 and len(s.test) == 10
        assert s.test.labels.tolist() == raw["test_labels"][:, 0].tolist()
        # Same size: pixel values are the stored uint8 / 255 (no resizing applied).
        first = raw["train_images"][0]
        expect = torch.from_numpy(first if colour else first[..., None]).permute(2, 0, 1).float() / 255
        assert torch.allclose(s.train.images[0], expect, atol=1e-6)
    assert_valid_splits(s, 3 if colour else 1, 28)
    assert s.label_names[4] == "mel"
    r = load_splits("dermamnist", data_dir=tmp_path, image_size=20)
    assert_valid_splits(r, 3 if colour else 1, 20)


def test_medmnist_sized_file_and_flags(tmp_path: Path, rng: np.random.Generator) -> None:
    make_medmnist(tmp_path / "pathmnist_64.npz", rng, colour=True, size=64, n_classes=9)
    s = load_splits("pathmnist", data_dir=tmp_path, image_size=64)
    assert_valid_splits(s, 3, 64)
    assert s.num_classes <= 9
    with pytest.raises(DataError, match=r"no breastmnist\.npz"):
        load_splits("breastmnist", data_dir=tmp_path, image_size=28)
    np.savez(tmp_path / "octmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="train_labels"):
        load_splits("octmnist", data_dir=tmp_path, image_size=28)


# ------------------------------------------------------------------------------------------------ folders


def test_folder_with_class_subfolders_stratified(tmp_path: Path, rng: np.random.Generator) -> None:
    make_folder(tmp_path / "imgs", rng, {"benign": 20, "malignant": 10})
    s = load_splits(f"folder:{tmp_path / 'imgs'}", image_size=16, seed=2)
    assert_valid_splits(s, 3, 16)
    assert s.label_names == ("benign", "malignant")
    assert len(s.train) + len(s.val) + len(s.test) == 30
    for part in (s.train, s.val, s.test):
        assert set(part.labels.tolist()) == {0, 1}


def test_folder_without_subfolders_is_one_class_and_grey_stays_grey(tmp_path: Path,
                                                                    rng: np.random.Generator) -> None:
    make_folder(tmp_path, rng, {"": 12}, grey=True)
    s = load_splits("folder:.", data_dir=tmp_path, image_size=16)
    assert_valid_splits(s, 1, 16)
    assert s.num_classes == 1 and int(torch.cat([s.train.labels, s.test.labels]).max()) == 0


def test_folder_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(DataError, match="not an existing folder"):
        load_splits(f"folder:{tmp_path / 'missing'}", image_size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_splits(f"folder:{tmp_path / 'empty'}", image_size=16)
    make_folder(tmp_path / "broken", rng, {"a": 4})
    (tmp_path / "broken" / "a" / "zz.png").write_bytes(b"\x89PNG garbage")
    # A file that does not decode is skipped and counted (the folder's other images load).
    s = load_splits(f"folder:{tmp_path / 'broken'}", image_size=16)
    assert s.skipped == {"unreadable": 1} and len(s.train) + len(s.val) + len(s.test) == 4
    for p in (tmp_path / "broken" / "a").glob("img_*.png"):
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the image files decodes"):
        load_splits(f"folder:{tmp_path / 'broken'}", image_size=16)


# ------------------------------------------------------------------------------------------------ general


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(DataError) as info:
        load_splits("imagenet", image_size=16)
    for choice in ("demo", "ham10000", "dermamnist", "folder:PATH"):
        assert choice in str(info.value)
    assert "folder:PATH" in dataset_choices()


def test_image_dataset_validates_and_never_prints_pixels() -> None:
    with pytest.raises(DataError, match="float32"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(DataError, match="labels must lie"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.tensor([0, 2]), ("a", "b"))
    ds = ImageDataset(torch.full((2, 1, 4, 4), 0.123), torch.tensor([0, 1]), ("a", "b"))
    assert "0.123" not in repr(ds)
    both = ds.concat(ds.subset([1]))
    assert len(both) == 3 and both.labels.tolist() == [0, 1, 1]


# ================================================================================================ odd inputs

runner = CliRunner()


def all_images(s: DatasetSplits) -> torch.Tensor:
    return torch.cat([s.train.images, s.val.images, s.test.images])


def load_only(root: Path, size: int, name: str) -> torch.Tensor:
    """Load a flat folder holding the fixture ``name`` (plus 8-bit grey fillers so that every split has an image)
    and return the fixture's image (C x H x W), found by its patient id (a folder image's relative path). The
    fillers are colour when the fixture is (the dataset takes its majority's channels)."""
    from dpaudit.images import probe_channels

    rng = np.random.default_rng(len(name))
    shape = (5, 5, 3) if probe_channels(root / name) == 3 else (5, 5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"zz_filler{i}.png")
    s = load_splits(f"folder:{root}", image_size=size)
    ids = np.concatenate([p.patient_ids for p in (s.train, s.val, s.test)])
    return all_images(s)[int(np.flatnonzero(ids == name)[0])]


# ------------------------------------------------------------------------------------------------ 1. bit depth


def gradient(h: int, w: int, top: int) -> np.ndarray:
    """A smooth horizontal ramp 0..top (inclusive) repeated over the rows."""
    return np.tile(np.round(np.linspace(0, top, w)).astype(np.int64), (h, 1))


def test_12_bit_png_in_16_bit_container_keeps_every_level(tmp_path: Path) -> None:
    g = gradient(16, 64, 4095).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "ct.png")  # Pillow writes mode I;16 as a 16-bit greyscale PNG
    img = load_only(tmp_path, 64, "ct.png")[0]
    expect = np.tile(g[0].astype(np.float64) / 4095, (64, 1))  # resized 16 -> 64 rows: constant along columns
    assert np.allclose(img.numpy(), expect, atol=1e-6)
    assert float((img == 1.0).float().mean()) == pytest.approx(1 / 64)  # only the last column is white
    assert len(np.unique(img.numpy().round(6))) == len(np.unique(g))


def test_full_range_16_bit_and_dataset_wide_divisor(tmp_path: Path) -> None:
    a = gradient(8, 8, 65535).astype(np.uint16)
    b = gradient(8, 8, 4095).astype(np.uint16)
    (tmp_path / "x").mkdir()
    Image.fromarray(a).save(tmp_path / "x" / "a.png")
    Image.fromarray(b).save(tmp_path / "x" / "b.png")
    # One divisor for the dataset (2^16 - 1, from the largest value): relative brightness is kept.
    assert np.allclose(load_only(tmp_path / "x", 8, "a.png")[0].numpy(), a / 65535, atol=1e-6)
    assert np.allclose(load_only(tmp_path / "x", 8, "b.png")[0].numpy(), b / 65535, atol=1e-6)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA"])
def test_8_bit_pil_modes_map_value_over_255(tmp_path: Path, rng: np.random.Generator, mode: str) -> None:
    rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    im.save(tmp_path / "a.png")
    # What a viewer shows: the mode's own RGB (or L) rendering, value / 255.
    colour = mode not in ("1", "L", "LA")
    expect = np.asarray(im.convert("RGB" if colour else "L"), dtype=np.float64) / 255
    expect = expect.transpose(2, 0, 1) if colour else expect[None]
    img = load_only(tmp_path, 12, "a.png")
    assert img.shape[0] == (3 if colour else 1)
    assert np.allclose(img.numpy(), expect, atol=1e-6)


def test_float_tiffs_are_kept_in_unit_range_and_mapped_affinely_outside(tmp_path: Path,
                                                                        rng: np.random.Generator) -> None:
    unit = rng.random((10, 10)).astype(np.float32)
    (tmp_path / "u").mkdir()
    tifffile.imwrite(tmp_path / "u" / "f.tif", unit)
    img = load_only(tmp_path / "u", 10, "f.tif")
    assert np.allclose(img[0].numpy(), unit, atol=1e-6)
    hu = np.linspace(-1000, 3000, 100, dtype=np.float32).reshape(10, 10)  # e.g. Hounsfield units
    (tmp_path / "h").mkdir()
    tifffile.imwrite(tmp_path / "h" / "f.tif", hu)
    img = load_only(tmp_path / "h", 10, "f.tif")
    assert np.allclose(img[0].numpy(), (hu + 1000) / 4000, atol=1e-6)


def test_16_bit_colour_tiff_full_depth_and_16_bit_colour_png_refused(tmp_path: Path) -> None:
    rgb = np.stack([gradient(8, 8, 4095), gradient(8, 8, 2000), gradient(8, 8, 100)], axis=-1).astype(np.uint16)
    (tmp_path / "t").mkdir()
    tifffile.imwrite(tmp_path / "t" / "c.tif", rgb, photometric="rgb")
    img = load_only(tmp_path / "t", 8, "c.tif")
    assert np.allclose(img.numpy(), rgb.transpose(2, 0, 1) / 4095, atol=1e-6)
    # A 16-bit RGB PNG written byte by byte (Pillow cannot write one): refused, never reduced to 8 bits.
    import struct
    import zlib

    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(8))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c16.png").write_bytes(png)
    with pytest.raises(DataError, match=r"c16\.png.*16-bit colour PNG.*Fix: save it as a 16-bit TIFF"):
        load_splits(f"folder:{tmp_path / 'p'}", image_size=8)


def _half_white(h: int, w: int) -> np.ndarray:
    a = np.zeros((h, w), dtype=np.uint8)
    a[: h // 2] = 255  # stored: top half white
    return a


def test_exif_orientation_6_is_applied_to_jpeg_and_tiff(tmp_path: Path) -> None:
    # Orientation 6: the viewer rotates the stored image 90 degrees clockwise, so the stored top half becomes the
    # RIGHT half on screen.
    im = Image.fromarray(_half_white(32, 48)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "j").mkdir()
    im.save(tmp_path / "j" / "o6.jpg", exif=exif, quality=95)
    (tmp_path / "t").mkdir()
    tifffile.imwrite(tmp_path / "t" / "o6.tif", _half_white(32, 48), extratags=[(274, "H", 1, 6, False)])
    for folder, name in (("j", "o6.jpg"), ("t", "o6.tif")):
        img = load_only(tmp_path / folder, 32, name).mean(0)
        left, right = float(img[:, :14].mean()), float(img[:, 18:].mean())
        assert right > 0.95 and left < 0.05, folder


def test_medmnist_uint16_and_float_arrays_keep_their_depth(tmp_path: Path) -> None:
    g = gradient(28, 28, 4095).astype(np.uint16)
    arrays = {f"{s}_images": np.stack([g] * 3) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.array([[0], [1], [0]]) for s in ("train", "val", "test")}
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    s = load_splits("breastmnist", data_dir=tmp_path, image_size=28)
    assert np.allclose(s.train.images[0, 0].numpy(), g / 4095, atol=1e-6)


# ------------------------------------------------------------------------------------------------ 2. discovery


def test_images_in_subfolders_of_class_folders_load_and_skips_are_counted(tmp_path: Path,
                                                                          rng: np.random.Generator) -> None:
    root = tmp_path / "data"
    for cls, sub, n in (("a", "", 10), ("b", "batch1", 6), ("b", "batch2/deeper", 4)):
        d = root / cls / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    (root / "b" / "._0.png").write_bytes(b"\0")  # macOS resource fork: hidden
    (root / "b" / ".thumbs").mkdir()
    (root / "a" / "notes.txt").write_text("scanner log")
    (root / "README.md").write_text("read me")
    (root / "b" / "batch1" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    s = load_splits(f"folder:{root}", image_size=8)
    assert s.label_names == ("a", "b")
    counts = sum((p.class_counts() for p in (s.train, s.val, s.test)), np.zeros(2, dtype=np.int64))
    assert counts.tolist() == [10, 10]  # nothing of b/batch1 or b/batch2/deeper dropped
    assert s.skipped == {"hidden": 3, "not an image": 2, "unreadable": 1}
    from dpaudit.cli.main import app

    res = runner.invoke(app, ["attack", "--dataset", f"folder:{root}", "--arch", "smallcnn", "--image-size", "8",
                              "--n-images", "1", "--max-images", "40", "--sigmas", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert "note: 6 file(s) skipped (3 hidden, 2 not an image, 1 unreadable)" in res.output


# ------------------------------------------------------------------------------------------------ 3. labels


def test_one_class_refuses_training_but_a_flat_folder_is_attackable(tmp_path: Path,
                                                                    rng: np.random.Generator) -> None:
    from dpaudit.audit.train import TrainConfig, train
    from dpaudit.cli.main import app

    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    with pytest.raises(DataError, match="at least 2 classes in the training split, got 1"):
        train(TrainConfig(dataset=f"folder:{tmp_path}", image_size=16, arch="smallcnn", non_private=True,
                          epochs=1, batch_size=4))
    res = runner.invoke(app, ["train", "--dataset", f"folder:{tmp_path}", "--arch", "smallcnn", "--image-size", "16",
                              "--non-private", "--epochs", "1", "--batch-size", "4"])
    assert res.exit_code == 2 and "at least 2 classes" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["attack", "--dataset", f"folder:{tmp_path}", "--arch", "smallcnn", "--image-size",
                              "16", "--n-images", "2", "--sigmas", "0", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert rows[0]["n_images"] == 2 and rows[0]["success_rate"] == 1.0  # no noise: exact reconstruction


def test_too_few_classes_names_files_left_out_for_want_of_a_label(tmp_path: Path,
                                                                  rng: np.random.Generator) -> None:
    import dataclasses

    from dpaudit.data import load_splits, require_classes

    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    splits = dataclasses.replace(load_splits(f"folder:{tmp_path}", image_size=16),
                                 skipped={"not in the labels file": 21})
    with pytest.raises(DataError) as info:
        require_classes(splits, "training")
    assert "21 file(s) skipped (21 not in the labels file)" in str(info.value)
    assert "Fix: give every file a label in the --labels file (21 file(s) are not in it)" in str(info.value)


def test_a_one_output_model_is_refused_for_the_right_reason(tmp_path: Path) -> None:
    from dpaudit.attacks.reconstruction import run_attack
    from dpaudit.errors import ConfigError
    from dpaudit.models import build_model

    net = build_model("smallcnn", num_classes=1, in_channels=1)
    with pytest.raises(ConfigError, match=r"1 output.*single class.*identically zero") as info:
        run_attack(net, torch.rand(2, 1, 16, 16), torch.zeros(2, dtype=torch.int64), mean=[0.5], std=[0.5],
                   noise_multipliers=[0.0])
    assert "GroupNorm" not in str(info.value)


# ------------------------------------------------------------------------------------------------ 4. pixel values


def medmnist_arrays(rng: np.random.Generator, n: int = 6) -> dict[str, np.ndarray]:
    out = {}
    for s in ("train", "val", "test"):
        out[f"{s}_images"] = rng.random((n, 28, 28)).astype(np.float32)
        out[f"{s}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    return out


def test_non_finite_pixel_in_npz_is_an_error_naming_file_and_index(tmp_path: Path,
                                                                   rng: np.random.Generator) -> None:
    from dpaudit.cli.main import app

    arrays = medmnist_arrays(rng)
    arrays["train_images"][3, 5, 7] = np.nan
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz train_images: image 3 .*\(nan at row 5, column 7\)"):
        load_splits("pneumoniamnist", data_dir=tmp_path, image_size=28)
    res = runner.invoke(app, ["train", "--dataset", "pneumoniamnist", "--data-dir", str(tmp_path), "--arch",
                              "smallcnn", "--image-size", "28", "--non-private", "--epochs", "1"])
    assert res.exit_code == 2 and "image 3" in res.output and len(res.output.strip().splitlines()) <= 2
    arrays["train_images"][3, 5, 7] = np.inf
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match="image 3"):
        load_splits("pneumoniamnist", data_dir=tmp_path, image_size=28)


@pytest.mark.parametrize(("value", "match"), [(2, r"val_labels\[4\] must be an integer in \[0, 1\], got 2\.0 \(1 such"),
                                              (-1, r"val_labels\[4\] must be an integer in \[0, 1\]"),
                                              (0.5, r"val_labels\[4\]")])
def test_labels_out_of_range_name_file_and_index(tmp_path: Path, rng: np.random.Generator, value: float,
                                                 match: str) -> None:
    arrays = medmnist_arrays(rng)
    arrays["val_labels"] = arrays["val_labels"].astype(np.float64)
    arrays["val_labels"][4, 0] = value
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz " + match):
        load_splits("pneumoniamnist", data_dir=tmp_path, image_size=28)


def test_non_finite_float_tiff_names_file_and_pixel_and_a_folder_skips_it(tmp_path: Path,
                                                                          rng: np.random.Generator) -> None:
    """A non-finite pixel makes that file unreadable: a folder skips and counts it (the others train), a manifest
    that lists it stops, both naming the file and the pixel."""
    a = rng.random((9, 9)).astype(np.float32)
    a[2, 4] = np.inf
    tifffile.imwrite(tmp_path / "bad.tif", a)
    with pytest.raises(DataError, match=r"none of the image files decodes \(1 file\(s\) skipped \(1 unreadable"):
        load_splits(f"folder:{tmp_path}", image_size=9)  # the only file: nothing left
    (tmp_path / "m.csv").write_text("path,label\nbad.tif,a\n")
    with pytest.raises(DataError, match=r"bad\.tif.*non-finite pixel value \(inf at row 2, column 4"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=9)
    for i in range(4):
        tifffile.imwrite(tmp_path / f"ok{i}.tif", rng.random((9, 9)).astype(np.float32))
    s = load_splits(f"folder:{tmp_path}", image_size=9)
    assert s.skipped == {"unreadable": 1, "not an image": 1}


# ------------------------------------------------------------------------------------------------ 5. duplicates


def write_ham(root: Path, rng: np.random.Generator, rows: list[dict[str, str]], encoding: str = "utf-8",
              delimiter: str = ",") -> None:
    part = root / "HAM10000_images_part_1"
    part.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if not (part / f"{r['image_id']}.jpg").exists():
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(part / f"{r['image_id']}.jpg")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    (root / "HAM10000_metadata.csv").write_bytes(buf.getvalue().encode(encoding))


def ham_rows(n: int) -> list[dict[str, str]]:
    dxs = ["nv", "mel", "bkl", "bcc"]
    return [{"lesion_id": f"HAM_{i:07d}", "image_id": f"ISIC_{i:07d}", "dx": dxs[i % 4], "dx_type": "histo",
             "age": "50", "sex": "female", "localization": "back"} for i in range(n)]


def test_ham10000_repeated_image_id_is_an_error_naming_the_ids(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = ham_rows(30)
    rows += [dict(rows[3], lesion_id="HAM_9000001"), dict(rows[7], lesion_id="HAM_9000002")]
    write_ham(tmp_path, rng, rows)
    with pytest.raises(DataError, match=r"image_id ISIC_0000003, ISIC_0000007 more than once.*Fix: delete"):
        load_splits("ham10000", data_dir=tmp_path, image_size=8)


def test_identical_files_never_straddle_a_split_and_conflicting_labels_are_an_error(
        tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    # The same scan exported twice into class a (e.g. batch re-export): both copies must land in one split.
    for k in range(4):
        (root / "a" / f"copy{k}.png").write_bytes((root / "a" / f"{k}.png").read_bytes())
    for seed in range(4):
        s = load_splits(f"folder:{root}", image_size=8, seed=seed)
        sides = [{im.numpy().tobytes() for im in part.images} for part in (s.train, s.val, s.test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert any("repeat the content" in n for n in s.notes)
    (root / "b" / "dup.png").write_bytes((root / "a" / "5.png").read_bytes())
    with pytest.raises(DataError, match=r"5\.png.*dup\.png.*identical images under different labels"):
        load_splits(f"folder:{root}", image_size=8)


def test_splits_sharing_a_patient_are_refused_without_printing_the_id() -> None:
    def part(ids: list[str], name: str) -> ImageDataset:
        return ImageDataset(torch.zeros(len(ids), 1, 4, 4), torch.zeros(len(ids), dtype=torch.int64), ("x",), {},
                            np.array(ids), name)

    with pytest.raises(DataError, match="patient-disjoint") as info:
        DatasetSplits(part(["PAT-SECRET-1", "p2"], "t/train"), part(["p3"], "t/val"),
                      part(["PAT-SECRET-1"], "t/test"), "t", unit="patient")
    assert "PAT-SECRET" not in str(info.value)


# ------------------------------------------------------------------------------------------------ 6. CSV encoding


@pytest.mark.parametrize(("encoding", "delimiter", "note"), [("utf-8", ",", None), ("utf-8-sig", ",", None),
                                                             ("cp1252", ",", "cp1252"), ("utf-16", ",", "utf-16"),
                                                             ("utf-8", ";", None)])
def test_ham10000_metadata_in_any_common_encoding(tmp_path: Path, rng: np.random.Generator, encoding: str,
                                                  delimiter: str, note: str | None) -> None:
    rows = ham_rows(24)
    rows[5]["localization"] = "épaule, côté"  # non-ASCII text (and a delimiter inside a quoted cell)
    write_ham(tmp_path, rng, rows, encoding, delimiter)
    s = load_splits("ham10000", data_dir=tmp_path, image_size=8)
    assert len(s.train) + len(s.val) + len(s.test) == 24
    assert (note is None) == (not s.notes) and all(note in n for n in s.notes)


def test_undecodable_csv_is_one_error_naming_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    write_ham(tmp_path, rng, ham_rows(10))
    path = tmp_path / "HAM10000_metadata.csv"
    path.write_bytes(path.read_bytes().replace(b"back", b"b\x81ck"))  # 0x81: neither UTF-8 nor cp1252
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv.*neither UTF-8 nor cp1252.*0x81.*Fix: save it"):
        load_splits("ham10000", data_dir=tmp_path, image_size=8)


def test_a_binary_file_given_as_profile_json_is_one_error(tmp_path: Path) -> None:
    from dpaudit.cli.main import app

    (tmp_path / "profile.json").write_bytes(b"%PDF-1.4\n\xe2\xe3\xcf\xd3 binary")
    res = runner.invoke(app, ["report", str(tmp_path / "profile.json")])
    assert res.exit_code == 2 and "not UTF-8 JSON text" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("mode", "suffix"), [("CMYK", ".tif"), ("CMYK", ".jpg"), ("YCbCr", ".jpg"),
                                              ("RGB", ".tif"), ("L", ".tif")])
def test_other_pil_modes_and_containers_load_as_a_viewer_shows_them(tmp_path: Path, rng: np.random.Generator,
                                                                    mode: str, suffix: str) -> None:
    yy, xx = np.mgrid[0:12, 0:12]
    rgb = np.stack([20 * xx, 20 * yy, 10 * (xx + yy)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it close
    im = Image.fromarray(rgb).convert(mode)
    im.save(tmp_path / f"a{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
    # What Pillow renders the stored file as (value / 255): the reference for 8-bit containers.
    with Image.open(tmp_path / f"a{suffix}") as back:
        colour = mode != "L"
        expect = np.asarray(back.convert("RGB" if colour else "L"), dtype=np.float64) / 255
    expect = expect.transpose(2, 0, 1) if colour else expect[None]
    img = load_only(tmp_path, 12, f"a{suffix}")
    assert np.allclose(img.numpy(), expect, atol=1e-6)


def test_signed_32_bit_tiff_maps_affinely(tmp_path: Path) -> None:
    a = (np.arange(100, dtype=np.int32).reshape(10, 10) - 40) * 1000  # -40000 .. 59000
    tifffile.imwrite(tmp_path / "s.tif", a)
    img = load_only(tmp_path, 10, "s.tif")
    assert np.allclose(img[0].numpy(), (a + 40000) / 99000, atol=1e-6)


def test_medmnist_images_repeated_across_its_own_splits_are_reported(tmp_path: Path,
                                                                     rng: np.random.Generator) -> None:
    arrays = medmnist_arrays(rng)
    arrays["test_images"][2] = arrays["train_images"][4]
    arrays["val_images"][0] = arrays["train_images"][1]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    s = load_splits("pneumoniamnist", data_dir=tmp_path, image_size=28)
    assert s.notes == ("pneumoniamnist.npz: 2 validation/test image(s) identical to a training image",)


@pytest.mark.parametrize(("dataset", "options", "refused"), [
    ("demo", {"window": "-100,200"}, "--window"),
    ("ham10000", {"window": "-100,200"}, "--window"),
    ("dermamnist", {"window": (0, 1)}, "--window"),
    ("folder:x", {"window": "-100,200"}, "--window"),
    ("demo", {"labels": "l.csv"}, "--labels"),
    ("csv:m.csv", {"labels": "l.csv"}, "--labels"),
    ("folder:x", {"labels": "l.csv"}, "--labels"),
    ("demo-ct", {"labels": "l.csv"}, "--labels"),
    ("demo", {"data_dir": "d"}, "--data-dir"),
    ("demo-ct", {"data_dir": "d"}, "--data-dir"),
    ("msd:/data/Task03_Liver", {"data_dir": "d"}, "--data-dir"),
    ("demo", {"slice_axis": "coronal"}, "--slice-axis"),
    ("dicom:x", {"slice_axis": "sagittal"}, "--slice-axis"),
    ("folder:x", {"slice_axis": "coronal"}, "--slice-axis"),
    ("ham10000", {"slice_axis": "coronal"}, "--slice-axis"),
    ("demo-ct", {"slice_axis": "sagittal"}, "--slice-axis"),
    ("msd:/data/Task03_Liver", {"slice_axis": "coronal"}, "--slice-axis"),
    # Where they apply, nothing is refused (nor the default slice axis anywhere: it changes nothing).
    ("dicom:x", {"window": "-100,200", "labels": "l.csv", "data_dir": "d"}, None),
    ("nifti:x", {"window": "-100,200", "labels": "l.csv", "data_dir": "d", "slice_axis": "coronal"}, None),
    ("csv:m.csv", {"window": "-100,200", "data_dir": "d", "slice_axis": "sagittal"}, None),
    ("demo", {"slice_axis": "axial"}, None),
    ("demo-ct", {"window": "-100,200"}, None),
    ("msd:/data/Task03_Liver", {"window": "-100,200"}, None),
    ("ham10000", {"data_dir": "d"}, None),
    ("DermaMNIST", {"data_dir": "d"}, None),
    ("folder:x", {"data_dir": "d"}, None),
    ("no-such-dataset", {"window": "-100,200"}, None),  # unknown names are the loaders' to refuse
])
def test_options_that_do_not_apply_to_the_dataset_are_refused_not_ignored(dataset: str, options: dict,
                                                                         refused: str | None) -> None:
    from dpaudit.data import check_data_options

    if refused is None:
        check_data_options(dataset, **options)
        return
    with pytest.raises(DataError) as info:
        check_data_options(dataset, **options)
    text = str(info.value)
    assert text.startswith(f"{refused} must be left out for --dataset {dataset}") and f"Fix: leave out {refused}" in text


def test_window_and_slice_axis_on_the_demo_are_refused_by_every_command_that_loads_data(tmp_path: Path) -> None:
    """load_splits itself refuses it too (the library's callers), before generating anything."""
    from dpaudit.cli.main import app

    with pytest.raises(DataError, match="--window must be left out for --dataset demo"):
        load_splits("demo", image_size=16, window="-100,200")
    with pytest.raises(DataError, match="--slice-axis must be left out for --dataset demo"):
        load_splits("demo", image_size=16, slice_axis="coronal")
    for args in (["train", "--sigma", "1"], ["attack", "--arch", "smallcnn"], ["profile", "--out", str(tmp_path)],
                 ["mia", "audit", "--sigma", "1"], ["federated", "train", "--epsilon", "8"], ["federated", "attack"]):
        for option, flag in ((["--window", "-100,200"], "--window"), (["--slice-axis", "coronal"], "--slice-axis")):
            res = runner.invoke(app, [*args, *option])
            assert res.exit_code == 2 and f"{flag} must be left out for --dataset demo" in res.output, res.output
    # segmentation data are cut axially: another axis is refused before anything runs
    res = runner.invoke(app, ["train", "--dataset", "demo-ct", "--epsilon", "8", "--slice-axis", "sagittal"])
    assert res.exit_code == 2 and "--slice-axis must be left out for --dataset demo-ct" in res.output, res.output
    assert not any(tmp_path.iterdir())  # the refused profile claimed nothing


def test_an_unknown_dataset_lists_every_name_with_the_commands_for_segmentation() -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    for command in (["train"], ["mia", "audit"]):
        args = [*command, "--dataset", "bogus", "--epsilon", "8"]
        res = CliRunner().invoke(app, args)
        text = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert "csv:FILE (classification)" in text and "[" not in text
        assert "for segmentation (dpaudit train, attack and profile) one of demo-ct, msd:PATH" in text
        assert "got 'bogus'" in text and "segmentation: demo-ct (built in) or msd:PATH" in text
    # The one --dataset help says which commands take the segmentation datasets.
    for command in (["federated", "train"], ["federated", "attack"], ["mia", "audit"], ["train"]):
        res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"})
        assert "segmentation (train, attack and profile only): demo-ct" in " ".join(res.output.split()), command


@pytest.mark.parametrize("command", [["train", "--epsilon", "8"], ["attack", "--sigmas", "0"],
                                     ["profile", "--epsilons", "8"]])
def test_a_data_dir_that_is_not_a_folder_is_named_by_its_flag(tmp_path: Path, command: list[str]) -> None:
    """The line names the flag typed (--data-dir), not the configuration field (data_dir), as every error does."""
    from dpaudit.cli.main import app

    missing = str(tmp_path / "HAM10000")
    res = runner.invoke(app, [*command, "--dataset", "ham10000", "--data-dir", missing, "--out", str(tmp_path / "o")])
    line = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert line == (f"error: --data-dir must be an existing folder, got {missing!r}. Fix: pass the folder holding the "
                    "ham10000 files with --data-dir."), res.output


# ------------------------------------------------------------------------------------------------ class folders


def _class_tree(kind: str, root: Path, rng: np.random.Generator, classes: dict[str, int],
                broken: tuple[str, ...] = ()) -> str:
    """A dataset of ``kind`` (folder, nifti, dicom) with one sub-folder per class holding that many files; the
    files of the ``broken`` classes do not decode (a PNG of text, a NIfTI of garbage: its header does not read, a
    DICOM file cut short inside its pixel data: decoding fails). Class 'c' images are bright, the others dark (a
    folder's PNGs). Returns the dataset name."""
    from medical_fixtures import dicom_file, nifti_file

    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if kind == "folder":
                path = root / cls / f"img_{i}.png"
                base = 200 if cls == "c" else 0
                Image.fromarray(rng.integers(base, base + 50, (8, 8), dtype=np.uint8)).save(path)
            elif kind == "nifti":
                path = root / cls / f"v{i}.nii.gz"
                nifti_file(path, rng.random((8, 8, 2)).astype(np.float32))
            else:
                path = root / cls / f"IM{i}.dcm"
                dicom_file(path, (rng.random((8, 8)) * 1000).astype(np.uint16), patient=f"P{cls}{i}")
            if cls in broken:
                path.write_bytes(path.read_bytes()[:-60] if kind == "dicom" else b"not an image")
    return f"{kind}:{root}"


def _label_counts(s: DatasetSplits) -> list[int]:
    labels = torch.cat([s.train.labels, s.val.labels, s.test.labels])
    return torch.bincount(labels, minlength=len(s.label_names)).tolist()


@pytest.mark.parametrize("kind, per_file", [("folder", 1), ("nifti", 2), ("dicom", 1)])
def test_a_class_folder_none_of_whose_files_decodes_is_dropped_with_a_note(tmp_path: Path, rng: np.random.Generator,
                                                                          kind: str, per_file: int) -> None:
    """Folders a (4 files), b (3 files, none decodes), c (6 files). Before: the folder loader kept class 'b' with no
    image (3 outputs, one never trained), the DICOM and NIfTI loaders dropped it without a word. Now 'b' is
    dropped with a note naming it, and the indices are those of the classes kept: 'a' 0, 'c' 1."""
    name = _class_tree(kind, tmp_path, rng, {"a": 4, "b": 3, "c": 6}, broken=("b",))
    s = load_splits(name, image_size=8)
    assert s.label_names == ("a", "c")
    assert _label_counts(s) == [4 * per_file, 6 * per_file]
    assert "class folder 'b' dropped: none of its 3 file(s) decodes" in s.notes
    if kind == "folder":  # the bright images are class 1, 'c'
        for part in (s.train, s.val, s.test):
            bright = part.images.mean(dim=(1, 2, 3)) > 0.5
            assert bright.tolist() == (part.labels == 1).tolist()


def test_a_dicom_class_folder_of_files_that_are_not_dicom_is_dropped_with_a_note(tmp_path: Path,
                                                                                 rng: np.random.Generator) -> None:
    """Folders a, c (DICOM) and b (4 files without the DICM prefix). Before: 'b' vanished with only '4 file(s)
    skipped (4 not DICOM)'; now the note the folder and NIfTI loaders give for a class folder none of whose files
    decodes. A non-DICOM file beside DICOM files of its class folder (a README) changes nothing."""
    name = _class_tree("dicom", tmp_path, rng, {"a": 4, "b": 4, "c": 6})
    for f in (tmp_path / "b").iterdir():
        f.write_bytes(b"DICM not really" * 3)
    (tmp_path / "a" / "README.txt").write_text("notes")
    s = load_splits(name, image_size=8)
    assert s.label_names == ("a", "c") and _label_counts(s) == [4, 6]
    assert "class folder 'b' dropped: none of its 4 file(s) decodes" in s.notes, s.notes
    assert s.skipped == {"not DICOM": 5}
    # one class left of two: refused, as for files that do not decode
    for f in (tmp_path / "c").iterdir():
        f.write_text("not DICOM either")
    with pytest.raises(DataError, match=re.escape("class folder 'b': none of its 4 file(s) decodes")):
        load_splits(name, image_size=8)


@pytest.mark.parametrize("kind", ["folder", "nifti", "dicom"])
def test_two_class_folders_of_which_one_does_not_decode_are_refused(tmp_path: Path, rng: np.random.Generator,
                                                                    kind: str) -> None:
    """One class left of two: no classifier; refused with exit code 2, naming the folder and the fixes."""
    name = _class_tree(kind, tmp_path, rng, {"a": 4, "b": 3}, broken=("b",))
    expected = ("1 of 2 classes have no image left (class folder 'b': none of its 3 file(s) decodes), which leaves "
                "1 class(es) ('a'); a classifier needs 2. Fix: replace the files that do not decode (each is named "
                "on stderr), or move the folder out of the dataset.")
    with pytest.raises(DataError, match=re.escape(expected)):
        load_splits(name, image_size=8)
    if kind == "folder":
        from dpaudit.cli.main import app

        res = CliRunner().invoke(app, ["train", "--dataset", name, "--arch", "smallcnn", "--image-size", "8",
                                       "--sigma", "1.0", "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and expected in " ".join(res.output.split()) and "Traceback" not in res.output


@pytest.mark.parametrize("kind, per_file", [("folder", 1), ("nifti", 2), ("dicom", 1)])
def test_class_folders_of_one_number_written_differently_are_one_class(tmp_path: Path, rng: np.random.Generator,
                                                                       kind: str, per_file: int) -> None:
    """Folders 1 (3 files), 01 (4 files) and 2 (5 files): classes '1' (7 files) and '2', with a note naming the
    folders; the folder loader made '01' and '1' two classes (and sorted '10' before '2')."""
    name = _class_tree(kind, tmp_path, rng, {"1": 3, "01": 4, "2": 5})
    s = load_splits(name, image_size=8)
    assert s.label_names == ("1", "2") and _label_counts(s) == [7 * per_file, 5 * per_file]
    assert "class folders '01', '1' are one number: merged as class '1'" in s.notes


@pytest.mark.parametrize("kind", ["folder", "nifti", "dicom"])
def test_class_folders_that_differ_only_in_case_are_refused_naming_both(tmp_path: Path, rng: np.random.Generator,
                                                                        kind: str) -> None:
    """Benign and benign: one class or two cannot be told (and Windows or macOS would hold one folder): refused,
    exit code 2, naming both folders; the folder loader made two classes."""
    name = _class_tree(kind, tmp_path, rng, {"Benign": 3, "benign": 3, "malignant": 3})
    expected = ("class folders 'Benign' and 'benign' differ only in case: one class or two cannot be told, and a "
                "case-insensitive file system (Windows, macOS) holds them as one folder. Fix: move the images of "
                "'benign' into 'Benign' if they are one class, or rename one of them if they are two.")
    with pytest.raises(DataError, match=re.escape(expected)):
        load_splits(name, image_size=8)
    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["attack", "--dataset", name, "--arch", "smallcnn", "--image-size", "8"])
    assert res.exit_code == 2 and expected in " ".join(res.output.split()) and "Traceback" not in res.output


def test_numbered_class_folders_are_indexed_by_number(tmp_path: Path, rng: np.random.Generator) -> None:
    """Folders 0 to 10: class index = the folder's number (sorted numerically, as the DICOM and NIfTI loaders and a
    labels column sort them), not '10' before '2'."""
    make_folder(tmp_path, rng, {str(k): 2 for k in range(11)})
    s = load_splits(f"folder:{tmp_path}", image_size=8)
    assert s.label_names == tuple(str(k) for k in range(11))


@pytest.mark.filterwarnings("ignore:Failed to encode value")  # pydicom: the fixture's PatientID holds é
@pytest.mark.parametrize("kind", ["folder", "nifti", "dicom"])
@pytest.mark.parametrize(("folders", "words"), [
    (("benign", "benign "), "class folders 'benign' and 'benign ' differ only in white space at the start or end "
                            "of the name: one class or two cannot be told, and a file browser shows them alike"),
    ((" benign", "benign"), "class folders 'benign' and ' benign' differ only in white space"),
    (("naevus_\u00e9", "naevus_e\u0301"), "class folders 'naevus_\\xe9' and 'naevus_e\\u0301' differ only in "
                                          "Unicode normalisation (the same letters encoded two ways, NFC and NFD)"),
    (("Naevus_\u00e9 ", "naevus_e\u0301"), "differ only in case and white space at the start or end of the name and "
                                           "Unicode normalisation"),
])
def test_class_folders_that_differ_only_in_white_space_or_normalisation_are_refused(
        tmp_path: Path, rng: np.random.Generator, kind: str, folders: tuple[str, str], words: str) -> None:
    """benign and 'benign ', or é as NFC and NFD: shown alike, one folder on some file systems; all three loaders
    made two classes of them (exit code 0). Refused as names differing in case are, naming both (the space and the
    encoding visible) and the fix, exit code 2."""
    name = _class_tree(kind, tmp_path, rng, {folders[0]: 3, folders[1]: 3, "malignant": 3})
    if {p.name for p in tmp_path.iterdir()} != {*folders, "malignant"}:
        pytest.skip("this file system normalises or merges the names")
    with pytest.raises(DataError) as info:
        load_splits(name, image_size=8)
    assert words in str(info.value) and "Fix: move the images of" in str(info.value), str(info.value)
    assert "rename one of them" in str(info.value) and "\n" not in str(info.value)
    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["attack", "--dataset", name, "--arch", "smallcnn", "--image-size", "8"])
    assert res.exit_code == 2 and words in " ".join(res.output.split()) and "Traceback" not in res.output
