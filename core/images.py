"""Decoding ordinary image files (PNG, JPEG, TIFF, BMP, GIF, WebP) at their full bit depth.

Every loader that reads image files (folders, HAM10000, CSV manifests) goes through :func:`read_image` and
:func:`to_unit_range`, so one rule maps pixel values to [0, 1] everywhere.

The rule (documented in the README, "Data")
-------------------------------------------
* **8-bit and 1-bit images** (PIL modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``CMYK``, ``YCbCr``, ...):
  value / 255. Palette images are looked up in their palette; alpha channels are dropped (not composited);
  ``CMYK`` and ``YCbCr`` are converted to RGB by Pillow.
* **Unsigned integer images deeper than 8 bits** (16-bit PNG and TIFF, PIL modes ``I;16*``, 32-bit ``I``):
  value / (2^b - 1), where b is the number of bits of the largest value among ALL such images of the dataset (at
  least 8). A 12-bit image stored in 16 bits (0..4095) maps 4095 to 1.0 and keeps all 4096 levels; a 16-bit image
  that uses the full range maps 65535 to 1.0. One divisor per dataset keeps relative brightness between images.
* **Floating-point and signed integer images** (``F`` TIFFs, float and int16 TIFFs): kept as they are when every
  such image of the dataset lies in [0, 1]; otherwise mapped affinely by the dataset's minimum and maximum over
  those images. A non-finite value makes the file unreadable, named with the pixel (folders skip it, manifests
  stop).
* **TIFF** files are read with tifffile (Pillow reduces 16-bit colour TIFFs to 8 bits and cannot read float colour
  ones): ``MinIsWhite`` is inverted, palette TIFFs are looked up in their 16-bit colour map (/ 65535); CMYK, YCbCr
  and CIELab TIFFs are converted to RGB by Pillow.
* **16-bit colour PNGs** are refused with an error naming the file: Pillow decodes them at 8 bits only, and a
  silent loss of depth is what this module exists to prevent (save them as 16-bit TIFF instead).
* **Orientation**: the EXIF orientation (JPEG, PNG, WebP) and the TIFF Orientation tag are applied, so an image
  is seen the way a viewer shows it.
* **Channels** (:func:`dataset_channels`): a dataset is greyscale when most of its files are (every one, or a few
  colour files among greyscale ones: a colour secondary capture in a CT series), else RGB; the minority is
  converted, and the loader says how many files and which way: grey images in an RGB dataset are repeated over
  the three channels, colour images in a grey dataset become ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B, the
  weights Pillow's ``convert("L")`` uses).

Resizing to the model's square input happens as each file is read (bilinear with antialiasing: Pillow's
``resize`` widens the filter support by the reduction factor), in 8 bits for 8-bit images and in float32 for the
others, so no depth is lost; the affine maps above commute with it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpaudit.errors import DataError, library_reason, shown_path
from dpaudit.memory import DecodeSize

__all__ = ["IMAGE_EXTENSIONS", "TIFF_EXTENSIONS", "Pixels", "UnreadableImageError", "channels_note", "content_id",
           "dataset_channels", "dataset_digests",
           "probe_channels", "read_image",
           "to_unit_range"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")

#: Pillow modes holding one channel (read as greyscale).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: ITU-R 601-2 luma weights (Pillow's convert("L")).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class UnreadableImageError(DataError):
    """A file that does not decode as an image (folder loaders skip and count these; others report them)."""


#: Where a loader says which file it skipped as unreadable: the file is named there (stderr, so that the user can
#: fix it) and only counted in what dpaudit writes (``skipped``), since dataset paths may carry patient names.
SKIP_LOG = logging.getLogger("dpaudit.data.skipped")


#: Per-file warning lines said per kind and data load (:func:`per_file_lines`) before the rest are only counted: a
#: folder of thousands of unreadable files would otherwise print thousands of lines before its one error.
PER_FILE_LINES = 10


class _PerFileLines:
    """How many per-file warnings of each kind the current data load has said and held back (the loaders' decode
    threads report concurrently, hence the lock). ``depth`` 0: no load is counting, every line is said."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.said: Counter[str] = Counter()
        self.held: Counter[str] = Counter()

    def admit(self, kind: str) -> bool:
        """Whether the next warning of ``kind`` is said (else it is counted as held back)."""
        with self.lock:
            if self.depth and self.said[kind] >= PER_FILE_LINES:
                self.held[kind] += 1
                return False
            self.said[kind] += 1
            return True


