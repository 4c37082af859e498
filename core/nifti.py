"""NIfTI volumes (``.nii``, ``.nii.gz``): 2-D slices for ``--dataset nifti:PATH`` and CSV manifests.

Slices
------
Each volume is first reoriented to the closest canonical (RAS+) voxel order with nibabel, so that the axis names
mean the same for every file whatever its affine: ``sagittal`` slices run along the first axis (left to right),
``coronal`` along the second (posterior to anterior), ``axial`` (the default) along the third (inferior to
superior). A slice is shown with its second in-plane axis upwards (anterior or superior up) and the patient's
right on the image's right (neurological convention): ``np.rot90`` of the RAS-ordered slice.

One volume per file: a file holding several (a 4-D time series, diffusion directions, several echoes) is refused
with an error naming the file, not cut to its first volume: dpaudit cannot know which volume is the image, and
taking all of them would mix contrasts in one class. Trailing axes of length 1 (``X x Y x Z x 1``) are dropped.

Values
------
Voxel values are the scaled data (``scl_slope``, ``scl_inter`` applied by nibabel). With ``--window LOW,HIGH``
they are mapped linearly to [0, 1] and clipped (e.g. ``-100,200`` HU for liver CT). Without a window, every volume
of the dataset is mapped by the same affine map from the dataset's minimum and maximum voxel values (kept as they
are when all lie in [0, 1]): the rule of :mod:`dpaudit.images` for floating-point images. A non-finite voxel makes the
file unreadable, named with the voxel (``nifti:`` skips it, a manifest that lists it stops).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dpaudit.errors import DataError, invalid, library_reason
from dpaudit.images import Pixels, UnreadableImageError, match_channels, resize_float
from dpaudit.memory import DecodeSize

__all__ = ["NIFTI_SUFFIXES", "SLICE_AXES", "canonical", "decode_nifti", "decode_size", "is_nifti", "slice_count"]

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
        raise UnreadableImageError(f"NIfTI file {str(path)!r} does not load ({library_reason(exc, path)}). Fix: "
                                   "replace or remove the file.") from None
    if len(img.shape) < 2:
        raise UnreadableImageError(f"NIfTI file {str(path)!r} has shape {img.shape}, not a volume. Fix: pass 3-D "
                                   "volumes.")
    if volume_count(img.shape) > 1:
        raise DataError(f"NIfTI file {str(path)!r} holds {volume_count(img.shape)} volumes (shape "
                        f"{tuple(img.shape)}); dpaudit reads one 3-D volume per file. Fix: split it into 3-D files "
                        "(nibabel's four_to_three) and keep the volume(s) you mean, with one patient_id in "
                        "labels.csv (or one BIDS subject, files named sub-<label>_...) for all of one patient's files.")
    return img


def volume_count(shape: tuple[int, ...]) -> int:
    """Volumes a NIfTI shape holds: the product of its axes after the third (1 for 2-D and 3-D, and for trailing
    axes of length 1).

    >>> volume_count((16, 16, 3)), volume_count((16, 16, 3, 1)), volume_count((16, 16, 3, 5))
    (1, 1, 5)
    """
    return int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1


def canonical(img, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(voxel array X x Y x Z, affine) of a one-volume NIfTI image reoriented to the closest canonical (RAS+)
    voxel order with nibabel's ``as_closest_canonical``; 2-D images get a third axis of length 1 and trailing axes
    of length 1 are dropped first. ``dtype`` None keeps the scaled data's own type (a label map's integers)."""
    import nibabel as nib

    shape = tuple(img.shape)
    if len(shape) != 3:  # 2-D, or X x Y x Z x 1 ...: the same voxels as one 3-D image with the same affine
        data = np.asanyarray(img.dataobj).reshape(tuple(shape[:3]) + (1,) * (3 - len(shape[:3])))
        img = nib.Nifti1Image(data, img.affine)
    canon = nib.as_closest_canonical(img)
    data = np.asanyarray(canon.dataobj) if dtype is None else np.asanyarray(canon.dataobj, dtype=dtype)
    return data, canon.affine


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


def decode_size(path: Path) -> DecodeSize | None:
    """The voxels :func:`decode_nifti` decodes ``path`` at (the whole volume, as float64, before any slice is
    resized), from its header (nibabel reads the data lazily); None when the header does not read (the decode
    reports it)."""
    try:
        shape = (*(int(n) for n in _load(path).shape), 1, 1)
    except DataError:
        return None
    return DecodeSize(shape[0], shape[1], 1, int(np.prod(shape[2:], dtype=np.int64)), deep=True)


def canonical_volume(path: Path) -> np.ndarray:
    """The volume's scaled voxel values as float64, reoriented to RAS+ (:func:`canonical`)."""
    img = _load(path)
    try:
        return canonical(img)[0]
    except Exception as exc:  # truncated or damaged data
        raise UnreadableImageError(f"NIfTI file {str(path)!r}: its voxel data do not read "
                                   f"({library_reason(exc, path)}). Fix: replace or remove the file.") from None


def decode_nifti(path: Path, image_size: int, channels: int, window: tuple[float, float] | None,
                 slice_axis: str) -> list[Pixels]:
    """Every slice of one volume along ``slice_axis``, resized; one :class:`Pixels` per slice."""
    axis = check_axis(slice_axis)
    vol = canonical_volume(path)
    bad = ~np.isfinite(vol)
    if bad.any():
        i, j, k = (int(v) for v in np.argwhere(bad)[0])
        raise UnreadableImageError(f"NIfTI file {str(path)!r} holds a non-finite voxel value (voxel {i}, {j}, {k} in RAS+ "
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
