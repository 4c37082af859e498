"""Decoding works at the files' full resolution: each file's dimensions are read from its header before anything
is decoded, a file whose decode alone cannot fit is refused as one line naming it, and the files decoded at once
are as many as fit. Segmentation volumes count their real slices (from the NIfTI headers) and int64 label maps.
torch's allocation failures are one line like numpy's MemoryError."""

from __future__ import annotations

import hashlib
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import dpaudit.memory as memory
from dpaudit.cli.main import app
from dpaudit.data import load_splits
from dpaudit.errors import DataError
from dpaudit.images import content_id, probe_size, read_image
from dpaudit.memory import DECODE_BYTES_8BIT, DECODE_BYTES_DEEP, DecodeSize
from dpaudit.volumes import load_segmentation_splits
from tests.medical_fixtures import dicom_file
from tests.test_data import make_folder
from tests.test_segmentation import write_msd

runner = CliRunner()


def small_memory(monkeypatch: pytest.MonkeyPatch, n_bytes: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: n_bytes)


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def png_claiming(path: Path, width: int, height: int, colour_type: int = 2) -> None:
    """A PNG of a few bytes whose header (IHDR) claims ``width`` x ``height`` 8-bit pixels (colour type 2: RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------------------------
# The identity hash is computed a block at a time: the same digests as hashing one full float64 copy


def reference_content_id(pixels: np.ndarray, tag: str = "") -> str:
    """The identity as one full copy computes it (the formula before hashing went blockwise)."""
    if not pixels.size or pixels.min() == pixels.max():
        return ""
    pixels = pixels.astype(np.float64) + 0.0 if pixels.dtype.kind == "f" else pixels.astype(np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tag, pixels.shape, pixels.dtype.str)).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_blockwise_identity_equals_one_full_copy(block: int, rng: np.random.Generator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import dpaudit.images as images

    monkeypatch.setattr(images, "HASH_BLOCK_VALUES", block)
    rgb = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    deep = rng.integers(0, 4096, (9, 10, 1), dtype=np.uint16)
    floats = rng.normal(size=(8, 5)).astype(np.float32)
    floats[0, 0] = -0.0
    for arr in (rgb, deep, floats, rgb.transpose(1, 0, 2), rgb[::-1], rgb.ravel()):
        assert content_id(arr, "t") == reference_content_id(arr, "t")
    # With a divisor: the values divided in float64, as the loader's 8-bit and palette images were hashed.
    for arr, d in ((rgb, 255.0), (deep.astype(np.int64), 4095.0), (deep, 65535.0)):
        assert content_id(arr, "image", divisor=d) == reference_content_id(arr.astype(np.float64) / d, "image")
    assert content_id(np.full((4, 4), 7, np.uint8), divisor=255.0) == ""


def test_read_image_is_unchanged_and_its_peak_is_bounded(tmp_path: Path, rng: np.random.Generator) -> None:
    # The decoded, resized values and the identity of an 8-bit RGB and a 16-bit grey image as the full-copy
    # formula gives them (an independent recomputation: Pillow's resize and the reference hash).
    a = rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    px = read_image(tmp_path / "a.png", 16, 3)
    assert px.digest == reference_content_id(a.astype(np.float64) / 255.0, "image")
    want = np.asarray(Image.fromarray(a).resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=None))
    np.testing.assert_array_equal(px.data, want.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))
    b = rng.integers(0, 60000, (40, 30), dtype=np.uint16)
    Image.fromarray(b).save(tmp_path / "b.png")
    got = read_image(tmp_path / "b.png", 16, 1).digest
    assert got.split("|")[0] == "16=" + reference_content_id(b[..., None].astype(np.int64) / 65535.0, "image")


def test_probe_size_reads_the_header_only(tmp_path: Path) -> None:
    png_claiming(tmp_path / "huge.png", 100000, 90000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        size = probe_size(tmp_path / "huge.png", 28, 3)
    assert size == DecodeSize(90000, 100000, 3)
    assert size.peak_bytes == 90000 * 100000 * 3 * DECODE_BYTES_8BIT
    Image.fromarray(np.zeros((40, 30), np.uint16)).save(tmp_path / "deep.png")
    assert probe_size(tmp_path / "deep.png", 28, 1) == DecodeSize(40, 30, 1, deep=True)
    import tifffile

    tifffile.imwrite(tmp_path / "t.tif", np.zeros((40, 30, 3), np.uint8), photometric="rgb")
    assert probe_size(tmp_path / "t.tif", 28, 3) == DecodeSize(40, 30, 3, deep=True)  # float32 copies at any depth
    # A JPEG is decoded at its draft scale (at least twice the target size): 800 px at --image-size 28 -> 1/8.
    Image.fromarray(np.zeros((800, 640, 3), np.uint8)).save(tmp_path / "c.jpg")
    assert probe_size(tmp_path / "c.jpg", 28, 3) == DecodeSize(100, 80, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert probe_size(tmp_path / "bad.png", 28, 3) is None


# ------------------------------------------------------------------------------------------------------------
# A file too large to decode is refused, before decoding, as one line naming it


@pytest.mark.parametrize(("width", "height"), [(100000, 100000), (10000, 10000)])  # PIL: bomb error / warning
def test_huge_source_image_is_one_line_naming_the_file(width: int, height: int, tmp_path: Path,
                                                        rng: np.random.Generator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "d", rng, {"a": 3, "b": 3})
    png_claiming(tmp_path / "d" / "b" / "huge.png", width, height)
    small_memory(monkeypatch, 2 ** 30)
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    decoded = []
    import dpaudit.images as images

    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda *a, **k: decoded.append(a) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = one_line_error(runner.invoke(app, ["attack", "--dataset", f"folder:{tmp_path / 'd'}",
                                                 "--image-size", "28", "--sigmas", "0", "--n-images", "2"]))
    estimate = memory.format_bytes(width * height * 3 * DECODE_BYTES_8BIT)
    assert (f"image 'b/huge.png' is {height} x {width} px x 3 channel(s): decoding it at full resolution (before "
            f"resizing) needs an estimated {estimate}; 1.00 GiB available. Fix: replace the file with a downsampled "
            "copy") in out
    assert str(tmp_path) not in out.split("folder:", 1)[1].split(": image", 1)[1]  # relative to the folder
    assert "Decompression" not in out and not decoded


def test_decodes_at_once_are_as_many_as_fit(tmp_path: Path, rng: np.random.Generator,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "d", rng, {"a": 4, "b": 4}, grey=True)  # 20 x 24 px grey
    import dpaudit.data as data

    workers = []
    real_pool = data.ThreadPoolExecutor

    def recording(max_workers: int):  # type: ignore[no-untyped-def]
        workers.append(max_workers)
        return real_pool(max_workers=max_workers)

    monkeypatch.setattr(data, "ThreadPoolExecutor", recording)
    full = load_splits(f"folder:{tmp_path / 'd'}", image_size=8)
    peak = 20 * 24 * DECODE_BYTES_8BIT
    small_memory(monkeypatch, 2 * peak + peak // 2)  # two decodes fit, three do not (the dataset: 4 KiB)
    limited = load_splits(f"folder:{tmp_path / 'd'}", image_size=8)
    assert workers[-2:] == [memory.DECODE_WORKERS, 2]
    for a, b in ((full.train, limited.train), (full.val, limited.val), (full.test, limited.test)):
        np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())


def test_dicom_too_large_to_decode_is_refused_from_its_header(tmp_path: Path, rng: np.random.Generator,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "dcm"
    for i in range(6):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        dicom_file(root / "ab"[i % 2] / f"p{i}.dcm", rng.integers(0, 4096, (3, 64, 48)), patient=f"PAT-{i:04d}")
    peak = 3 * 64 * 48 * DECODE_BYTES_DEEP  # 3 frames of 64 x 48, through float64
    small_memory(monkeypatch, peak - 1)  # the dataset at 8 px (6 x 3 frames, 4.5 KiB) fits; one decode does not
    with pytest.raises(DataError) as info:
        load_splits(f"dicom:{root}", image_size=8)
    text = str(info.value)
    assert "dcm: image '" in text and ".dcm' is 64 x 48 px x 1 channel(s) x 3 frame(s)" in text
    assert f"needs an estimated {memory.format_bytes(peak)}" in text and "Fix: replace the file" in text


# ------------------------------------------------------------------------------------------------------------
# Segmentation: the real slices, with int64 label maps


def test_segmentation_counts_every_slice_and_its_label_map(tmp_path: Path, rng: np.random.Generator,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_msd(tmp_path / "Task03_Liver", rng, n=5, shape=(20, 20, 6))  # 30 slices
    need = 2 * 30 * (4 + 8) * 16 * 16  # float32 slices and int64 label maps, twice: 180 KiB
    # One slice per volume (2 x 5 x 4 x 256 = 10 KiB) would have fitted, and so does one volume's decode.
    small_memory(monkeypatch, 150_000)
    with pytest.raises(DataError) as info:
        load_segmentation_splits(f"msd:{root}", image_size=16)
    text = str(info.value)
    assert (f"(30 slice(s) x 1 channel(s) x 16 x 16 px as float32 with an int64 label map each, held twice: an "
            f"estimated {memory.format_bytes(need)} at least; {memory.format_bytes(150_000)} available)") in text
    # The suggestions fit in half the memory: 75 000 bytes hold 75000 // (2 x 12 x 8 x 8) = 48 slices at 8 px,
    # and 75000 // (24 x 256 x 6 slices a volume) = 2 volumes at 16 px (fewer than 3: no number given).
    assert "pass a smaller --image-size (at most about 8)" in text and "load fewer images (--max-images)" in text
    assert "50% of the memory available" in text
    small_memory(monkeypatch, need + 2 ** 20)
    splits = load_segmentation_splits(f"msd:{root}", image_size=16)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30


def test_segmentation_volume_too_large_to_decode_names_it(tmp_path: Path, rng: np.random.Generator,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_msd(tmp_path / "Task03_Liver", rng, n=5, shape=(20, 20, 6))
    peak = 20 * 20 * 6 * DECODE_BYTES_DEEP  # 113 KiB: one volume through float64
    small_memory(monkeypatch, peak - 1)  # the slices at 8 px (2 x 30 x 12 x 64 = 45 KiB) fit
    with pytest.raises(DataError, match=r"image 'imagesTr/liver_\d\.nii\.gz' is 20 x 20 px x 1 channel\(s\) x 6 "
                                        r"frame\(s\): decoding it at full resolution .* Fix: pass a smaller "
                                        r"--max-images"):
        load_segmentation_splits(f"msd:{root}", image_size=8)


def test_demo_ct_counts_its_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpaudit.volumes import DEMO_CT_SLICES, DEMO_CT_VOLUMES

    small_memory(monkeypatch, 2 ** 30)
    n = DEMO_CT_VOLUMES * DEMO_CT_SLICES
    with pytest.raises(DataError, match=rf"\({n} slice\(s\) x 1 channel\(s\) x 2048 x 2048 px as float32 with an "
                                        r"int64 label map each"):
        load_segmentation_splits("demo-ct", image_size=2048)


# ------------------------------------------------------------------------------------------------------------
# torch's allocation failures are one line


@pytest.mark.parametrize(("exc", "line"), [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
     "error: out of memory (unable to allocate 1.00 TiB)."),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 3221225472 bytes."), "error: out of memory (unable to allocate 3.00 GiB)."),
    ("cuda", "error: out of GPU memory (unable to allocate 2.00 GiB)."),
])
def test_torch_allocation_failure_is_one_line(exc: object, line: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    import torch

    import dpaudit.data as data

    if exc == "cuda":
        exc = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                          "capacity of 79.2 GiB of which 1.0 GiB is free.")

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise exc

    monkeypatch.setattr(data, "load_splits", fail)
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    out = one_line_error(runner.invoke(app, ["attack", "--dataset", "demo", "--sigmas", "0"]))
    assert out == f"{line} Fix: pass a smaller --image-size, --max-images, --n-train, or free memory."


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dpaudit.data as data

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(data, "load_splits", fail)
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["attack", "--dataset", "demo", "--sigmas", "0"])
    assert isinstance(result.exception, RuntimeError) and "out of memory" not in result.output