_PER_FILE = _PerFileLines()


@contextmanager
def per_file_lines() -> Iterator[None]:
    """Say at most :data:`PER_FILE_LINES` per-file warnings of each kind in the block (one data load), then one line
    per kind with how many more there were, also when the load ends in an error (that line comes before the error
    is shown). The counts the dataset keeps (notes, ``skipped``) are exact: only the lines are capped. Nested
    blocks count as the outermost one."""
    with _PER_FILE.lock:
        if _PER_FILE.depth == 0:
            _PER_FILE.said.clear()
            _PER_FILE.held.clear()
        _PER_FILE.depth += 1
    try:
        yield
    finally:
        with _PER_FILE.lock:
            _PER_FILE.depth -= 1
            held = dict(_PER_FILE.held) if _PER_FILE.depth == 0 else {}
        for kind, n in sorted(held.items()):
            SKIP_LOG.warning("... and %d more %s files (counted in the dataset's notes)", n, kind)


def skipped_unreadable(exc: UnreadableImageError) -> None:
    """Name a file skipped as unreadable on stderr (the message names the file and the fix); never persisted. Within
    :func:`per_file_lines` the first :data:`PER_FILE_LINES` are named, the rest counted."""
    if _PER_FILE.admit("unreadable"):
        SKIP_LOG.warning("skipped an unreadable file: %s", exc)


#: The skip reasons of entries below a dataset folder that no loader can open, whatever their name: a symbolic link
#: whose target does not exist, and a folder that cannot be listed (no permission). Counted by every folder walk
#: (:func:`walk`), so that ``skipped`` accounts for every entry.
BROKEN_LINK = "broken link"
UNREADABLE_FOLDER = "unreadable folder"


def is_broken_link(path: Path) -> bool:
    """Whether ``path`` is a symbolic link whose target does not exist (or cannot be reached)."""
    return path.is_symlink() and not path.exists()


def broken_link_why(path: Path) -> str:
    """Why the broken link ``path`` (:func:`is_broken_link`) leads nowhere, in words for a message: its target does
    not exist, or the links form a loop (a link to itself, or links pointing at each other)."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "it is a loop of symbolic links (following them leads back to where it started)"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"its target cannot be reached ({exc.strerror})"
    return "its target does not exist"


def skipped_entry(path: str | os.PathLike[str], root: Path, reason: str, skipped: Counter[str],
                  why: str = "") -> None:
    """Count ``path`` in ``skipped`` under ``reason`` and name it on stderr (relative to ``root``; capped as
    :func:`per_file_lines` says); never persisted, as the dataset keeps counts only."""
    skipped[reason] += 1
    if _PER_FILE.admit(reason):
        SKIP_LOG.warning("skipped a %s: %s%s", reason, shown_path(path, root), f" ({why})" if why else "")


def walk(root: Path, skipped: Counter[str], shown_root: Path | None = None
         ) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` without following links to folders (no cycles), for every loader that lists a folder
    tree: a folder it cannot list is counted (:data:`UNREADABLE_FOLDER`, not passed over silently as ``os.walk``
    does), and a broken symbolic link is counted (:data:`BROKEN_LINK`) and left out of the file names. A caller
    may prune ``dirnames`` in place, as with ``os.walk``. Stderr names an entry relative to ``shown_root`` (the
    dataset's folder; default ``root``)."""
    shown = root if shown_root is None else shown_root

    def unreadable(exc: OSError) -> None:
        skipped_entry(exc.filename or root, shown, UNREADABLE_FOLDER, skipped, exc.strerror or "")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        kept = []
        for f in filenames:
            if is_broken_link(Path(dirpath) / f):
                skipped_entry(Path(dirpath) / f, shown, BROKEN_LINK, skipped, broken_link_why(Path(dirpath) / f))
            else:
                kept.append(f)
        filenames[:] = kept
        yield dirpath, dirnames, filenames


