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
    (``os.sysconf``); None where none of these can be read (then nothing is refused)."""
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


def images_bytes(n_images: int, channels: int, image_size: int) -> int:
    """The bytes a loader holds at its peak for ``n_images`` images (an estimate, a lower bound: see the module).

    >>> format_bytes(images_bytes(2000, 3, 100000))  # 2000 RGB images of 100000 x 100000 px, float32, twice
    '437 TiB'
    """
    return DATASET_COPIES * n_images * channels * image_size * image_size * FLOAT32_BYTES


def check_images_fit(n_images: int, channels: int, image_size: int, *, name: str,
                     available: int | None = None) -> None:
    """Refuse, before allocating, a dataset of ``n_images`` images of ``channels`` x ``image_size`` ^ 2 float32
    values that does not fit in the memory available (:func:`available_bytes`, or ``available``).

    ``name`` is the dataset (``demo``, ``folder:PATH``). The fix names ``--image-size`` (on every command that loads
    data) and ``--max-images`` (likewise) with the largest values that fit. Raises
    :class:`~dpaudit.errors.DataError` naming ``image_size`` (the command line names ``--image-size``) with the
    estimate and the memory available.

    >>> check_images_fit(2000, 3, 4096, name="demo", available=2 ** 30)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.DataError: image_size must be small enough that demo's images fit in memory (2000 image(s) x ...
    """
    avail = available_bytes() if available is None else available
    need = images_bytes(n_images, channels, image_size)
    if avail is None or need <= avail:
        return
    # The largest size whose images fit, rounded down to a multiple of 8 (at least 8).
    fits = int((avail / (DATASET_COPIES * n_images * channels * FLOAT32_BYTES)) ** 0.5) // 8 * 8
    size_fix = f"pass a smaller --image-size (at most about {fits})" if fits >= 8 else "free memory"
    most = avail // (DATASET_COPIES * channels * image_size * image_size * FLOAT32_BYTES)
    fewer = f"pass --max-images {most} or fewer" if most >= 3 else "load fewer images (--max-images)"
    raise invalid("image_size", image_size,
                  f"small enough that {name}'s images fit in memory ({n_images} image(s) x {channels} channel(s) x "
                  f"{image_size} x {image_size} px as float32, held twice: an estimated {format_bytes(need)} at "
                  f"least; {format_bytes(avail)} available)", f"{size_fix}, or {fewer}", cls=DataError)
