"""Memory a command needs, estimated from the sizes the user gave, checked before anything large is allocated.

A loader knows, before it decodes or draws a pixel, how many images it will hold, with how many channels, at which
size; :func:`check_images_fit` turns that into bytes and refuses, as one line naming ``--image-size``, the estimate
and the memory available, a dataset that cannot fit, instead of a ``MemoryError`` (or the kernel's OOM killer)
half-way through. The estimate is a lower bound of the peak (the images as float32, twice: the stacked dataset and
its train/validation/test copies), so a refusal is certain; a run that passes may still need more (the model, the
attack), which the command line reports as one line when it happens (``MemoryError`` in
:func:`dpaudit.cli._common.handle_errors`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from dpaudit.errors import ConfigError, DataError, check_int, invalid

#: The largest ``--image-size``: 2048 px holds a full-field mammogram's usual downsampled size and every
#: radiograph, CT or MR slice at full resolution (512 x 512 for CT); the built-in models and the imprint attack
#: were sized for 28 to 224 px, and one 2048 px RGB image is already 48 MiB as float32 (the attack keeps one
#: imprint row of that size per bin).
MAX_IMAGE_SIZE = 2048

#: Bytes of one pixel value as the datasets hold it (float32).
FLOAT32_BYTES = 4

#: The float32 copies of every image a loader holds at its peak: the stacked dataset and its split copies.
DATASET_COPIES = 2


def check_image_size(image_size: int, fix: str, *, cls: type[ConfigError] | type[DataError] = ConfigError) -> int:
    """``image_size`` checked: an integer from 8 to :data:`MAX_IMAGE_SIZE`; ``fix`` says which sizes to pass.

    >>> check_image_size(100000, "pass --image-size 64")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.ConfigError: image_size must be an integer from 8 to 2048 ..., got 100000. Fix: pass --image-size 64.
    """
    size = check_int("image_size", image_size, minimum=8, fix=fix)
    if size > MAX_IMAGE_SIZE:
        raise invalid("image_size", image_size, f"an integer from 8 to {MAX_IMAGE_SIZE} (the largest size dpaudit "
                      "resizes images to; the models and the attack were sized for 28 to 224)", fix, cls=cls)
    return size


def available_bytes() -> int | None:
    """Memory available to a new allocation without swapping, in bytes: psutil's ``available`` where psutil is
    installed, else ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the free physical pages
    (``os.sysconf``); None where none of these can be read (then nothing is refused). Where the process's address
    space is limited (``ulimit -v``, ``RLIMIT_AS``), at most what is left of that limit."""
    physical = _physical_available()
    room = _address_space_left()
    if room is None:
        return physical
    return room if physical is None else min(physical, room)


def _address_space_left() -> int | None:
    """``RLIMIT_AS`` less the process's virtual size (``/proc/self/statm``), or None (no limit, or not Linux)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[0])
        return max(0, int(limit) - pages * int(os.sysconf("SC_PAGE_SIZE")))
    except (ImportError, OSError, ValueError, IndexError):
        return None


