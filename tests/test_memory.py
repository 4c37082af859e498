"""Sizes that cannot fit in memory are refused before anything is allocated, as one line naming --image-size, the
estimate and the memory available; a MemoryError that still happens in a command is one line, never a traceback."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import dpaudit.memory as memory
from dpaudit.cli.main import app
from dpaudit.data import load_splits, make_demo
from dpaudit.errors import ConfigError, DataError
from dpaudit.memory import MAX_IMAGE_SIZE, available_bytes, check_image_size, images_bytes
from dpaudit.volumes import load_segmentation_splits
from tests.test_data import make_folder, make_medmnist

runner = CliRunner()


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


@pytest.mark.parametrize("argv", [
    ["attack", "--dataset", "demo", "--sigmas", "0", "--image-size", "100000"],
    ["train", "--dataset", "demo", "--epsilon", "8", "--epochs", "1", "--image-size", "100000"],
    ["train", "--dataset", "demo-ct", "--epsilon", "8", "--epochs", "1", "--image-size", "100000"],
])
def test_image_size_above_the_cap_is_one_line_naming_the_flag(argv: list[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    out = one_line_error(runner.invoke(app, [*argv, "--out", str(tmp_path / "o")] if argv[0] == "train" else argv))
    assert f"--image-size must be an integer from 8 to {MAX_IMAGE_SIZE}" in out and "got 100000" in out
    assert "Fix: pass --image-size" in out


def test_the_cap_holds_in_every_loader() -> None:
    for call in (lambda: load_splits("demo", image_size=MAX_IMAGE_SIZE + 1),
                 lambda: make_demo(10, image_size=MAX_IMAGE_SIZE + 1),
                 lambda: load_segmentation_splits("demo-ct", image_size=MAX_IMAGE_SIZE + 1)):
        with pytest.raises(ConfigError, match="an integer from 8 to 2048"):
            call()
    assert check_image_size(MAX_IMAGE_SIZE, "x") == MAX_IMAGE_SIZE


def test_the_estimate_is_the_float32_images_held_twice() -> None:
    # 2000 RGB images of 100000 x 100000 px in float32 are 218 TiB (numpy's own figure in the MemoryError it gave).
    assert images_bytes(2000, 3, 100000) == 2 * 2000 * 3 * 100000 ** 2 * 4
    assert round(images_bytes(2000, 3, 100000) / 2 / 2 ** 40) == 218


def small_memory(monkeypatch: pytest.MonkeyPatch, n_bytes: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: n_bytes)


def test_demo_that_does_not_fit_is_refused_before_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    small_memory(monkeypatch, 2 ** 20)  # 1 MiB
    with pytest.raises(DataError) as info:
        load_splits("demo", image_size=64, max_images=500)
    text = str(info.value)
    assert info.value.field == "image_size" and info.value.value == 64
    # 2 x 500 x 3 x 64 x 64 x 4 bytes = 46.9 MiB
    assert "an estimated 46.9 MiB at least; 1.00 MiB available" in text
    # Suggestions fit in half of it (512 KiB): 500 images do not at 8 px (750 KiB), so no size is suggested;
    # 512 KiB // (2 x 3 x 64 x 64 x 4 bytes) = 5 images at 64 px.
    assert "Fix: free memory, or pass --max-images 5 or fewer" in text
    small_memory(monkeypatch, 4 * 2 ** 20)  # half of 4 MiB holds 500 images at sqrt(2 MiB / 12000 B) = 13.2 px
    with pytest.raises(DataError, match=r"pass a smaller --image-size \(at most about 8\)"):
        load_splits("demo", image_size=64, max_images=500)
    assert "sized to fit in 50% of the memory available: the estimate is a lower bound" in text


def test_each_loader_checks_before_decoding(tmp_path: Path, rng: np.random.Generator,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "f", rng, {"a": 4, "b": 4})
    (tmp_path / "m").mkdir()
    make_medmnist(tmp_path / "m" / "dermamnist.npz", rng, colour=True)
    (tmp_path / "csv").mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "csv" / f"{i}.png")
    (tmp_path / "csv" / "m.csv").write_text("path,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(6)))
    small_memory(monkeypatch, 10_000)
    decoded = []
    import dpaudit.images as images

    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda *a, **k: decoded.append(a) or real(*a, **k))
    for name, kw in ((f"folder:{tmp_path / 'f'}", {}), ("dermamnist", {"data_dir": tmp_path / "m"}),
                     (f"csv:{tmp_path / 'csv' / 'm.csv'}", {})):
        with pytest.raises(DataError, match=r"fit in memory .* available\)"):
            load_splits(name, image_size=64, **kw)
    with pytest.raises(DataError, match="fit in memory"):
        load_segmentation_splits("demo-ct", image_size=512)
    assert not decoded


def test_available_memory_without_psutil_reads_proc_meminfo(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    got = available_bytes()
    if Path("/proc/meminfo").exists():
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemAvailable:"))
        assert got is not None and abs(got - kib * 1024) < 2 ** 30  # read moments apart: within 1 GiB
    else:
        assert got is None or got > 0


def test_memory_error_in_a_command_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dpaudit.data as data

    def out_of_memory(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise MemoryError("Unable to allocate 3.00 GiB for an array with shape (100, 3, 2048, 2048) and data "
                          "type float32")

    monkeypatch.setattr(data, "load_splits", out_of_memory)
    monkeypatch.setenv("DPAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    out = one_line_error(runner.invoke(app, ["attack", "--dataset", "demo", "--sigmas", "0"]))
    assert out == ("error: out of memory (unable to allocate 3.00 GiB). Fix: pass a smaller --image-size, "
                   "--max-images, --n-train, or free memory.")
