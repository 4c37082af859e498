"""Every loader that lists a folder tree (folder:, dicom:, nifti:) counts a broken symbolic link and a folder it
cannot list in ``skipped`` (named on stderr only), whatever the entry's name; a manifest row naming a broken link is
refused, naming the row."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from PIL import Image

from dpaudit.data import load_splits
from dpaudit.errors import DataError
from dpaudit.images import walk

SIZE = 16


def broken_links(folder: Path) -> None:
    """Three broken links: one named as the loader's files, one as another file, one as a folder."""
    for name in ("gone.png", "gone.dcm", "gone.nii.gz", "gone.txt", "gone_folder"):
        os.symlink(folder / "nowhere" / name, folder / name)


def png_folder(root: Path, rng: np.random.Generator) -> None:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_folder_counts_broken_links_at_every_depth(tmp_path: Path, rng: np.random.Generator) -> None:
    png_folder(tmp_path, rng)
    broken_links(tmp_path / "a")  # below a class folder
    os.symlink(tmp_path / "nowhere", tmp_path / "top_gone")  # at the top level
    s = load_splits(f"folder:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"broken link": 6}
    assert len(s.train) + len(s.val) + len(s.test) == 8


def test_dicom_counts_broken_links(tmp_path: Path, rng: np.random.Generator) -> None:
    for p in range(6):  # class folders "yes" and "no", 3 patients each
        dicom_file(tmp_path / ("yes" if p % 2 else "no") / f"IM{p}.dcm", rng.integers(0, 4096, (SIZE, SIZE)),
                   patient=f"PAT-{p}")
    broken_links(tmp_path / "no")
    s = load_splits(f"dicom:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"broken link": 5}


def test_nifti_counts_broken_links(tmp_path: Path, rng: np.random.Generator) -> None:
    for v in range(6):
        nifti_file(tmp_path / f"vol{v}.nii.gz", rng.random((SIZE, SIZE, 2)).astype(np.float32))
    (tmp_path / "sub").mkdir()
    broken_links(tmp_path / "sub")
    s = load_splits(f"nifti:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"broken link": 5}  # on main these were not counted at all


def test_manifest_row_naming_a_broken_link_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "5.png")
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(6)))
    with pytest.raises(DataError, match=r"data row 6 names '5.png', a symbolic link that leads nowhere: its target "
                                        r"does not exist\. Fix: restore"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)


def test_link_loops_are_named_as_loops(tmp_path: Path, rng: np.random.Generator,
                                       library_log: pytest.LogCaptureFixture) -> None:
    """A link to itself and two links pointing at each other are broken links too, named as a loop (not as a
    missing target): in a folder walk's skip line and in a manifest row's error."""
    png_folder(tmp_path, rng)
    os.symlink(tmp_path / "a" / "self.png", tmp_path / "a" / "self.png")
    os.symlink(tmp_path / "b" / "two.png", tmp_path / "b" / "one.png")
    os.symlink(tmp_path / "b" / "one.png", tmp_path / "b" / "two.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "a" / "gone.png")
    s = load_splits(f"folder:{tmp_path}", image_size=SIZE)
    assert s.skipped == {"broken link": 4}
    said = "\n".join(r.getMessage() for r in library_log.records)
    assert said.count("a loop of symbolic links") == 3 and said.count("its target does not exist") == 1
    (tmp_path / "m.csv").write_text("path,label\na/0.png,0\na/self.png,1\n")
    with pytest.raises(DataError, match=r"data row 2 names 'a/self.png', a symbolic link that leads nowhere: it is a "
                                        r"loop of symbolic links"):
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=SIZE)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root lists every folder whatever its permissions; POSIX permissions only")
def test_unreadable_folder_is_counted(tmp_path: Path, rng: np.random.Generator) -> None:
    png_folder(tmp_path, rng)
    locked = tmp_path / "a" / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        s = load_splits(f"folder:{tmp_path}", image_size=SIZE)
    finally:
        locked.chmod(0o755)
    assert s.skipped == {"unreadable folder": 1}


def test_walk_counts_a_folder_it_cannot_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.png").write_bytes(b"")
    real_scandir = os.scandir

    def refuse(path):  # type: ignore[no-untyped-def]
        if Path(path) == tmp_path / "x":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    skipped: Counter[str] = Counter()
    files = [f for _, _, names in walk(tmp_path, skipped) for f in names]
    assert files == [] and skipped == {"unreadable folder": 1}