@dataclass(frozen=True, eq=False)
class Pixels:
    """One decoded, resized image before the dataset-wide mapping to [0, 1].

    ``data`` is float32 C x H x W. ``kind`` says which rule of the module docstring applies: ``"unit"`` (already in
    [0, 1]: 8-bit images / 255, palette TIFFs / 65535), ``"integer"`` (raw levels of an unsigned integer image
    deeper than 8 bits) or ``"float"`` (raw float or signed values). ``low`` and ``high`` are the extreme values of
    the image as stored (before resizing), which fix the dataset-wide divisor. ``digest`` identifies the
    decoded content (:func:`content_id` of the training input at full resolution, :func:`_decoded_id`; for an
    unsigned integer image deeper than 8 bits one per possible dataset divisor, resolved by :func:`dataset_digests`;
    for DICOM, of each frame's modality values), so that identical images are never split apart however their files were re-encoded; ``""``
    (unknown, counted as distinct) for a constant image.
    """

    data: np.ndarray
    kind: str
    low: float
    high: float
    digest: str = ""


def _bad(path: Path, exc: BaseException | str) -> UnreadableImageError:
    why = exc if isinstance(exc, str) else library_reason(exc, path)
    return UnreadableImageError(f"image {str(path)!r} does not decode ({why}). Fix: replace or remove the file.")


#: Values hashed at a time by :func:`content_id` (a block of rows): 1 Mi float64 values, 8 MiB.
HASH_BLOCK_VALUES = 1 << 20


