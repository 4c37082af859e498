"""NIfTI volumes (``.nii``, ``.nii.gz``): 2-D slices for ``--dataset nifti:PATH`` and CSV manifests.

Slices
------
Each volume is first reoriented to the closest canonical (RAS+) voxel order with nibabel, so that the axis names
mean the same for every file whatever its affine: ``sagittal`` slices run along the first axis (left to right),
``coronal`` along the second (posterior to anterior), ``axial`` (the default) along the third (inferior to
superior). A slice is shown with its second in-plane axis upwards (anterior or superior up) and the patient's
right on the image's right (neurological convention): ``np.rot90`` of the RAS-ordered slice. A 4-D file
contributes its first volume.

Values
------
Voxel values are the scaled data (``scl_slope``, ``scl_inter`` applied by nibabel). With ``--window LOW,HIGH``
they are mapped linearly to [0, 1] and clipped (e.g. ``-100,200`` HU for liver CT). Without a window, every volume
of the dataset is mapped by the same affine map from the dataset's minimum and maximum voxel values (kept as they
are when all lie in [0, 1]): the rule of :mod:`dpaudit.images` for floating-point images. A non-finite voxel is an
error naming the file and the voxel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dpaudit.errors import DataError, invalid
from dpaudit.images import Pixels, UnreadableImageError, match_channels, resize_float

__all__ = ["NIFTI_SUFFIXES", "SLICE_AXES", "decode_nifti", "is_nifti", "slice_count"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Slice axis name to the RAS+ voxel axis it runs along.
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def check_axis(slice_axis: str) -> int:
    if slice_axis not in SLICE_AXES:
        raise invalid("slice_axis", slice_axis, f"one of {', '.join(map(str, SLICE_AXES))}", "pass --slice-axis axial",
                      cls=DataError)
    return SLICE_AXES[slice_axis]


def _load(path: Path):  # -> nibabel image, canonical
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors, ...
        raise UnreadableImageError(f"NIfTI file {str(path)!r} does not load ({type(exc).__name__}: {exc}). Fix: "
                                   "replace or remove the file.") from None
    if len(img.shape) < 2:
        raise UnreadableImageError(f"NIfTI file {str(path)!r} has shape {img.shape}, not a volume. Fix: pass 3-D "
                                   "volumes.")
    return img


def slice_count(path: Path, slice_axis: str) -> int:
    """Number of slices along ``slice_axis`` (from the header only)."""
    import nibabel as nib

    world = check_axis(slice_axis)
    img = _load(path)
    shape = tuple(img.shape[:3]) + (1,) * (3 - len(img.shape[:3]))
    # io_orientation maps voxel axis i to world axis ornt[i, 0]: the slices run along the voxel axis that
    # becomes the requested world axis.
    ornt = nib.orientations.io_orientation(img.affine)
    matches = [i for i in range(min(3, len(ornt))) if int(ornt[i, 0]) == world]
    return int(shape[matches[0] if matches else world])


def canonical_volume(path: Path) -> np.ndarray:
    """The volume's scaled voxel values as float64, reoriented to RAS+ (first volume of a 4-D file)."""
    import nibabel as nib

    img = _load(path)
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float64)
    except Exception as exc:  # truncated or damaged data
        raise UnreadableImageError(f"NIfTI file {str(path)!r}: its voxel data do not read ({type(exc).__name__}: "
                                   f"{exc}). Fix: replace or remove the file.") from None
    while data.ndim > 3:
        data = data[..., 0]
    while data.ndim < 3:
        data = data[..., None]
    ornt = nib.orientations.io_orientation(img.affine)
    return nib.orientations.apply_orientation(data, ornt)


def decode_nifti(path: Path, image_size: int, channels: int, window: tuple[float, float] | None,
                 slice_axis: str) -> list[Pixels]:
    """Every slice of one volume along ``slice_axis``, resized; one :class:`Pixels` per slice."""
    axis = check_axis(slice_axis)
    vol = canonical_volume(path)
    bad = ~np.isfinite(vol)
    if bad.any():
        i, j, k = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"NIfTI file {str(path)!r} holds a non-finite voxel value (voxel {i}, {j}, {k} in RAS+ "
                        "order). Fix: replace the non-finite values, or remove the file.")
    low, high = float(vol.min()), float(vol.max())
    stack = np.ascontiguousarray(np.moveaxis(vol, axis, 0))  # one copy; slices are then contiguous
    # The volume's content identifies its slices: a copied volume (under another name) is never split apart,
    # while equal slices of different volumes (empty background) stay independent.
    volume = hashlib.blake2b(stack.tobytes(), digest_size=16).hexdigest()
    out = []
    for s in range(stack.shape[0]):
        plane = np.rot90(stack[s])
        if window is not None:
            lo, hi = window
            plane = np.clip((plane - lo) / (hi - lo), 0.0, 1.0)
        data = resize_float(match_channels(plane[..., None].astype(np.float32), channels), image_size)
        out.append(Pixels(data, "unit", 0.0, 1.0, f"{volume}/{s}") if window is not None else
                   Pixels(data, "float", low, high, f"{volume}/{s}"))
    return out
