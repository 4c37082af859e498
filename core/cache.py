"""A disk cache of decoded, resized images, so that a second run over a DICOM or NIfTI tree decodes nothing.

Each entry holds the images one file decodes to (every frame of a DICOM file, every slice of a NIfTI volume),
already resized, under a key made of the file's identity (:func:`file_identity`: absolute path, device, inode, size,
modification and status-change times), the decoder and every option that changes the result (image size, channels,
window, slice axis) and :data:`CACHE_VERSION`. Editing or replacing a file changes its key, even within one
timestamp tick and with its size and modification time kept or restored (``os.utime``, ``cp -p``, ``rsync -t``):
nothing is ever served stale.

Where: ``$DPAUDIT_CACHE_DIR`` if set (``off`` disables the cache), else ``~/.cache/dpaudit/decoded``. The
folder is created private to the user (mode 0700): **it holds decoded patient images** (small, resized, but
patient data all the same). Delete it at any time; ``DPAUDIT_CACHE_DIR=off`` keeps nothing on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dpaudit.images import Pixels

__all__ = ["CACHE_VERSION", "cache_dir", "cached", "file_identity"]

#: Bumped whenever a decoder's output changes, so that entries written by an older dpaudit are not reused.
CACHE_VERSION = 6


def cache_dir() -> Path | None:
    """The cache folder, or None when the cache is off (``DPAUDIT_CACHE_DIR=off``)."""
    env = os.environ.get("DPAUDIT_CACHE_DIR")
    if env is not None and env.strip().lower() in ("", "off", "0", "none", "false"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpaudit" / "decoded"


def file_identity(path: Path) -> str:
    """What changes whenever the file's contents may have: its absolute path, device and inode (a file replaced by
    a rename, as editors and ``cp`` to a new file do, has another inode), size, modification time and status-change
    time (ctime).

    Size and mtime alone miss a file rewritten in place with the same size within one timestamp tick (coarse on
    some file systems: 2 s on FAT, 1 s on ext3 and many network mounts), or whose mtime was set back (``os.utime``,
    ``touch -d``, ``cp -p``, ``rsync -t``, an archive extracted). The kernel sets ctime to the current time on every
    write and every utime call, and no system call sets it to a chosen value (POSIX.1-2017, ``<sys/stat.h>``
    "st_ctim"; ``utimensat``). Costs the one ``stat`` the key took before.
    """
    st = path.stat()
    return f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _key(path: Path, decoder: str, options: str) -> str:
    text = f"{CACHE_VERSION}|{file_identity(path)}|{decoder}|{options}"
    return hashlib.sha256(text.encode()).hexdigest()


def cached(path: Path, decoder: str, options: str, decode: Callable[[], list[Pixels]]) -> list[Pixels]:
    """``decode()``'s result for ``path``, from the cache when an entry with the same key exists.

    A damaged or unreadable entry is decoded again (and replaced); a cache that cannot be written is skipped
    silently: the cache only ever saves time, never changes a result.
    """
    root = cache_dir()
    if root is None:
        return decode()
    entry = root / (key := _key(path, decoder, options))[:2] / f"{key}.npz"
    try:
        with np.load(entry, allow_pickle=False) as z:
            return [Pixels(d, str(k), float(lo), float(hi), str(g))
                    for d, k, lo, hi, g in zip(z["data"], z["kind"], z["low"], z["high"], z["digest"], strict=True)]
    except (OSError, ValueError, KeyError):
        pass
    items = decode()
    if not items:
        return items
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mode applies only when created here
        entry.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, data=np.stack([p.data for p in items]), kind=np.array([p.kind for p in items]),
                     low=np.array([p.low for p in items]), high=np.array([p.high for p in items]),
                     digest=np.array([p.digest for p in items]))
        os.replace(tmp, entry)
    except OSError:
        pass
    return items
