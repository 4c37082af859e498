"""Weights files are untrusted input: every odd file is named for what it is, safetensors files
load without code execution, and state dicts saved through any nesting of wrappers load."""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path

import pytest
import torch

from dpaudit.checkpoint import (
    PlainWeightsError,
    load_checkpoint,
    load_state_dict,
    sniff_weights_file,
    strip_wrappers,
)
from dpaudit.errors import CheckpointError
from dpaudit.models import build_model


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("smallcnn", num_classes=3, in_channels=1, width=4)


@pytest.mark.parametrize(("content", "kind", "words"), [
    (b"", "empty", "an empty file"),
    (b"epoch,loss\n1,0.5\n", "text", "a text file"),
    (b"\xef\xbb\xbf<!DOCTYPE html><html><body>Sign in</body></html>", "html", "an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "git-lfs", "git lfs pull"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}", "numpy", "a NumPy"),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "hdf5", "an HDF5 file"),
    (bytes(range(256)) * 4, "unknown", "not a PyTorch"),
])
def test_non_weights_files_are_named(tmp_path: Path, content: bytes, kind: str, words: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    assert sniff_weights_file(path) == kind
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(path, arch="smallcnn")
    message = str(info.value)
    assert "Fix:" in message and "code execution" not in message and "unpickle" not in message
    assert "\n" not in message


def test_truncated_archive_is_named(tmp_path: Path) -> None:
    full = tmp_path / "full.pt"
    torch.save(_model().state_dict(), full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])  # a download cut half way: no central directory
    assert sniff_weights_file(full) == "torch-zip"
    assert sniff_weights_file(cut) == "truncated-zip"
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(cut, arch="smallcnn")


def test_zip_that_is_not_torch(tmp_path: Path) -> None:
    path = tmp_path / "images.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", b"123")
    with pytest.raises(CheckpointError, match="zip archive that is not a PyTorch checkpoint"):
        load_checkpoint(path, arch="smallcnn")


def test_safetensors_file_loads_without_code(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _model()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert sniff_weights_file(path) == "safetensors"
    with pytest.raises(PlainWeightsError, match="--arch"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, arch="smallcnn", arch_args={"width": 4})
    assert ckpt.source == "safetensors" and ckpt.num_classes == 3 and ckpt.in_channels == 1
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(ckpt.build_model()(x), model.eval()(x))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="safetensors file but cannot be read"):
        load_checkpoint(damaged, arch="smallcnn", arch_args={"width": 4})


@pytest.mark.parametrize("prefix", ["module.", "_module.", "_orig_mod.", "module._module.", "_module._orig_mod.",
                                    "module._orig_mod.", "_orig_mod.module._module."])
def test_wrapper_prefixes_nested(tmp_path: Path, prefix: str) -> None:
    model = _model()
    torch.save(collections.OrderedDict((prefix + k, v) for k, v in model.state_dict().items()),
               tmp_path / "sd.pt")
    ckpt = load_checkpoint(tmp_path / "sd.pt", arch="smallcnn", arch_args={"width": 4})
    assert ckpt.num_classes == 3 and ckpt.in_channels == 1  # read off the weights, not asked for
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(ckpt.build_model()(x), model.eval()(x))
    source, state = load_state_dict(tmp_path / "sd.pt")
    assert source == "state_dict" and set(state) == set(model.state_dict())


def test_real_wrappers_round_trip(tmp_path: Path) -> None:
    """State dicts written by the wrappers themselves (not hand-made prefixes) load."""
    from opacus.grad_sample import GradSampleModule

    model = _model()
    wrapped = GradSampleModule(torch.nn.DataParallel(model))
    torch.save(wrapped.state_dict(), tmp_path / "w.pt")
    assert next(iter(wrapped.state_dict())).startswith("_module.module.")
    assert set(strip_wrappers(torch.load(tmp_path / "w.pt", weights_only=True))) == set(model.state_dict())
    ckpt = load_checkpoint(tmp_path / "w.pt", arch="smallcnn", arch_args={"width": 4})
    assert ckpt.num_classes == 3


def test_whole_model_pickle_is_refused_without_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_model(), path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as info:
        load_checkpoint(path, arch="smallcnn")
    assert "trusted code" not in str(info.value) and "state_dict()" in str(info.value)