def _physical_available() -> int | None:
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, three significant digits.

    >>> format_bytes(218 * 2 ** 40), format_bytes(1536), format_bytes(12)
    ('218 TiB', '1.50 KiB', '12 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            digits = 0 if unit == "B" or abs(n) >= 100 else 1 if abs(n) >= 10 else 2
            return f"{n:.{digits}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


#: Bytes of one pixel of a segmentation label map as the datasets hold it (int64: torch's class-index type).
INT64_BYTES = 8

#: The share of the memory available that the suggested sizes are fitted into. The estimate is a lower bound of
#: the peak (the model, the attack, the decoding and other processes come on top), so a size that just fits in all
#: of it would most likely still run out; half leaves room for those.
HEADROOM = 0.5


def images_bytes(n_images: int, channels: int, image_size: int, *, label_bytes: int = 0) -> int:
    """The bytes a loader holds at its peak for ``n_images`` images (an estimate, a lower bound: see the module),
    with a label map of ``label_bytes`` a pixel each (segmentation: :data:`INT64_BYTES`), held twice too.

    >>> format_bytes(images_bytes(2000, 3, 100000))  # 2000 RGB images of 100000 x 100000 px, float32, twice
    '437 TiB'
    >>> images_bytes(1, 1, 10, label_bytes=INT64_BYTES)  # one 10 x 10 slice and its int64 label map, twice
    2400
    """
    return DATASET_COPIES * n_images * (channels * FLOAT32_BYTES + label_bytes) * image_size * image_size


def check_images_fit(n_images: int, channels: int, image_size: int, *, name: str, available: int | None = None,
                     label_bytes: int = 0, per_unit: float = 1.0, what: str = "image") -> None:
    """Refuse, before allocating, a dataset of ``n_images`` images of ``channels`` x ``image_size`` ^ 2 float32
    values (and a label map of ``label_bytes`` a pixel each) that does not fit in the memory available
    (:func:`available_bytes`, or ``available``).

    ``name`` is the dataset (``demo``, ``folder:PATH``); ``what`` names its images (``slice``); ``per_unit`` is
    how many of them one unit ``--max-images`` counts holds on average (a volume's slices). The fix names
    ``--image-size`` (on every command that loads data) and ``--max-images`` (likewise) with the largest values
    whose images fit in :data:`HEADROOM` of the memory available (the estimate is a lower bound). Raises
    :class:`~dpaudit.errors.DataError` naming ``image_size`` (the command line names ``--image-size``) with the
    estimate and the memory available.

    >>> check_images_fit(2000, 3, 4096, name="demo", available=2 ** 30)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.DataError: image_size must be small enough that demo's images fit in memory (2000 image(s) x ...
    """
    avail = available_bytes() if available is None else available
    need = images_bytes(n_images, channels, image_size, label_bytes=label_bytes)
    if avail is None or need <= avail:
        return
    budget = avail * HEADROOM
    per_pixel = DATASET_COPIES * (channels * FLOAT32_BYTES + label_bytes)
    # The largest size whose images fit in the budget, rounded down to a multiple of 8 (at least 8).
    fits = int((budget / (per_pixel * n_images)) ** 0.5) // 8 * 8
    size_fix = f"pass a smaller --image-size (at most about {fits})" if fits >= 8 else "free memory"
    most = int(budget // (per_pixel * image_size * image_size * per_unit))
    fewer = f"pass --max-images {most} or fewer" if most >= 3 else "load fewer images (--max-images)"
    labels = " with an int64 label map each" if label_bytes else ""
    raise invalid("image_size", image_size,
                  f"small enough that {name}'s images fit in memory ({n_images} {what}(s) x {channels} channel(s) x "
                  f"{image_size} x {image_size} px as float32{labels}, held twice: an estimated "
                  f"{format_bytes(need)} at least; {format_bytes(avail)} available)",
                  f"{size_fix}, or {fewer} (sized to fit in {HEADROOM:.0%} of the memory available: the "
                  "estimate is a lower bound)", cls=DataError)


# ----------------------------------------------------------------------------------------------------------------
# Decoding one file: full resolution, before any resizing

#: Peak bytes per stored value (pixel x channel x frame) while Pillow decodes one 8-bit file and the loader
#: identifies and resizes it (an estimate): the file's bytes, Pillow's image (RGB held as 4 bytes a pixel), its
#: NumPy view's copy and the hashing's blocks. Measured as the growth of peak RSS over :func:`dpaudit.images.read_image`
#: on a random 3000 x 3000 PNG (incompressible, so the file's bytes count in full): 17.1 B a pixel for RGB (5.7 a
#: value), 5.2 for greyscale; rounded up.
DECODE_BYTES_8BIT = 6

#: The same for every other decode (TIFF at any depth, 16-bit and float PNG, DICOM, NIfTI), which goes through
#: float32 or float64 copies (modality and VOI transforms, the dataset-wide mapping to [0, 1], resizing). Measured
#: the same way: 12.0 B a value for an 8-bit RGB TIFF (3000 x 3000), 29.2 for a 16-bit greyscale TIFF (3000 x
#: 3000), 41.5 for a 12-bit DICOM (2000 x 2000, :func:`dpaudit.dicom.decode_dicom`), 32.2 for a float32 NIfTI
#: volume (256 x 256 x 60, :func:`dpaudit.nifti.decode_nifti`); rounded up over all.
DECODE_BYTES_DEEP = 48

#: What to do about one file too large to decode (every loader: the file is the user's to change).
DECODE_FIX = ("replace the file with a downsampled copy (dpaudit resizes to --image-size anyway), or remove it, "
              "or free memory")

#: Files a loader decodes at once at most (threads: Pillow, tifffile, pydicom and nibabel release the GIL).
DECODE_WORKERS = 4


@dataclass(frozen=True)
class DecodeSize:
    """A file's pixel dimensions as its header gives them (nothing decoded): ``height`` x ``width`` px,
    ``channels`` stored samples a pixel, ``frames`` (DICOM frames, NIfTI slices) and whether its values are deeper
    than 8 bits (decoded through float64)."""

    height: int
    width: int
    channels: int = 1
    frames: int = 1
    deep: bool = False

    @property
    def peak_bytes(self) -> int:
        """The estimated peak of decoding the file (:data:`DECODE_BYTES_8BIT`, :data:`DECODE_BYTES_DEEP`)."""
        per_value = DECODE_BYTES_DEEP if self.deep else DECODE_BYTES_8BIT
        return self.height * self.width * self.channels * self.frames * per_value

    def describe(self) -> str:
        """The dimensions as a message gives them.

        >>> DecodeSize(12000, 9000, 3).describe(), DecodeSize(512, 512, 1, 300, True).describe()
        ('12000 x 9000 px x 3 channel(s)', '512 x 512 px x 1 channel(s) x 300 frame(s)')
        """
        frames = f" x {self.frames} frame(s)" if self.frames != 1 else ""
        return f"{self.height} x {self.width} px x {self.channels} channel(s){frames}"


def decode_workers(sizes: Sequence[DecodeSize | None], shown: Sequence[str], *, name: str, fix: str,
                   available: int | None = None, wanted: int = DECODE_WORKERS) -> int:
    """How many of ``sizes``' files to decode at once: at most ``wanted``, as many as the largest estimated decode
    peak fits in the memory available (:func:`available_bytes`, or ``available``) that many times over, at least 1.

    Refuses, before anything is decoded, a file whose decode alone does not fit: a :class:`DataError` naming the
    file (``shown``: as messages name it, relative to the data folder), its dimensions, the estimate and the
    memory available, after ``name`` (the dataset), with ``fix``. None in ``sizes``: the header did not read (the
    decode reports that file). PIL's decompression-bomb limit is replaced by this rule (:mod:`dpaudit.images`).

    >>> decode_workers([DecodeSize(1000, 1000, 3)] * 8, ["'a.png'"] * 8, name="folder:x", fix="f",
    ...                available=40 * 2 ** 20)
    2
    >>> decode_workers([DecodeSize(12000, 12000, 3)], ["'big/a.png'"], name="folder:x", fix="remove it",
    ...                available=2 ** 30)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.DataError: folder:x: image 'big/a.png' is 12000 x 12000 px x 3 channel(s): decoding it at full ...
    """
    known = [(s, f) for s, f in zip(sizes, shown, strict=True) if s is not None]
    if not known:
        return max(1, min(wanted, len(sizes)))
    avail = available_bytes() if available is None else available
    largest, where = max(known, key=lambda sf: sf[0].peak_bytes)
    if avail is None:
        return max(1, min(wanted, len(sizes)))
    if largest.peak_bytes > avail:
        raise DataError(f"{name}: image {where} is {largest.describe()}: decoding it at full resolution (before "
                        f"resizing) needs an estimated {format_bytes(largest.peak_bytes)}; "
                        f"{format_bytes(avail)} available. Fix: {fix}.")
    return max(1, min(wanted, len(sizes), avail // max(1, largest.peak_bytes)))
