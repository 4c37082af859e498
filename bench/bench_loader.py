"""Benchmark: loading a DICOM tree and a NIfTI folder with dpaudit, against pydicom / nibabel alone.

The fixtures are generated in a temporary folder: ``--dicom-files`` CT-like 12-bit files of 256 x 256 (a third
uncompressed, a third RLE, a third JPEG-LS, in patient sub-folders) and ``--nifti-files`` volumes of 128 x 128 x 32
float32 (``.nii.gz``). Cases, alternated ``--repeats`` times in one process:

* ``dpaudit cold``: ``load_splits("dicom:DIR", image_size=64)`` with the cache off (headers, decode, modality
  LUT and window, resize to 64 x 64, split by patient);
* ``dpaudit warm``: the same with the cache already filled by a previous run (what a second run costs);
* reference: ``pydicom.dcmread(f).pixel_array`` for every file (decode only: no header pass, no windowing, no
  resize, no split), or ``nibabel.load(f).get_fdata()`` for every volume.

Rates are files per second (medians), with the ratio dpaudit / reference. Usage::

    python bench/bench_loader.py [--dicom-files 300] [--nifti-files 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from harness import Comparison
from medical_fixtures import dicom_file, nifti_file


def build(root: Path, n_dicom: int, n_nifti: int) -> tuple[Path, Path]:
    from pydicom.uid import JPEGLSLossless, RLELossless

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    dicom_dir = root / "dicom"
    for i in range(n_dicom):
        # Smooth anatomy-like content plus noise (compressors see realistic entropy).
        img = 2000 + 800 * np.sin(xx / (9 + i % 7)) * np.cos(yy / (11 + i % 5)) + rng.normal(0, 30, (256, 256))
        path = dicom_dir / ("normal" if i % 2 else "nodule") / f"patient{i // 6:04d}" / f"IM{i:05d}"
        ds = dicom_file(path, np.clip(img, 0, 4095).astype(np.uint16), patient=f"PAT{i // 6:05d}",
                        RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
        if i % 3:
            ds.compress(RLELossless if i % 3 == 1 else JPEGLSLossless)
            ds.save_as(path, enforce_file_format=True)
    nifti_dir = root / "nifti"
    for i in range(n_nifti):
        vol = rng.normal(0, 1, (128, 128, 32)).astype(np.float32)
        nifti_file(nifti_dir / ("a" if i % 2 else "b") / f"vol{i:03d}.nii.gz", vol)
    return dicom_dir, nifti_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dicom-files", type=int, default=300)
    ap.add_argument("--nifti-files", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import nibabel as nib
    import pydicom

    from dpaudit.data import load_splits

    with tempfile.TemporaryDirectory(prefix="dpaudit-bench-loader-") as tmp:
        root = Path(tmp)
        print("building fixtures ...", file=sys.stderr, flush=True)
        dicom_dir, nifti_dir = build(root, args.dicom_files, args.nifti_files)
        dicom_files = sorted(p for p in dicom_dir.rglob("*") if p.is_file())
        nifti_files = sorted(nifti_dir.rglob("*.nii.gz"))

        def ours(spec: str, cache: str | None) -> int:
            os.environ["DPAUDIT_CACHE_DIR"] = cache or "off"
            s = load_splits(spec, image_size=64)
            return len(s.train) + len(s.val) + len(s.test)

        def ref_dicom() -> int:
            return sum(pydicom.dcmread(f).pixel_array.shape[0] > 0 for f in dicom_files)

        def ref_nifti() -> int:
            return sum(nib.load(str(f)).get_fdata().shape[2] for f in nifti_files)

        cache = str(root / "cache")
        ours(f"dicom:{dicom_dir}", cache)  # fill the cache for the warm cases
        ours(f"nifti:{nifti_dir}", cache)
        rows = [
            ("DICOM", len(dicom_files), Comparison.run("dicom cold", lambda: ours(f"dicom:{dicom_dir}", None),
                                                       ref_dicom, args.repeats)),
            ("DICOM", len(dicom_files), Comparison.run("dicom warm", lambda: ours(f"dicom:{dicom_dir}", cache),
                                                       None, args.repeats)),
            ("NIfTI", len(nifti_files), Comparison.run("nifti cold", lambda: ours(f"nifti:{nifti_dir}", None),
                                                       ref_nifti, args.repeats)),
            ("NIfTI", len(nifti_files), Comparison.run("nifti warm", lambda: ours(f"nifti:{nifti_dir}", cache),
                                                       None, args.repeats)),
        ]
    print(f"\n{args.dicom_files} DICOM files (256x256, 12 bit; 1/3 raw, 1/3 RLE, 1/3 JPEG-LS), {args.nifti_files} "
          f"NIfTI volumes (128x128x32 float32, .nii.gz); medians of {args.repeats}; dpaudit resizes to 64x64")
    # ratio: dpaudit's rate over the reference's (above 1: dpaudit loads faster, though it does more); a warm row
    # is compared with its kind's reference, measured in the cold row of the same run
    head = (f"{'case':<12} {'dpaudit files/s':>16} {'pydicom/nibabel alone files/s':>30} {'ratio':>7} "
            f"{'images':>8}")
    print(head)
    print("-" * len(head))
    reference = {kind: r.reference_median for kind, _, r in rows if r.reference_s}
    for kind, n, r in rows:
        ref_s = reference[kind]
        ref = f"{n / ref_s:30.1f}" if r.reference_s else f"{'(' + format(n / ref_s, '.1f') + ', cold row)':>30}"
        print(f"{r.name:<12} {n / r.ours_median:16.1f} {ref} {ref_s / r.ours_median:6.2f}x {r.ours_value:8d}")
    print("ratio: dpaudit's files/s over pydicom's or nibabel's alone (decode only), measured side by side")


if __name__ == "__main__":
    main()
