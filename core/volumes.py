"""Segmentation datasets of 3-D volumes, trained on 2-D axial slices: the MSD layout and the built-in ``demo-ct``.

``load_segmentation_splits(name, image_size=..., ...)`` returns :class:`SegmentationSplits` (train, val, test),
each a :class:`SliceDataset`: float32 slices N x 1 x H x W in [0, 1], int64 label maps N x H x W (named
``labels`` so that code written for per-image labels, e.g. the imprint attack's cross-entropy, takes the
per-pixel loss unchanged), the volume each slice comes from and its position in it.

The volume is the patient unit (seed paper section 4.1: MSD Liver's N_train counts volumes). Splits are
volume-disjoint; k, the number of slices one volume contributes to the training split, is what the
patient-level bounds use (:attr:`SegmentationSplits.records_per_patient`), and kappa = 1 / (training volumes).

Names
-----
``msd:PATH``
    The Medical Segmentation Decathlon layout (Antonelli et al. 2022, Nature Communications 13:4128): ``dataset.json``
    with its ``labels`` map (e.g. ``{"0": "background", "1": "liver", "2": "cancer"}``) and ``modality``,
    ``imagesTr/CASE.nii.gz`` and ``labelsTr/CASE.nii.gz`` of the same case names (``.nii`` too, either folder),
    read with nibabel; nnU-Net v2's ``file_ending`` is respected (a file of the other ending is refused, not
    dropped). Axial = the third voxel axis (the MSD files' orientation).
``demo-ct``
    Synthetic CT-like volumes in Hounsfield units (air, a body, an organ, small hypodense lesions; some volumes
    without a lesion), generated from the seed (:func:`make_demo_ct`); no download.

Intensities
-----------
CT volumes are windowed: values are clipped to ``window`` (default :data:`LIVER_WINDOW`, -100..200 HU) and mapped
linearly to [0, 1]. A fixed window is not a statistic of the data, so it releases nothing about the training
volumes. Other modalities are scaled per volume between its own 0.5 and 99.5 percentiles (a statistic of that
volume only).

Slices
------
``background_share`` keeps, in the TRAINING split only, every slice holding foreground plus that share of the
slices without foreground (seeded); 1.0 keeps every slice. Validation and test volumes keep every slice, so that
the Dice score is computed on the whole reassembled volume, as the seed paper reports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dpaudit.data import LabelledImages, SplitsShape
from dpaudit.errors import DataError, check_int, check_probability, invalid, shown_path
from dpaudit.memory import INT64_BYTES, check_image_size, check_images_fit, decode_workers

__all__ = [
    "DEMO_CT_VOLUMES",
    "LIVER_WINDOW",
    "SEGMENTATION_DATASETS",
    "SegmentationSplits",
    "SliceDataset",
    "is_segmentation_dataset",
    "load_segmentation_splits",
    "make_demo_ct",
]

#: The liver CT window in HU (level 50, width 300), the usual abdominal soft-tissue window for liver and lesions.
LIVER_WINDOW = (-100.0, 200.0)

#: Default number of demo-ct volumes: 16 training, 4 validation and 4 test volumes at the default 15% / 15% shares
#: (16 volumes left 2 test volumes, one of them with lesions: a tumour Dice of one volume).
DEMO_CT_VOLUMES = 24

#: Radius range of demo-ct lesions in voxels of the 64-voxel grid (the field of view is 64 voxels wide): 1.75 to
#: 3.5 pixels at the default 28-pixel slices. At 3 to 6 voxels (1.3 to 2.6 pixels at 28) the smallest test lesions
#: covered 15 pixels of a whole volume after resizing, and the non-private U-Net's tumour Dice ranged from 0.21 to
#: 0.82 over four splits; at 4 to 8, from 0.56 to 0.90 (one run each, 20 epochs; README "Segmentation").
DEMO_CT_LESION_RADIUS = (4.0, 8.0)

#: Slices per demo-ct volume (a short abdominal stack; the real MSD Liver volumes hold 75 to 987 slices).
DEMO_CT_SLICES = 16

#: Dataset names (or prefixes) that are segmentation tasks.
SEGMENTATION_DATASETS = ("demo-ct", "msd:PATH")


def is_segmentation_dataset(name: str) -> bool:
    """True for ``demo-ct`` and ``msd:PATH``: the names :func:`load_segmentation_splits` reads."""
    return isinstance(name, str) and (name == "demo-ct" or name.startswith("msd:"))


@dataclass(frozen=True, eq=False)
class SliceDataset(LabelledImages):
    """One split of a segmentation dataset: 2-D slices of whole volumes, held in memory.

    Attributes
    ----------
    images:
        float32 tensor N x 1 x H x W with values in [0, 1] (windowed, not normalised).
    labels:
        int64 tensor N x H x W: the class of every pixel (0 = background).
    label_names:
        Name of each class index, from the dataset (``dataset.json``'s ``labels``).
    volume_ids:
        N identifiers of the volume each slice comes from (the patient unit); also :attr:`patient_ids`.
    slice_index:
        N positions along the axial axis, so that a volume's slices can be reassembled in order.
    name:
        Dataset name and split, e.g. ``"demo-ct/train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    volume_ids: np.ndarray
    slice_index: np.ndarray
    name: str = ""
    groups: dict = field(default_factory=dict)  # no subgroup metadata; the attribute keeps ImageDataset's shape

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.float32:
            raise DataError(f"{self.name or 'dataset'}: slices must be a float32 tensor N x C x H x W, got shape "
                            f"{tuple(getattr(images, 'shape', ()))}.")
        n = images.shape[0]
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (n, *images.shape[2:]):
            raise DataError(f"{self.name or 'dataset'}: label maps must be N x H x W = {(n, *images.shape[2:])}, "
                            f"got {tuple(getattr(labels, 'shape', ()))}.")
        object.__setattr__(self, "labels", labels.to(torch.int64))
        object.__setattr__(self, "label_names", tuple(str(s) for s in self.label_names))
        object.__setattr__(self, "volume_ids", np.asarray(self.volume_ids).astype(str))
        object.__setattr__(self, "slice_index", np.asarray(self.slice_index, dtype=np.int64))
        if self.volume_ids.shape != (n,) or self.slice_index.shape != (n,):
            raise DataError(f"{self.name or 'dataset'}: volume_ids and slice_index must hold {n} entries.")

    def __repr__(self) -> str:  # never print pixel data
        return (f"SliceDataset(name={self.name!r}, slices={len(self)}, volumes={self.n_volumes}, "
                f"shape={self.image_shape}, classes={self.label_names})")

    @property
    def patient_ids(self) -> np.ndarray:
        return self.volume_ids

    @property
    def n_volumes(self) -> int:
        return len(np.unique(self.volume_ids))

    def class_counts(self) -> np.ndarray:
        """Number of pixels per class index."""
        return np.bincount(self.labels.reshape(-1).numpy(), minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> SliceDataset:
        idx = np.asarray(indices, dtype=np.int64)
        t = torch.from_numpy(idx)
        return SliceDataset(self.images[t], self.labels[t], self.label_names, self.volume_ids[idx],
                            self.slice_index[idx], self.name if name is None else name)

    def volumes(self) -> list[np.ndarray]:
        """Indices of each volume's slices in axial order, volumes in order of first appearance."""
        order: dict[str, list[int]] = {}
        for i, v in enumerate(self.volume_ids):
            order.setdefault(str(v), []).append(i)
        return [np.asarray(sorted(ix, key=lambda i: self.slice_index[i]), dtype=np.int64) for ix in order.values()]


@dataclass(frozen=True, eq=False)
class SegmentationSplits(SplitsShape):
    """Train, validation and test slices of volume-disjoint splits, with the fixed normalisation models use."""

    train: SliceDataset
    val: SliceDataset
    test: SliceDataset
    name: str = ""
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    window: tuple[float, float] | None = None
    modality: str = "CT"
    task: str = "segmentation"

    def __post_init__(self) -> None:
        parts = (self.train, self.val, self.test)
        if len({p.image_shape for p in parts}) != 1 or len({p.label_names for p in parts}) != 1:
            raise DataError(f"{self.name}: splits disagree on slice shape or label names.")
        seen: dict[str, str] = {}
        for part, what in zip(parts, ("train", "val", "test"), strict=True):
            for v in np.unique(part.volume_ids):
                if seen.setdefault(str(v), what) != what:
                    raise DataError(f"{self.name}: volume {v!r} is in both {seen[str(v)]} and {what}; splits must "
                                    "be volume-disjoint.")

    #: The data's unit for :func:`dpaudit.data.privacy_unit`: a volume is one patient's scan (the privacy unit
    #: is then the patient, with k = slices per volume).
    unit = "volume"
    skipped: dict = field(default_factory=dict)  # nothing is skipped silently: a bad volume is an error
    notes: tuple[str, ...] = ()

    def images_per_unit(self):
        """The training split's slices-per-volume distribution (counts only), as :mod:`dpaudit.data` reports it."""
        from dpaudit.data import ImagesPerUnit

        _, counts = np.unique(self.train.volume_ids, return_counts=True)
        hist = np.unique(counts, return_counts=True)
        return ImagesPerUnit("volume", len(counts), int(counts.max()) if len(counts) else 0,
                             float(counts.mean()) if len(counts) else 0.0,
                             tuple((int(a), int(b)) for a, b in zip(*hist, strict=True)))

    @property
    def n_train_volumes(self) -> int:
        """N_train in volumes: the patient unit (kappa = 1 / this)."""
        return self.train.n_volumes

    @property
    def records_per_patient(self) -> int:
        """k: the most slices one volume contributes to the training split (the patient-level group size)."""
        _, counts = np.unique(self.train.volume_ids, return_counts=True)
        return int(counts.max()) if len(counts) else 1

    def __repr__(self) -> str:
        return (f"SegmentationSplits(name={self.name!r}, train={len(self.train)} slices of "
                f"{self.train.n_volumes} volumes, val={self.val.n_volumes} volumes, test={self.test.n_volumes} "
                f"volumes, shape={self.image_shape}, classes={self.label_names})")


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def load_segmentation_splits(name: str, *, image_size: int, seed: int = 0, max_volumes: int | None = None,
                             window: tuple[float, float] | None = None, background_share: float = 1.0,
                             val_fraction: float = 0.15, test_fraction: float = 0.15) -> SegmentationSplits:
    """Load ``demo-ct`` or ``msd:PATH`` as volume-disjoint slice splits.

    Parameters
    ----------
    image_size:
        Slices are resized to image_size x image_size (images bilinear with antialiasing, label maps nearest).
    seed:
        Seeds the demo generator, the split and the background-slice selection.
    max_volumes:
        At most this many volumes (a seeded selection before reading), for quick runs; demo-ct: its size
        (default :data:`DEMO_CT_VOLUMES`).
    window:
        (low, high) in HU for CT; None takes :data:`LIVER_WINDOW`. Refused for non-CT MSD tasks.
    background_share:
        Training split: keep every foreground slice and this share of the background slices (1.0: all).
    """
    image_size = check_image_size(image_size, "pass --image-size 32 or 64")
    if max_volumes is not None:
        max_volumes = check_int("max_volumes", max_volumes, minimum=3,
                                fix="pass at least 3 volumes (one per split) with --max-images")
    background_share = check_probability("background_share", background_share, open_low=False, open_high=False,
                                         fix="pass a share in [0, 1], e.g. --background-share 0.1")
    if window is not None:
        lo, hi = (float(w) for w in window)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise invalid("window", window, "two finite numbers LOW < HIGH (HU)", "pass --window -100,200",
                          cls=DataError)
        window = (lo, hi)
    fracs = (check_probability("val_fraction", val_fraction, open_low=False),
             check_probability("test_fraction", test_fraction))
    if name == "demo-ct":
        vols = _demo_volumes(max_volumes or DEMO_CT_VOLUMES, seed)
        label_names, modality, source = ("background", "liver", "tumour"), "CT", "demo-ct"
    elif isinstance(name, str) and name.startswith("msd:"):
        root = Path(name[len("msd:"):]).expanduser()
        label_names, modality, vols = _read_msd(root, max_volumes, seed)
        source = name
    else:
        raise invalid("dataset", name, f"one of {', '.join(map(str, SEGMENTATION_DATASETS))}",
                      "pass --dataset demo-ct or --dataset msd:PATH (a Decathlon task folder)", cls=DataError)
    if modality != "CT" and window is not None:
        raise invalid("window", window, f"only for CT (this task's modality is {modality})",
                      "leave out --window; non-CT volumes are scaled per volume", cls=DataError)
    win = (window or LIVER_WINDOW) if modality == "CT" else None
    rng = np.random.default_rng(seed)
    names = [v[0] for v in vols]
    order = rng.permutation(len(names))
    n_val = max(1, round(fracs[0] * len(names)))
    n_test = max(1, round(fracs[1] * len(names)))
    if len(names) - n_val - n_test < 1:
        raise invalid("volumes", len(names), "at least 3 (one per split)", "provide more volumes", cls=DataError)
    part_of = {}
    for j, i in enumerate(order):
        part_of[i] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    _check_volumes_fit(source, vols, part_of, image_size, background_share)
    out = {}
    for what in ("train", "val", "test"):
        members = sorted(i for i in range(len(names)) if part_of[i] == what)
        out[what] = _slices(vols, members, image_size, win, label_names, f"{source}/{what}",
                            background_share if what == "train" else 1.0, rng)
    return SegmentationSplits(out["train"], out["val"], out["test"], name=source, window=win, modality=modality)


def _check_volumes_fit(source: str, vols: list[tuple[str, object, object]], part_of: dict[int, str],
                       image_size: int, background_share: float) -> None:
    """Refuse, before a voxel is read, volumes whose slices (counted from the NIfTI headers) and int64 label maps
    cannot fit in memory at ``image_size`` (:func:`dpaudit.memory.check_images_fit`), or one of which cannot be
    decoded at full resolution (:func:`dpaudit.memory.decode_workers`: they are read one at a time). The training
    split keeps ``background_share`` of its slices at least (every foreground slice and that share of the others);
    the other splits keep all."""
    from dpaudit.nifti import decode_size, slice_count

    counts, sizes, shown = [], [], []
    for _, image, _ in vols:
        if isinstance(image, np.ndarray):
            counts.append(int(image.shape[2]) if image.ndim == 3 else 1)
            continue
        try:
            counts.append(slice_count(Path(image), "axial"))
        except DataError:  # the read names the file and why
            counts.append(1)
        sizes.append(decode_size(Path(image)))
        shown.append(shown_path(image, Path(image).parent.parent))
    if sizes:
        decode_workers(sizes, shown, name=source, wanted=1,
                       fix="pass a smaller --max-images to leave the volume out, or resample it to fewer voxels, "
                           "or free memory")
    kept = sum(int(c * background_share) if part_of[i] == "train" else c for i, c in enumerate(counts))
    check_images_fit(max(1, kept), 1, image_size, name=source, label_bytes=INT64_BYTES,
                     per_unit=max(1.0, kept / len(vols)), what="slice")


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _read_msd(root: Path, max_volumes: int | None, seed: int
              ) -> tuple[tuple[str, ...], str, list[tuple[str, object, object]]]:
    """(label names, modality, [(volume name, image loader, label loader)]) of an MSD task folder."""
    if not root.is_dir():
        raise invalid("dataset", f"msd:{root}", "an existing folder in the Decathlon layout",
                      "pass --dataset msd:PATH, the folder holding dataset.json, imagesTr/ and labelsTr/",
                      cls=DataError)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        holds = ('{"labels": {"0": "background", "1": "liver", "2": "tumour"}, "modality": {"0": "CT"}} (the class '
                 'name of each label value in labelsTr/, 0 the background; the Decathlon archive has the file)')
        if (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
            raise DataError(f"msd:{root}: the task folder has no dataset.json (imagesTr/ and labelsTr/ are there). "
                            f"Fix: add a dataset.json holding the class names, e.g. {holds}.")
        inner = sorted(p.parent.name for p in root.glob("*/dataset.json"))
        fix = (f"pass the task folder that holds it: --dataset msd:{root / inner[0]}" if inner else
               f"pass the task folder, the one holding dataset.json, imagesTr/ and labelsTr/ (dataset.json holds "
               f"the class names, e.g. {holds})")
        raise DataError(f"msd:{root}: no dataset.json, imagesTr/ or labelsTr/ in this folder. Fix: {fix}.")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise DataError(f"msd:{root}: dataset.json is not valid JSON ({exc}). Fix: correct the file.") from None
    labels = _labels_map(meta.get("labels") if isinstance(meta, dict) else None)
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise invalid("dataset.json labels", sorted(labels), "the integers 0..K-1 with K >= 2 (0 = background)",
                      "number the classes 0, 1, 2, ...", cls=DataError)
    _refuse_ignore_label(labels)
    # MSD's "modality", nnU-Net v2's "channel_names"
    modality = str(dict(meta.get("modality") or meta.get("channel_names") or {}).get("0", "CT"))
    ending = _file_ending(root, meta)
    images = _nifti_cases(root, "imagesTr", ending)
    label_files = _nifti_cases(root, "labelsTr", ending)
    images = _nnunet_channels(root, images, label_files)
    paired = sorted(set(images) & set(label_files))
    unpaired = [f"imagesTr/{images[n].name} has no label map {n}.nii(.gz) in labelsTr/"
                for n in sorted(set(images) - set(label_files))] + [
        f"labelsTr/{label_files[n].name} has no image {n}.nii(.gz) in imagesTr/"
        for n in sorted(set(label_files) - set(images))]
    if paired and unpaired:  # a volume without its label map (or the reverse) is never dropped without a word
        shown = "; ".join(unpaired[:3]) + (f"; and {len(unpaired) - 3} more" if len(unpaired) > 3 else "")
        raise DataError(f"msd:{root}: {len(unpaired)} file(s) without their pair ({shown}). Fix: add the missing "
                        "file(s) of the same name, or move the unpaired one(s) out of imagesTr/ and labelsTr/.")
    if not paired:
        raise invalid("imagesTr/labelsTr", f"{len(images)} images, {len(label_files)} label maps",
                      "NIfTI files (.nii or .nii.gz) of the same case names in both folders",
                      "put each volume in imagesTr/ and its label map of the same name in labelsTr/", cls=DataError)
    if max_volumes is not None and len(paired) > max_volumes:
        pick = np.sort(np.random.default_rng(seed).choice(len(paired), size=max_volumes, replace=False))
        paired = [paired[i] for i in pick]
    _refuse_identical_images(root, [images[n] for n in paired])
    names = tuple(labels[i] for i in range(len(labels)))
    return names, modality, [(n, images[n], label_files[n]) for n in paired]


def _refuse_identical_images(root: Path, files: list[Path]) -> None:
    """One scan under two case names (a volume copied in imagesTr/) would count as two patients, each with k
    slices where that person has 2k, and could lie on both sides of the split: refused, naming both files. Byte-
    identical files only (same size, then the same hash of every byte: only files of equal size are read)."""
    import hashlib

    by_size: dict[int, list[Path]] = {}
    for p in files:
        by_size.setdefault(p.stat().st_size, []).append(p)
    seen: dict[str, Path] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        for p in group:
            h = hashlib.blake2b(digest_size=16)
            with p.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
            first = seen.setdefault(h.hexdigest(), p)
            if first != p:
                raise DataError(f"msd:{root}: imagesTr/{first.name} and imagesTr/{p.name} are identical files (one "
                                "scan under two case names): they would count as two patients, and could lie in "
                                "two splits. Fix: remove one of them and its label map in labelsTr/.")


#: The file endings of the NIfTI files of an MSD or nnU-Net task folder (the longer first: ``x.nii.gz`` is not a
#: ``.nii`` file).
_MSD_ENDINGS = (".nii.gz", ".nii")


def _file_ending(root: Path, meta: dict) -> str | None:
    """nnU-Net v2's ``file_ending`` (``".nii.gz"`` or ``".nii"``), lower-case; None when dataset.json has none
    (the Decathlon's own files: either NIfTI ending is read). Another format is refused: dpaudit reads NIfTI."""
    raw = meta.get("file_ending")
    if raw is None:
        return None
    ending = str(raw).strip().lower()
    if ending not in _MSD_ENDINGS:
        raise invalid("dataset.json file_ending", raw, "'.nii.gz' or '.nii' (dpaudit reads NIfTI task folders)",
                      f"convert the volumes in {root}/imagesTr and labelsTr to NIfTI and set \"file_ending\": "
                      "\".nii.gz\"", cls=DataError)
    return ending


def _nifti_cases(root: Path, folder: str, ending: str | None) -> dict[str, Path]:
    """{case name: file} of the NIfTI files in ``root/folder`` (``liver_3.nii.gz`` and ``liver_3.nii`` are case
    ``liver_3``). With ``ending`` (dataset.json's ``file_ending``), a file of the other NIfTI ending is refused,
    not dropped; one case in two files (``.nii`` and ``.nii.gz``) is refused."""
    out: dict[str, Path] = {}
    where = root / folder
    for p in sorted(where.iterdir()) if where.is_dir() else ():
        lower = p.name.lower()
        end = next((e for e in _MSD_ENDINGS if lower.endswith(e)), None)
        if end is None or p.name.startswith(".") or not p.is_file():
            continue
        if ending is not None and end != ending:
            raise DataError(f"msd:{root}: {folder}/{p.name} does not end in dataset.json's file_ending "
                            f"{ending!r}, which nnU-Net reads alone. Fix: save it as {p.name[:-len(end)]}{ending}, "
                            "or set file_ending to the ending all the files share.")
        case = p.name[:-len(end)]
        if case in out:
            raise DataError(f"msd:{root}: {folder}/{out[case].name} and {folder}/{p.name} are one case in two "
                            "files. Fix: keep one of them.")
        out[case] = p
    return out


def _refuse_ignore_label(labels: dict[int, str]) -> None:
    """nnU-Net v2's ``ignore`` label marks pixels without annotation, to be left out of the loss and of the
    Dice score. dpaudit trains and scores every label of dataset.json as a class (its imprint attack and Dice
    would take the unannotated pixels as one), so such a task is refused rather than read with a false class."""
    ignored = [i for i, n in labels.items() if n.strip().lower() == "ignore"]
    if ignored:
        raise invalid("dataset.json labels", f"'ignore': {ignored[0]}",
                      "class names only: nnU-Net v2's 'ignore' label (pixels without annotation, left out of the "
                      "loss and the Dice score) is not supported",
                      f"give the pixels labelled {ignored[0]} in labelsTr/ a class (or train on fully annotated "
                      "cases only) and remove \"ignore\" from dataset.json's labels", cls=DataError)


def _labels_map(raw: object) -> dict[int, str]:
    """dataset.json's ``labels`` as {class index: name}: the Decathlon form ``{"0": "background", "1": "liver"}``
    or nnU-Net v2's ``{"background": 0, "liver": 1}``.

    >>> _labels_map({"0": "background", "1": "liver"}) == _labels_map({"background": 0, "liver": 1})
    True
    """
    forms = 'the Decathlon form {"0": "background", "1": "liver"} or nnU-Net v2\'s {"background": 0, "liver": 1}'
    shown = json.dumps(raw)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    if isinstance(raw, dict) and raw:
        def index(v: object) -> int | None:
            if isinstance(v, bool):
                return None
            if isinstance(v, int):
                return v
            return int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else None

        if all(index(k) is not None for k in raw):  # Decathlon: index -> name
            names: dict[int, str] = {}
            for k, v in raw.items():  # "1" and "01" are one index: two names for it are refused, not overwritten
                if names.setdefault(index(k), str(v)) != str(v):
                    raise invalid("dataset.json labels", shown, f"one name per class index ({forms})",
                                  f"give index {index(k)} one name (keys {', '.join(repr(x) for x in raw if index(x) == index(k))} "
                                  "are the same index)", cls=DataError)
            return names
        if all(isinstance(v, (list, tuple)) or index(v) is not None for v in raw.values()):  # nnU-Net v2
            regions = [k for k, v in raw.items() if isinstance(v, (list, tuple))]
            if regions:
                raise invalid("dataset.json labels", shown, f"one class index per name ({forms}); "
                              f"{', '.join(map(repr, regions[:3]))} is a region (a list of indices)",
                              "train on the classes themselves: give each name one index, without regions",
                              cls=DataError)
            out: dict[int, str] = {}
            for k, v in raw.items():
                if out.setdefault(index(v), str(k)) != str(k):
                    raise invalid("dataset.json labels", shown, f"one name per class index ({forms})",
                                  f"give index {index(v)} one name", cls=DataError)
            return out
    raise invalid("dataset.json labels", shown, forms,
                  'write e.g. "labels": {"0": "background", "1": "liver", "2": "cancer"}', cls=DataError)


def _nnunet_channels(root: Path, images: dict[str, Path], label_files: dict[str, Path]) -> dict[str, Path]:
    """nnU-Net v2 names a case's image ``CASE_0000.nii.gz`` (channel 0) beside ``labelsTr/CASE.nii.gz``: such
    images are keyed by the label map's case name. A second channel (``_0001``) is refused: one modality is read.
    Both dicts are keyed by case name (:func:`_nifti_cases`)."""
    out: dict[str, Path] = {}
    for n, p in images.items():
        case, _, channel = n.rpartition("_")
        if n not in label_files and case in label_files and len(channel) == 4 and channel.isdigit():
            if channel != "0000":
                raise DataError(f"msd:{root}: imagesTr/{p.name} is channel {int(channel)} of case {case!r} (nnU-Net "
                                "names channels CASE_0000, CASE_0001, ...); dpaudit reads one modality. Fix: move "
                                "every channel but _0000 out of imagesTr/.")
            case_name = case
        else:
            case_name = n
        if case_name in out:
            raise DataError(f"msd:{root}: imagesTr/{out[case_name].name} and imagesTr/{p.name} are both case "
                            f"{case_name!r}. Fix: keep one of them.")
        out[case_name] = p
    return out


#: How far apart an image and its label map may place their voxel grids, in voxels of the image (the largest
#: distance between the two affines' positions of the grid's corners): header rounding (float32 affines, qform
#: quaternions) moves them by about 1e-5 voxel; a flipped, shifted or resampled label map by a voxel or more.
GRID_TOLERANCE = 0.01


def _grid_gap(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance, in voxels of affine ``a``, between the world positions ``a`` and ``b`` give the corners
    of a voxel grid of ``shape``."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    gap = np.linalg.norm((a @ corners - b @ corners)[:3], axis=0).max()
    spacing = float(np.linalg.norm(a[:3, :3], axis=0).min())
    return float(gap / spacing) if spacing > 0 else float("inf")


def _read_pair(name: str, image: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    """(volume, label map) of one MSD volume, both in the closest canonical (RAS+) voxel order, on one grid."""
    import nibabel as nib

    from dpaudit.nifti import canonical, volume_count

    pair = f"imagesTr/{image.name} and labelsTr/{label.name}"
    try:
        imgs = [nib.load(str(image)), nib.load(str(label))]
    except Exception as exc:  # nibabel raises many types for unreadable files; name the file, not the data
        raise DataError(f"volume {name!r} ({pair}): could not be read as NIfTI "
                        f"({type(exc).__name__}). Fix: check the files or remove them from imagesTr/ and "
                        "labelsTr/.") from None
    for what, img, path in zip(("image", "label map"), imgs, (image, label), strict=True):
        if len(img.shape) < 3 or volume_count(img.shape) > 1:
            raise invalid(f"volume {name!r} {what} {shown_path(path, path.parent.parent)} dimensions", tuple(img.shape),
                          "a 3-D volume X x Y x Z (one modality)", "use a single-modality task or extract one channel",
                          cls=DataError)
    try:
        (vol, v_aff), (lab, l_aff) = canonical(imgs[0], np.float32), canonical(imgs[1], None)
    except Exception as exc:  # truncated or damaged data
        raise DataError(f"volume {name!r} ({pair}): could not be read as NIfTI "
                        f"({type(exc).__name__}). Fix: check the files or remove them from imagesTr/ and "
                        "labelsTr/.") from None
    if vol.shape != lab.shape:
        raise invalid(f"volume {name!r} label map shape", lab.shape, f"the image's shape {vol.shape}",
                      f"pair each image with its own label map (same voxel grid): check {pair}", cls=DataError)
    gap = _grid_gap(v_aff, l_aff, vol.shape)
    if gap > GRID_TOLERANCE:
        raise DataError(f"volume {name!r}: {pair} lie on different voxel grids (their affines place the label map "
                        f"up to {gap:.3g} voxels away from the image; allowed: {GRID_TOLERANCE}). Fix: resample the "
                        "label map onto the image's grid with nearest-neighbour interpolation, or, if the voxels "
                        "are known to correspond one to one, write the image's affine into the label file.")
    return vol, lab


def _load_pair(name: str, image: object, label: object, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(volume float32 X x Y x Z, label map int64 X x Y x Z) of one volume, checked. NIfTI files are reoriented
    to the closest canonical (RAS+) voxel order, image and label map alike, so that axial slices run along the
    third axis (inferior to superior) whatever the files' voxel order, and a pair whose affines put its voxels in
    different places is refused."""
    who = label_who = repr(name)
    if isinstance(image, np.ndarray):
        vol, lab = image, np.asarray(label)
    else:
        vol, lab = _read_pair(name, Path(image), Path(label))
        # The messages below name the file too, relative to the dataset's folder: the image (imagesTr/NAME) or,
        # for what is wrong in the label map, the label file (labelsTr/NAME).
        who = f"{name!r} ({shown_path(image, Path(image).parent.parent)})"
        label_who = f"{name!r} ({shown_path(label, Path(label).parent.parent)})"
    if vol.ndim != 3:
        raise invalid(f"volume {who} dimensions", vol.shape, "a 3-D volume X x Y x Z (one modality)",
                      "use a single-modality task or extract one channel", cls=DataError)
    if vol.shape != lab.shape:
        raise invalid(f"volume {who} label map shape", lab.shape, f"the image's shape {vol.shape}",
                      "pair each image with its own label map (same voxel grid)", cls=DataError)
    # A NaN or infinite voxel would pass the window's clip (or spoil the percentile scaling) and reach training.
    for what, arr, named in (("image", vol, who), ("label map", lab, label_who)):
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr)
            if bad.any():
                i, j, k = (int(v) for v in np.argwhere(bad)[0])
                raise DataError(f"volume {named}: its {what} holds a non-finite voxel value ({float(arr[i, j, k])} "
                                f"at voxel {i}, {j}, {k} in RAS+ voxel order). Fix: replace the non-finite values, "
                                "or remove the volume from imagesTr/ and labelsTr/.")
    values = np.unique(lab)
    fractional = [v for v in values.tolist() if v != int(v)]
    if fractional:
        shown = ", ".join(f"{v:.6g}" for v in fractional[:5]) + (f" and {len(fractional) - 5} more"
                                                                  if len(fractional) > 5 else "")
        raise DataError(f"volume {label_who}: its label map must hold integers (class indices), got {shown}: it was "
                        "probably resampled with linear or spline interpolation. Fix: resample the label map with "
                        "nearest-neighbour interpolation (or round it to the nearest class).")
    bad = [int(v) for v in values.tolist() if not 0 <= v < n_classes]
    if bad:
        raise invalid(f"volume {label_who} label values", bad[:5], f"integers 0..{n_classes - 1} (dataset.json labels)",
                      "fix the label map or add the class to dataset.json's labels", cls=DataError)
    return vol.astype(np.float32, copy=False), lab.astype(np.int64)


def _slices(vols: list[tuple[str, object, object]], members: list[int], image_size: int,
            window: tuple[float, float] | None, label_names: tuple[str, ...], split_name: str,
            background_share: float, rng: np.random.Generator) -> SliceDataset:
    xs, ys, vids, zs = [], [], [], []
    for i in members:
        name, image, label = vols[i]
        vol, lab = _load_pair(name, image, label, len(label_names))
        if window is not None:
            unit = (np.clip(vol, *window) - window[0]) / (window[1] - window[0])
        else:
            lo, hi = np.percentile(vol, [0.5, 99.5])
            unit = np.clip((vol - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        fg = lab.reshape(-1, lab.shape[2]).max(axis=0) > 0
        keep = fg | (rng.random(lab.shape[2]) < background_share) if background_share < 1 else np.ones_like(fg)
        z = np.nonzero(keep)[0]
        if len(z) == 0:
            continue
        # Axial slices: the third voxel axis, as (Z, 1, X, Y) for resizing.
        x = torch.from_numpy(np.ascontiguousarray(unit[:, :, z].transpose(2, 0, 1), dtype=np.float32))[:, None]
        y = torch.from_numpy(np.ascontiguousarray(lab[:, :, z].transpose(2, 0, 1)))[:, None].float()
        if x.shape[-2:] != (image_size, image_size):
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0.0, 1.0)
            y = F.interpolate(y, size=(image_size, image_size), mode="nearest")
        xs.append(x)
        ys.append(y[:, 0].long())
        vids += [name] * len(z)
        zs += z.tolist()
    if not xs:
        empty = torch.zeros((0, 1, image_size, image_size))
        return SliceDataset(empty, torch.zeros((0, image_size, image_size), dtype=torch.int64), label_names,
                            np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64), split_name)
    return SliceDataset(torch.cat(xs), torch.cat(ys), label_names, np.asarray(vids), np.asarray(zs), split_name)


# ----------------------------------------------------------------------------------------------------------------
# demo-ct


def make_demo_ct(n_volumes: int = DEMO_CT_VOLUMES, *, seed: int = 0, size: int = 64,
                 slices: int = DEMO_CT_SLICES) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Synthetic abdominal CT volumes in HU with label maps (0 background, 1 liver, 2 tumour).

    Each volume: air (-1000 HU) around an elliptical body of fat (-100) and soft tissue (40), an ellipsoidal
    "liver" (110 HU, as in the portal venous phase) on one side whose extent varies along z, 0 to 3 spherical
    hypodense lesions inside it (30 HU, radius :data:`DEMO_CT_LESION_RADIUS` in voxels of a 64-voxel grid, scaled
    with ``size``; every fourth volume has none), and Gaussian noise
    (sd 12 HU). Parameters vary per
    volume with the seed. Returns [(volume name, X x Y x Z volume, label map)].
    """
    return _demo_volumes(n_volumes, seed, size=size, slices=slices)


def _demo_volumes(n_volumes: int, seed: int, size: int = 64, slices: int = DEMO_CT_SLICES
                  ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    n_volumes = check_int("n_volumes", n_volumes, minimum=3)
    rng = np.random.default_rng([seed, 2026])
    g = (np.arange(size) + 0.5) / size * 2 - 1  # voxel centres in [-1, 1]
    gz = (np.arange(slices) + 0.5) / slices * 2 - 1
    X, Y, Z = np.meshgrid(g, g, gz, indexing="ij")
    out = []
    for v in range(n_volumes):
        body_a, body_b = rng.uniform(0.75, 0.92), rng.uniform(0.55, 0.7)
        body = (X / body_a) ** 2 + (Y / body_b) ** 2 <= 1
        inner = (X / (body_a - 0.08)) ** 2 + (Y / (body_b - 0.08)) ** 2 <= 1
        vol = np.full(X.shape, -1000.0)
        vol[body] = -100.0
        vol[inner] = 40.0
        cx, cy = rng.uniform(-0.35, -0.2), rng.uniform(-0.15, 0.1)
        ax, ay, az = rng.uniform(0.32, 0.45), rng.uniform(0.28, 0.4), rng.uniform(0.7, 1.0)
        liver = ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 + (Z / az) ** 2 <= 1
        vol[liver] = 110.0
        lab = np.zeros(X.shape, dtype=np.int64)
        lab[liver] = 1
        n_lesions = 0 if v % 4 == 3 else int(rng.integers(1, 4))
        pts = np.argwhere(liver)
        for _ in range(n_lesions):
            c = pts[rng.integers(len(pts))]
            r = rng.uniform(*DEMO_CT_LESION_RADIUS) * size / 64
            ii, jj, kk = np.ogrid[:size, :size, :slices]
            d2 = (ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * size / slices / 4) ** 2
            lesion = (d2 <= r * r) & liver
            vol[lesion] = 30.0
            lab[lesion] = 2
        vol += rng.normal(0, 12.0, size=vol.shape)
        out.append((f"demo-ct-{v:03d}", vol.astype(np.float32), lab))
    return out