def content_id(pixels: np.ndarray, tag: str = "", *, divisor: float | None = None) -> str:
    """What identifies a decoded image (:attr:`Pixels.digest`): a hash of its values, shape and type (and ``tag``,
    the kind of values), so that a copy is found whatever was done to its file (re-saved at another compression
    level, another PatientID in its name or metadata, another container); never a hash of the file's bytes, which
    change with any of those. ``""`` (unknown: counted as distinct) for an empty or constant image: a blank image
    of one patient must not link it to another's.

    >>> a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    >>> content_id(a) == content_id(a.copy()), content_id(a) == content_id(a.T), content_id(a) == content_id(a + 1)
    (True, False, False)
    >>> content_id(np.zeros((4, 4)))
    ''
    """
    if not pixels.size or pixels.min() == pixels.max():
        return ""
    # With a divisor, the values hashed are pixels / divisor in float64 (an integer image's [0, 1] values): the
    # division is strictly increasing for integers, so the image is constant exactly when its quotients are.
    as_float = pixels.dtype.kind == "f" or divisor is not None
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tag, pixels.shape, np.dtype(np.float64 if as_float else np.int64).str)).encode())
    # One type per kind of value (a copy re-saved at another depth or container holds the same numbers), and -0.0
    # and 0.0 one value. Hashed a block of rows at a time: the same bytes in the same order as one copy of the whole
    # image (a 12000 x 12000 RGB image is 3.2 GiB as float64), for at most HASH_BLOCK_VALUES values of memory.
    rows = pixels.reshape(pixels.shape[0], -1) if pixels.ndim > 1 else pixels.reshape(-1, 1)
    step = max(1, HASH_BLOCK_VALUES // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        if divisor is not None:
            block = np.divide(block, divisor, dtype=np.float64) + 0.0
        elif as_float:
            block = block.astype(np.float64) + 0.0
        else:
            block = block.astype(np.int64)
        h.update(np.ascontiguousarray(block))
    return h.hexdigest()


def _png_is_16bit_colour(head: bytes) -> bool:
    # PNG signature (8 bytes), IHDR length and type (8), width and height (8), bit depth, colour type.
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def dataset_channels(colour: int, total: int) -> tuple[int, list[str]]:
    """The channels of a dataset of ``total`` files of which ``colour`` are colour, and the note on the files
    converted: 1 when most are greyscale (a few colour files become ITU-R 601-2 luma), 3 when at least half are
    colour (greyscale files repeated over 3 channels). One colour file among greyscale ones no longer makes every
    image, and the model, 3-channel. Counts only.

    >>> dataset_channels(1, 130)
    (1, ['1 of 130 files are colour: converted to greyscale (ITU-R 601-2 luma) like the other 129, so the model takes 1 channel; remove the colour files to train on greyscale files only'])
    >>> dataset_channels(0, 5), dataset_channels(5, 5)
    ((1, []), (3, []))
    """
    channels = 1 if 2 * colour < total or colour == 0 else 3
    return channels, channels_note(channels, colour, total)


def channels_note(channels: int, colour: int, total: int) -> list[str]:
    """The note on the files converted to ``channels``, counting the files that decoded (``colour`` of ``total``):
    a colour file skipped as unreadable was not converted, and is neither counted nor said.

    >>> channels_note(1, 0, 26), channels_note(3, 0, 4)
    ([], ['4 of 4 files are greyscale: repeated over 3 channels (the colour files that made the dataset 3-channel did not decode), so the model takes 3 channels'])
    """
    grey = total - colour
    if channels == 1:
        return [] if not colour else [
            f"{colour} of {total} files are colour: converted to greyscale (ITU-R 601-2 luma) like the other {grey}, "
            "so the model takes 1 channel; remove the colour files to train on greyscale files only"]
    if not grey:
        return []
    match = f"to match the {colour} colour files" if colour else (
        "(the colour files that made the dataset 3-channel did not decode)")
    return [f"{grey} of {total} files are greyscale: repeated over 3 channels {match}, so the model takes 3 channels"]


#: Held while Pillow opens a file with its decompression-bomb limit lifted (:func:`_open_pil`).
_PIL_OPEN = threading.Lock()


@contextmanager
def _open_pil(fp: object) -> Iterator[object]:
    """``PIL.Image.open(fp)`` without Pillow's decompression-bomb limit (neither its ``DecompressionBombWarning``,
    printed raw, nor its error): dpaudit's own rule replaces it, the file's estimated decode memory from its header
    (:func:`probe_size`, :func:`dpaudit.memory.decode_workers`), refused as one line naming the file before it is
    decoded. Opening reads the header only; the lock serialises dpaudit's own opens. Pillow's limit is one global, so
    another thread of the same process opening a file at that instant would see it lifted too."""
    import warnings

    from PIL import Image

    with _PIL_OPEN, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with im:
        yield im


def probe_size(path: Path, image_size: int, channels: int) -> DecodeSize | None:
    """The pixel dimensions :func:`read_image` decodes ``path`` at, from its header (nothing decoded): a JPEG's
    at the reduced scale its draft decodes at; None when the header does not read (the decode reports it)."""
    if path.suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                # Decoded through float32 copies at any depth (read_image): 12 B a value measured for 8-bit RGB.
                return DecodeSize(int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel), deep=True)
        except Exception:  # tifffile raises many types on a damaged file; the decode names it
            return None
    from PIL import UnidentifiedImageError

    try:
        with _open_pil(path) as im:
            if im.format == "JPEG":
                im.draft("L" if channels == 1 else "RGB", (2 * image_size, 2 * image_size))
            width, height = im.size
            deep = im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
            return DecodeSize(height, width, len(im.getbands()), deep=deep)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def probe_channels(path: Path) -> int:
    """1 for a greyscale image file, 3 for colour, reading the header only; :class:`DataError` if unreadable."""
    if path.suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                return 3 if page.photometric in (2, 3, 5, 6, 8) or page.samplesperpixel >= 3 else 1
        except Exception as exc:  # tifffile raises many types on a damaged file; all mean "not readable"
            raise _bad(path, exc) from None
    from PIL import UnidentifiedImageError

    try:
        with _open_pil(path) as im:
            return 1 if im.mode in _GREY_MODES else 3
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _bad(path, exc) from None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply a TIFF/EXIF orientation (1..8) to an H x W x C array (as Pillow's ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _tiff_photometric(raw: bytes) -> int | None:
    """The first page's Photometric Interpretation (None if the header does not read)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(raw)) as tf:
            return int(tf.pages[0].photometric)
    except Exception:  # any failure: the full decode reports it
        return None


#: Storage depths an unsigned integer image can be divided by (:func:`to_unit_range`: 2^b - 1, b from 8 to 32).
_MAX_BITS = 32


def _decoded_id(arr: np.ndarray, kind: str) -> str:
    """:func:`content_id` of the training input a decoded H x W x C image gives at full resolution (oriented, alpha
    dropped, palettes looked up), so that two files are linked exactly when the loader maps them to the same values
    in [0, 1]: a grey image stored as RGB (equal channels) is its one channel, so a copy saved the other way links
    too.

    The values are divided in float64 by what the loader divides them by: 255 for 8-bit images (``kind`` ``"unit"``),
    65535 for palette TIFFs' colour maps (``"palette"``). IEEE division is correctly rounded, so two quotients have
    the same bits exactly when they are the same rational number (the loader's float32 quotients then agree too):
    an 8-bit value v and its 16-bit conversion 257 v / 65535 are one value, v / 255 and the same integer v stored in
    16 bits and divided by 65535 are not. Floating-point images are hashed as they are.

    Unsigned integer images deeper than 8 bits (``"integer"``) are divided by the DATASET's divisor 2^b - 1 (b the
    bits of the largest value among all such images, :func:`to_unit_range`), not by their own storage depth, so
    their identity is known only once the dataset is: the digest lists one identity per b the dataset can have
    (``"b=hex"`` joined by ``|``, b from the bits of this image's largest value to 32), and :func:`dataset_digests`
    keeps the one of the dataset's b. A 16-bit PNG holding the 8-bit values v is then linked to the 8-bit file
    holding v in a dataset whose 16-bit images all stay below 256 (b = 8: both give v / 255), and not in one where
    another image uses 16 bits (b = 16: v / 65535); the 16-bit file holding 257 v is linked to it when b = 16.
    """
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        arr = arr[..., :1]
    if kind == "float":
        return content_id(arr, "image")
    if kind != "integer":
        return content_id(arr, "image", divisor=65535.0 if kind == "palette" else 255.0)
    if not arr.size or arr.min() == arr.max():
        return ""
    ints = np.ascontiguousarray(arr, dtype=np.int64)
    raw = content_id(ints, "integer")
    ids = []
    depths = range(max(8, int(arr.max()).bit_length()), _MAX_BITS + 1)
    for b in depths:
        divisor = 2 ** b - 1
        # Only where every v / (2^b - 1) is some c / 65535 (hence also when it is some c / 255: 255 divides 65535)
        # can an 8-bit or palette file give the same input; otherwise only another integer image of the same dataset
        # can, which has the same divisor: its raw integers identify it (and save hashing a float copy per b).
        # v < 2^32, so 65535 v fits in int64. The first pixels rule most depths out before the whole image is read.
        exact = not (ints.ravel()[:64] * 65535 % divisor).any() and not (ints * 65535 % divisor).any()
        ids.append(content_id(ints, "image", divisor=float(divisor)) if exact else
                   hashlib.blake2b(f"{raw}/{b}".encode(), digest_size=16).hexdigest())
    return "|".join(f"{b}={h}" for b, h in zip(depths, ids, strict=True))


def dataset_digests(items: list[Pixels]) -> list[str]:
    """Each image's :attr:`Pixels.digest` in this dataset: an unsigned integer image deeper than 8 bits keeps the
    identity of the dataset's divisor 2^b - 1 (:func:`_decoded_id`, :func:`to_unit_range`); others are unchanged.

    >>> a = np.array([0, 1, 2, 255], dtype=np.uint16).reshape(2, 2, 1)
    >>> p = lambda arr, kind: Pixels(np.zeros((1, 1, 1), np.float32), kind, 0.0, float(arr.max()), _decoded_id(arr, kind))
    >>> v8, v16, v257 = p(a.astype(np.uint8), "unit"), p(a, "integer"), p(a * 257, "integer")
    >>> d = dataset_digests([v8, v16]); d[0] == d[1]   # b = 8: both give v / 255
    True
    >>> d = dataset_digests([v8, v16, v257]); d[0] == d[1], d[0] == d[2]   # b = 16: v / 65535 and 257 v / 65535
    (False, True)
    """
    ints = [p.high for p in items if p.kind == "integer"]
    bits = str(max(8, int(max(ints)).bit_length())) if ints else ""
    out = []
    for p in items:
        if p.kind == "integer" and "=" in p.digest:
            p_bits = dict(part.split("=", 1) for part in p.digest.split("|"))
            out.append(p_bits[bits])
        else:
            out.append(p.digest)
    return out


def _read_tiff(path: Path, raw: bytes) -> tuple[np.ndarray, str]:
    """H x W x C array as stored (full depth) and its kind; colour maps applied, MinIsWhite inverted."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(raw)) as tf:
            page = tf.pages[0]
            arr = page.asarray()
            axes = page.axes
            photometric = int(page.photometric)
            tag = page.tags.get(274)  # Orientation
            orientation = int(tag.value) if tag is not None else 1
            colormap = page.colormap
            bits = int(page.bitspersample)
    except Exception as exc:  # a damaged TIFF raises anything from ValueError to struct.error
        raise _bad(path, exc) from None
    if "S" in axes and axes.index("S") < axes.index("Y"):
        arr = np.moveaxis(arr, axes.index("S"), -1)  # planar (separate) samples
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4):
        arr = arr[0]  # a multi-page stack: its first page
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise _bad(path, f"unsupported TIFF layout {axes} {arr.shape}")
    if arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # extra (alpha) sample
    kind = "unit" if arr.dtype in (np.uint8, np.bool_) else "integer" if arr.dtype.kind == "u" else "float"
    if photometric == 3 and colormap is not None:  # palette: look indices up in the 16-bit colour map
        arr = np.moveaxis(np.asarray(colormap)[:, arr[..., 0]], 0, -1)  # 16-bit levels, / 65535 in read_image
        kind = "palette"
    elif photometric == 0:  # MinIsWhite: 0 is white
        if arr.dtype == np.bool_:
            arr = ~arr
        elif arr.dtype.kind == "u":
            arr = (2 ** min(bits, arr.dtype.itemsize * 8) - 1) - arr
        else:
            arr = -arr.astype(np.float64)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    return np.ascontiguousarray(_orient(arr, orientation)), kind


def _read_pil(path: Path, raw: bytes, image_size: int, channels: int) -> tuple[np.ndarray, str, str]:
    """H x W x C array, kind and :func:`_decoded_id`, via Pillow (EXIF orientation applied); 8-bit images come
    back already resized, their identity taken from the decoded pixels before resizing (a JPEG's at the scale its
    draft decoded, below)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if _png_is_16bit_colour(raw[:26]):
        raise DataError(f"image {str(path)!r} is a 16-bit colour PNG, which Pillow decodes at 8 bits only (the "
                        "extra depth would be lost without a word). Fix: save it as a 16-bit TIFF (read at full "
                        "depth) or as a 16-bit greyscale PNG.")
    try:
        with _open_pil(io.BytesIO(raw)) as im:
            if im.format == "JPEG":
                # Let libjpeg decode at a reduced scale (>= 2x the target): much faster, same result after the
                # antialiased resize below. The identity is then that of the draft-decoded pixels, a deterministic
                # function of the file's DCT coefficients: a copy with other metadata or another name (or
                # recompressed losslessly, jpegtran) is linked; a JPEG re-encoded at another quality has other
                # pixels at any scale, and a JPEG converted to PNG is not linked to its source (the full-size decode
                # would cost HAM10000 its draft speed-up).
                im.draft("L" if channels == 1 else "RGB", (2 * image_size, 2 * image_size))
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im)
                kind = "integer" if arr.dtype.kind == "u" or (mode == "I" and arr.min() >= 0) else "float"
                return arr[..., None], kind, _decoded_id(arr, kind)
            # Alpha dropped, palettes looked up: the pixels the model is given, at full resolution.
            decoded = "L" if mode in _GREY_MODES else "RGB"
            im = im if mode == decoded else im.convert(decoded)
            digest = _decoded_id(np.asarray(im), "unit")
            if im.mode != ("L" if channels == 1 else "RGB"):
                im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (image_size, image_size):
                # Non-square images (HAM10000: 600 x 450) are resized to a square, as MedMNIST did.
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _bad(path, exc) from None
    return (arr[..., None] if arr.ndim == 2 else arr), "resized8", digest


def resize_float(arr: np.ndarray, image_size: int) -> np.ndarray:
    """float32 H x W x C to C x image_size x image_size, bilinear with antialiasing (Pillow, per channel)."""
    from PIL import Image

    planes = []
    for c in range(arr.shape[-1]):
        plane = np.ascontiguousarray(arr[..., c], dtype=np.float32)
        if plane.shape != (image_size, image_size):
            plane = np.asarray(Image.fromarray(plane, mode="F").resize(
                (image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32)
        planes.append(plane)
    return np.stack(planes)


def match_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """H x W x C float array with C = 1 or 3 to ``channels`` (repeat grey; ITU-R 601-2 luma for colour)."""
    if arr.shape[-1] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    return (arr[..., :3].astype(np.float32) @ _LUMA)[..., None]


def read_image(path: Path, image_size: int, channels: int) -> Pixels:
    """Decode one image file at full depth, oriented, with ``channels`` channels, resized to a square.

    The file is read once and decoded from memory; ``Pixels.digest`` identifies the decoded pixels at full
    resolution (:func:`content_id`), not the file's bytes.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _bad(path, exc.strerror or type(exc).__name__) from None
    # TIFF through tifffile (full depth) for grey, RGB and palette; CMYK (separated), YCbCr and CIELab TIFFs are
    # converted to RGB by Pillow (8 bits: the depth those photometric interpretations are written in).
    if path.suffix.lower() in TIFF_EXTENSIONS and _tiff_photometric(raw) in (0, 1, 2, 3, None):
        arr, kind = _read_tiff(path, raw)
        digest = _decoded_id(arr, kind)
    else:
        arr, kind, digest = _read_pil(path, raw, image_size, channels)
    if kind == "resized8":
        return Pixels(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0),
                      "unit", 0.0, 1.0, digest)
    if kind in ("unit", "palette"):
        arr = arr.astype(np.float32) / np.float32(255.0 if kind == "unit" else 65535.0)
    arr = arr.astype(np.float32) if kind != "float" else arr.astype(np.float64)
    if kind == "float" and not np.isfinite(arr).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(arr))[0][:2])
        raise UnreadableImageError(f"image {str(path)!r} holds a non-finite pixel value ({float(arr[r, c, 0])} at row {r}, column "
                        f"{c}). Fix: replace the non-finite values, or remove the file.")
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    data = resize_float(match_channels(arr.astype(np.float32), channels), image_size)
    return Pixels(data, "unit" if kind == "palette" else kind, low, high, digest)


def to_unit_range(items: list[Pixels]) -> np.ndarray:
    """Stack decoded images to float32 N x C x H x W in [0, 1] by the dataset-wide rule of the module docstring."""
    ints = [p for p in items if p.kind == "integer"]
    floats = [p for p in items if p.kind == "float"]
    divisor = 1.0
    if ints:
        bits = max(8, int(max(p.high for p in ints)).bit_length())
        divisor = float(2 ** bits - 1)
    lo, span = 0.0, 1.0
    if floats:
        f_lo, f_hi = min(p.low for p in floats), max(p.high for p in floats)
        if f_lo < 0.0 or f_hi > 1.0:
            lo, span = f_lo, (f_hi - f_lo) or 1.0
    if not items:
        return np.zeros((0, 1, 1, 1), dtype=np.float32)
    out = np.empty((len(items), *items[0].data.shape), dtype=np.float32)
    for i, p in enumerate(items):
        if p.kind == "integer":
            out[i] = p.data / np.float32(divisor)
        elif p.kind == "float":
            out[i] = (p.data - np.float32(lo)) / np.float32(span)
        else:
            out[i] = p.data
    return np.clip(out, 0.0, 1.0, out=out)
