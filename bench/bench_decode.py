"""Benchmark: decoding one large image, time and memory, against Pillow alone and the full-copy identity hash.

One RGB PNG of ``--size`` x ``--size`` (smooth content plus noise) is written to a temporary folder. Cases,
alternated ``--repeats`` times in one process:

* ``read_image``: :func:`dpaudit.images.read_image` at 28 px (decode, identity hash of the full-resolution pixels,
  resize), against Pillow alone (``Image.open(f).resize((28, 28))``: no identity, no checks);
* ``content_id``: the identity of the decoded pixels as dpaudit computes it (blocks of rows, divided in float64),
  against one full float64 copy hashed at once (the formula it replaced; the same digest is checked).

Times are medians with the ratio reference / ours; the value columns give each case's peak of NumPy allocations
(tracemalloc; Pillow's own buffers are not traced), in MiB. Usage::

    python bench/bench_decode.py [--size 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import Comparison, report


def full_copy_id(pixels: np.ndarray, tag: str) -> str:
    """The identity hash with one float64 copy of the whole image (before blockwise hashing)."""
    pixels = pixels.astype(np.float64) / 255.0
    pixels = pixels.astype(np.float64) + 0.0
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tag, pixels.shape, pixels.dtype.str)).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def traced(f: Callable[[], Any]) -> Callable[[], tuple[Any, float]]:
    def run() -> tuple[Any, float]:
        tracemalloc.start()
        try:
            value = f()
            return value, tracemalloc.get_traced_memory()[1] / 2 ** 20
        finally:
            tracemalloc.stop()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from PIL import Image

    from dpaudit.images import content_id, read_image

    n = args.size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:n, 0:n]
    base = 128 + 100 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    arr = np.clip(base[..., None] + rng.normal(0, 8, (n, n, 3)), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.png"
        Image.fromarray(arr).save(path, compress_level=1)

        def pillow() -> None:
            with Image.open(path) as im:
                im.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR, reducing_gap=None)

        rows = [
            Comparison.run(f"read_image {n} px RGB -> 28", traced(lambda: read_image(path, 28, 3).digest),
                           traced(pillow), repeats=args.repeats),
            Comparison.run(f"content_id {n} px RGB", traced(lambda: content_id(arr, "image", divisor=255.0)),
                           traced(lambda: full_copy_id(arr, "image")), repeats=args.repeats),
        ]
    ours, ref = rows[1].ours_value[0], rows[1].reference_value[0]
    assert ours == ref, "the blockwise identity differs from the full copy's"
    report(rows, value_label="NumPy peak MiB", fmt=lambda v: f"{v[1]:.1f}")


if __name__ == "__main__":
    main()
