"""Image datasets for training and auditing: the built-in demo, HAM10000, MedMNIST ``.npz`` files, image folders.

``load_splits(name, image_size=..., data_dir=..., seed=...)`` returns :class:`DatasetSplits` (train, val, test),
each an :class:`ImageDataset` with float32 images in [0, 1] of shape N x C x H x W, int64 labels, label names,
subgroup metadata and patient (lesion) identifiers. Nothing is downloaded: every loader reads files the user
already has, and the demo data are generated.

Normalisation
-------------
Models see ``(x - mean) / std`` with a FIXED mean and std per channel (0.5 / 0.5 by default), not statistics of
the training images: a mean computed from private images would itself be an un-noised release of private data
outside the DP-SGD guarantee. The seed paper normalised with the training set's mean and std (section 4.2); this
is the one deliberate difference. The values used are stored in every checkpoint.

Names
-----
``demo``
    Synthetic dermoscopy-like images generated from the seed (no download; see :func:`make_demo`).
``ham10000``
    The official HAM10000 layout: ``HAM10000_metadata.csv`` and ``ISIC_*.jpg`` images in ``data_dir`` or in
    ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/`` below it. The seed paper's binary task (section
    4.1): akiec, bcc, mel = "immediate treatment" (1) against nv, bkl, df, vasc (0), about 20:80; every lesion_id
    stays on one side of the split.
MedMNIST flags (``dermamnist``, ``pathmnist``, ...)
    ``NAME_SIZE.npz`` or ``NAME.npz`` in ``data_dir`` (``train_images``, ``train_labels``, ``val_*``, ``test_*``),
    grey or colour; their own splits and labels are kept.
``folder:PATH``
    A folder of images, with class sub-folders (one class per sub-folder by :func:`class_folder_names`, sorted
    names, numerically when all are integers; images at any depth below a class folder) or without (one class,
    label 0); a seeded split stratified by class. Hidden files, files that are not images and files that do not
    decode are skipped and counted (``DatasetSplits.skipped``); a class left without images is dropped with a note
    (:func:`_drop_empty_classes`).
``dicom:PATH``, ``nifti:PATH``, ``csv:FILE``
    Hospital layouts (:mod:`dpaudit.medical`): DICOM trees, NIfTI volumes cut into slices, CSV manifests; split by
    patient, identifiers pseudonymised.

Pixel values are mapped to [0, 1] by the documented rules of :mod:`dpaudit.images` (PNG, JPEG, TIFF, ...),
:mod:`dpaudit.dicom` and :mod:`dpaudit.nifti`, and :func:`_array_to_unit` (``.npz``). Every loader checks, not
assumes, that no patient, file or identical image content lies on two sides of the split.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from dpaudit.config import (
    DEMO_DEFAULT_SIZE,
    PRIVACY_UNIT_CHOICES,
    PRIVACY_UNITS,
    ImagesPerUnit,
    PrivacyUnit,
    data_loading_notes,
    parse_window,
)
from dpaudit.errors import DataError, check_int, check_probability, invalid, naming_file, shown_path
from dpaudit.identifiers import age_band, age_group, age_in_years, age_note
from dpaudit.images import (
    BROKEN_LINK,
    IMAGE_EXTENSIONS,
    SKIP_LOG,
    Pixels,
    UnreadableImageError,
    broken_link_why,
    channels_note,
    dataset_channels,
    dataset_digests,
    is_broken_link,
    per_file_lines,
    probe_channels,
    probe_size,
    read_image,
    skipped_entry,
    skipped_unreadable,
    to_unit_range,
    walk,
)
from dpaudit.memory import DECODE_FIX, check_image_size, check_images_fit, decode_workers
from dpaudit.tables import RowKey, read_table

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "HAM10000_IMMEDIATE",
    "MEDMNIST_FLAGS",
    "PRIVACY_UNITS",
    "PRIVACY_UNIT_CHOICES",
    "DatasetSplits",
    "ImageDataset",
    "ImagesPerUnit",
    "PrivacyUnit",
    "age_band",
    "check_data_options",
    "check_demo_size",
    "class_folder_names",
    "dataset_choices",
    "load_splits",
    "loading_notes",
    "make_demo",
    "normalization",
    "parse_window",
    "privacy_unit",
    "require_classes",
]

#: Fixed per-channel normalisation (not computed from private data; see the module docstring).
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5

#: HAM10000 diagnoses merged into "immediate treatment" by the seed paper (section 4.1, table in the appendix).
HAM10000_IMMEDIATE = frozenset({"akiec", "bcc", "mel"})
HAM10000_NOT_IMMEDIATE = frozenset({"nv", "bkl", "df", "vasc"})
HAM10000_REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
HAM10000_LABEL_NAMES = ("not immediate", "immediate treatment")

#: The 2D MedMNIST v2 flags (Yang et al., Scientific Data 2023). Label names are given where MedMNIST's INFO lists
#: them and they are short; otherwise classes are named by their index.
MEDMNIST_FLAGS = (
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
    "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)
_MEDMNIST_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal, benign"),
}



def normalization(in_channels: int, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The fixed per-channel (mean, std) used to normalise inputs (independent of the data, see module docs)."""
    return (float(mean),) * in_channels, (float(std),) * in_channels


class LabelledImages:
    """What every split of images has, one definition for :class:`ImageDataset` and the segmentation
    :class:`dpaudit.volumes.SliceDataset`: its length, (image, label) items, the image shape and the class count."""

    images: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True, eq=False)
class ImageDataset(LabelledImages):
    """One split of an image classification dataset, held in memory.

    Attributes
    ----------
    images:
        float32 tensor N x C x H x W with values in [0, 1] (not normalised).
    labels:
        int64 tensor of N class indices.
    label_names:
        Name of each class index.
    groups:
        Subgroup metadata: a name (e.g. ``"sex"``, ``"age_band"``) to an array of N strings.
    patient_ids:
        N identifiers of the patient or lesion each image belongs to (HAM10000: lesion_id). Images sharing one
        never straddle splits. The loaders give patients linked by identical images (one export copied under
        another PatientID) one id: they are one privacy unit.
    name:
        Dataset name (``demo``, ``ham10000``, a MedMNIST flag, ``folder:PATH``) and the split, e.g.
        ``"demo/train"``.
    content_ids:
        N identifiers of each image's decoded content (:func:`dpaudit.images.content_id`: its pixels at full
        resolution; a DICOM frame's modality values; a NIfTI volume's values and the slice): copies
        of one image share one; ``""`` where unknown (counted as distinct). With the image as the privacy unit, a
        content held twice in training is one record trained twice (see :func:`privacy_unit`).

    Indexing (``ds[i]``) gives ``(image, label)`` as a torch ``Dataset`` does.
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    groups: Mapping[str, np.ndarray] = field(default_factory=dict)
    patient_ids: np.ndarray | None = None
    name: str = ""
    content_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.float32:
            raise DataError(f"{self.name or 'dataset'}: images must be a float32 tensor N x C x H x W, "
                            f"got {getattr(images, 'dtype', type(images).__name__)} of shape "
                            f"{tuple(getattr(images, 'shape', ()))}.")
        n = images.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
            raise DataError(f"{self.name or 'dataset'}: labels must be a tensor of {n} class indices, got shape "
                            f"{tuple(getattr(labels, 'shape', ()))}.")
        if n and not bool(torch.isfinite(images).all()):
            i = int(torch.nonzero(~torch.isfinite(images.reshape(n, -1)).any(dim=1))[0, 0])
            raise DataError(f"{self.name or 'dataset'}: image {i} holds a non-finite pixel value. Fix: replace the "
                            "non-finite values in the source file, or remove it.")
        object.__setattr__(self, "labels", labels.to(torch.int64))
        object.__setattr__(self, "label_names", tuple(str(s) for s in self.label_names))
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.label_names)):
            raise DataError(f"{self.name or 'dataset'}: labels must lie in [0, {len(self.label_names) - 1}] "
                            f"(one per label name), got values up to {int(self.labels.max())}.")
        ids = np.array([f"{self.name or 'image'}-{i}" for i in range(n)]) if self.patient_ids is None \
            else np.asarray(self.patient_ids).astype(str)
        if ids.shape != (n,):
            raise DataError(f"{self.name or 'dataset'}: patient_ids must hold {n} entries, got {ids.shape}.")
        object.__setattr__(self, "patient_ids", ids)
        content = np.full(n, "", dtype=object) if self.content_ids is None else np.asarray(self.content_ids, object)
        if content.shape != (n,):
            raise DataError(f"{self.name or 'dataset'}: content_ids must hold {n} entries, got {content.shape}.")
        object.__setattr__(self, "content_ids", content.astype(str))
        groups = {}
        for key, values in dict(self.groups).items():
            arr = np.asarray(values).astype(str)
            if arr.shape != (n,):
                raise DataError(f"{self.name or 'dataset'}: group {key!r} must hold {n} entries, got {arr.shape}.")
            groups[str(key)] = arr
        object.__setattr__(self, "groups", groups)

    def __repr__(self) -> str:  # never print pixel data
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, shape={self.image_shape}, "
                f"classes={self.label_names}, groups={sorted(self.groups)})")

    def class_counts(self) -> np.ndarray:
        """Number of images per class index."""
        return np.bincount(self.labels.numpy(), minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> ImageDataset:
        """The images at ``indices`` (in that order), with their labels and metadata."""
        idx = np.asarray(indices, dtype=np.int64)
        t = torch.from_numpy(idx)
        return ImageDataset(self.images[t], self.labels[t], self.label_names,
                            {k: v[idx] for k, v in self.groups.items()}, self.patient_ids[idx],
                            self.name if name is None else name, self.content_ids[idx])

    def concat(self, other: ImageDataset, name: str | None = None) -> ImageDataset:
        """This split followed by ``other`` (e.g. canary images appended to a training set).

        Both must have the same image shape and label names; groups present in only one side are filled with
        ``"unknown"``.
        """
        if other.image_shape != self.image_shape or other.label_names != self.label_names:
            raise DataError(f"cannot join {other.name!r} {other.image_shape} {other.label_names} to "
                            f"{self.name!r} {self.image_shape} {self.label_names}: shapes and label names must "
                            "match.")
        keys = sorted(set(self.groups) | set(other.groups))

        def col(ds: ImageDataset, k: str) -> np.ndarray:
            return ds.groups.get(k, np.full(len(ds), "unknown"))

        return ImageDataset(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]),
                            self.label_names, {k: np.concatenate([col(self, k), col(other, k)]) for k in keys},
                            np.concatenate([self.patient_ids, other.patient_ids]),
                            self.name if name is None else name,
                            np.concatenate([self.content_ids, other.content_ids]))


def privacy_unit(splits: DatasetSplits, requested: str | None = None, *, given_k: int | None = None) -> PrivacyUnit:
    """Resolve ``--privacy-unit``: by default ``patient`` when the data carry patient (or lesion) ids, else
    ``image``; ``patient`` on data without ids is an error (a manifest's ``patient_id`` column supplies them).

    With the image as the unit, a content held more than once in the training split (copies of one file) is refused:
    it trains as several records, so a per-image (k = 1) statement would not hold for it. ``given_k`` (a k given
    by hand, ``--records-per-patient``) replaces that 1 in the check."""
    dist = splits.images_per_unit()
    has_ids = splits.unit != "image"
    if requested is not None and requested not in PRIVACY_UNIT_CHOICES:
        raise invalid("privacy_unit", requested, f"one of {', '.join(map(str, PRIVACY_UNIT_CHOICES))}",
                      "pass --privacy-unit patient or --privacy-unit image")
    if requested == "patient" and not has_ids:
        raise invalid("privacy_unit", requested, f"'image' for {splits.name} (its images carry no patient ids)",
                      "for patient-level DP give a CSV manifest with a patient_id column (--dataset csv:FILE); "
                      "for image-level DP pass --privacy-unit image",
                      cls=DataError)
    unit = requested or ("patient" if has_ids else "image")
    if unit == "image":
        repeats, most = training_copies(splits)
        if most > (given_k or 1):
            # One content trained `most` times is one record moving `most` times: a per-image epsilon (k = 1)
            # would not hold for it. Per patient the copies are counted in k (the loaders merge linked patients).
            alt = ("leave out --privacy-unit image (per patient, k counts the copies), or "
                   if has_ids and given_k is None else f"pass --records-per-patient {most} or more, or "
                   if given_k is not None else "")
            examples = getattr(splits, "copy_examples", ())
            sets = getattr(splits, "copy_sets", 0) or len(examples)
            shown = "; ".join(" = ".join(group) for group in examples)
            more = f" and {sets - len(examples)} more set(s)" if sets > len(examples) else ""
            which = (f": {sets} set(s) of copies, e.g. {shown}{more}" if examples else
                     " (the loader's note counts them)")
            raise DataError(f"{splits.name}: with the image as the privacy unit each image must train once, but "
                            f"{repeats} training image(s) repeat the content of another (up to {most} copies of "
                            f"one image): a per-image epsilon would not hold for them (their k is {most}, not {given_k or 1}). "
                            f"Fix: {alt}keep one file of each set of copies and remove the others from the data{which}.")
    k = max(1, dist.max) if unit == "patient" else 1
    return PrivacyUnit(unit, splits.unit, k, dist, "option" if requested else "default")


def training_copies(splits: Any) -> tuple[int, int]:
    """(images of the training split whose content repeats another's, the most copies of one content there):
    (0, 1) when every training image is distinct or the contents are unknown."""
    ids = getattr(splits.train, "content_ids", None)
    ids = np.asarray([] if ids is None else ids, dtype=str)
    ids = ids[ids != ""]
    if not ids.size:
        return 0, 1
    _, counts = np.unique(ids, return_counts=True)
    return int((counts - 1).sum()), int(counts.max())


def loading_notes(splits: Any) -> list[str]:
    """What the loader passed over or decided, one line each, for the console (counts only, no identifiers):
    :func:`dpaudit.config.data_loading_notes`, the one wording every command and the report use. ``splits``: a
    classifier's or a segmentation's, whichever records them."""
    return data_loading_notes(getattr(splits, "skipped", None) or {}, getattr(splits, "notes", ()) or ())


def require_classes(splits: DatasetSplits, what: str) -> None:
    """Training needs at least two classes, each present in the training split: a one-class task trains to
    "accuracy 1.0, loss 0.0" and says nothing. (The attack needs no labels; see ``dpaudit attack``.)"""
    present = np.flatnonzero(splits.train.class_counts())
    if splits.num_classes < 2 or len(present) < 2:
        names = [splits.label_names[i] for i in present]
        # The loader's skipped files are often the cause (a labels file that covers only some patients): say so,
        # with counts only, and point at the labels file first when files were left out for want of a label.
        skipped = f" ({_describe_skipped(splits.skipped)})" if splits.skipped and sum(splits.skipped.values()) else ""
        unlabelled = splits.skipped.get("not in the labels file", 0) if splits.skipped else 0
        fix = (f"give every file a label in the --labels file ({unlabelled} file(s) are not in it), or "
               if unlabelled else "")
        raise DataError(f"{what} needs at least 2 classes in the training split, got {len(present)} "
                        f"({', '.join(names) or 'none'}) in {splits.name}{skipped}. Fix: {fix}pass a dataset with "
                        "one sub-folder per class (folder:PATH/CLASS/*.png), or a CSV manifest with a label column; "
                        "a folder without labels can still be attacked "
                        "(dpaudit attack --arch resnet9 --dataset folder:PATH).")


def _check_disjoint(name: str, parts: Sequence[ImageDataset]) -> None:
    """No patient (lesion, image) id on two sides of a split: checked, not assumed. The message holds no id."""
    seen: dict[str, int] = {}
    for side, part in enumerate(parts):
        for pid in np.unique(part.patient_ids):
            other = seen.setdefault(str(pid), side)
            if other != side:
                raise DataError(f"{name}: one patient (or lesion) has images in two splits ({parts[other].name} "
                                f"and {part.name}); splits must be patient-disjoint. Fix: report this as a bug "
                                "(the loaders split by patient).")


class SplitsShape:
    """What every set of splits reports of its training split (shape, channels, classes), one definition for the
    classification and the segmentation splits."""

    train: Any

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def in_channels(self) -> int:
        return self.train.image_shape[0]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.train.label_names


@dataclass(frozen=True, eq=False)
class DatasetSplits(SplitsShape):
    """Train, validation and test splits of one dataset, with the fixed normalisation models use.

    ``mean`` and ``std`` default to :data:`DEFAULT_MEAN` / :data:`DEFAULT_STD` per channel. ``unit`` says what
    the ``patient_ids`` stand for, the privacy unit the data support: ``"patient"`` (DICOM PatientID, a
    ``patient_id`` column), ``"subject"`` (BIDS ``sub-<label>`` in the path), ``"lesion"`` (HAM10000's lesion_id:
    it has no patient id), ``"volume"`` (each NIfTI volume or multi-image file its own patient: no ids),
    ``"study"`` (DICOM StudyInstanceUID without a usable PatientID) or ``"image"`` (MedMNIST, plain folders; the
    demo's synthetic lesions are treated as lesions). ``skipped`` counts the files a loader
    passed over, by reason (``"hidden"``, ``"not an image"``, ``"unreadable"``, ...); ``notes`` says what else
    the loader decided (e.g. a CSV read as cp1252).
    """

    #: The task these splits are for (SegmentationSplits: "segmentation"); not a field.
    task: ClassVar[str] = "classification"

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    name: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    unit: str = "image"
    skipped: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: Up to 3 sets of the files (named as the user wrote them, quoted: a path relative to the dataset's root, a
    #: manifest's path and data row; for the console only: never written, they may carry patient names) whose
    #: images are copies of one another in the training split, and how many such sets there are: named by
    #: :func:`privacy_unit` when the image unit refuses them.
    copy_examples: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    copy_sets: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        shapes = {self.train.image_shape, self.val.image_shape, self.test.image_shape}
        names = {self.train.label_names, self.val.label_names, self.test.label_names}
        if len(shapes) != 1 or len(names) != 1:
            raise DataError(f"{self.name}: splits disagree on image shape {sorted(shapes)} or label names.")
        c = self.train.image_shape[0]
        m, s = normalization(c)
        object.__setattr__(self, "mean", tuple(float(v) for v in (self.mean or m)))
        object.__setattr__(self, "std", tuple(float(v) for v in (self.std or s)))
        if len(self.mean) != c or len(self.std) != c or min(self.std) <= 0:
            raise invalid("std", self.std, f"{c} positive values (one per channel) with {c} means")
        if self.unit not in PRIVACY_UNITS:
            raise invalid("unit", self.unit, f"one of {', '.join(map(str, PRIVACY_UNITS))}", cls=DataError)
        object.__setattr__(self, "skipped", {str(k): int(v) for k, v in dict(self.skipped).items() if v})
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        if self.unit != "image":  # image-level ids are per-split indices or files (checked by the loaders)
            _check_disjoint(self.name, (self.train, self.val, self.test))

    def images_per_unit(self) -> ImagesPerUnit:
        """How many training images each privacy unit (patient, lesion or image) contributes."""
        _, counts = np.unique(self.train.patient_ids, return_counts=True)
        hist = np.bincount(counts) if counts.size else np.zeros(1, dtype=np.int64)
        return ImagesPerUnit(self.unit, int(counts.size), int(counts.max()) if counts.size else 0,
                             float(counts.mean()) if counts.size else 0.0,
                             tuple((int(k), int(v)) for k, v in enumerate(hist) if v and k))

    def __repr__(self) -> str:
        return (f"DatasetSplits(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
                f"test={len(self.test)}, shape={self.image_shape}, classes={self.label_names})")


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def dataset_choices() -> list[str]:
    """Names :func:`load_splits` accepts."""
    return ["demo", "ham10000", *MEDMNIST_FLAGS, "folder:PATH", "dicom:PATH", "nifti:PATH", "csv:FILE"]


def _unknown_dataset(name: object) -> DataError:
    """The error for a --dataset that names nothing: every name, the segmentation ones with the commands that take
    them (this loader serves the classification-only commands and train, attack and profile alike)."""
    from dpaudit.volumes import SEGMENTATION_DATASETS

    return invalid("dataset", name, f"one of {', '.join(dataset_choices())} (classification), or for segmentation (dpaudit "
                   f"train, attack and profile) one of {', '.join(map(str, SEGMENTATION_DATASETS))}",
                   "pass --dataset demo (built in), ham10000 or a MedMNIST flag with --data-dir, folder:PATH, "
                   "dicom:PATH, nifti:PATH or csv:FILE; segmentation: demo-ct (built in) or msd:PATH",
                   cls=DataError)


def load_splits(name: str, *, data_dir: str | Path | None = None, image_size: int, seed: int = 0,
                max_images: int | None = None, val_fraction: float = 0.15, test_fraction: float = 0.15,
                labels: str | Path | None = None, window: str | tuple[float, float] | None = None,
                slice_axis: str = "axial") -> DatasetSplits:
    """Load a dataset by name and split it into train, validation and test.

    Parameters
    ----------
    name:
        ``demo``, ``ham10000``, a MedMNIST flag (``dermamnist``, ...), ``folder:PATH``, ``dicom:PATH``,
        ``nifti:PATH`` or ``csv:FILE`` (a relative PATH is taken below ``data_dir`` when given).
    data_dir:
        Folder holding the files (HAM10000, MedMNIST). Not needed for the others.
    image_size:
        Images are resized to ``image_size`` x ``image_size`` (bilinear with antialiasing).
    seed:
        Seeds the demo generator and the split (HAM10000, folders). MedMNIST keeps its own splits.
    max_images:
        The demo's total size (default 2000). For the other datasets, at most this many images in total: a seeded
        random selection (of whole lesions for HAM10000) made before decoding, so that quick runs stay quick.
    val_fraction, test_fraction:
        Shares of the images in the validation and test splits, where dpaudit makes the split.
    labels:
        ``dicom:`` and ``nifti:`` only: a CSV file of labels (see :func:`_read_labels`); default: the first-level
        sub-folder names (``nifti:`` also looks for ``labels.csv`` in the folder).
    window:
        ``LOW,HIGH`` in modality units (Hounsfield units for CT), mapped to 0 and 1 (``dicom:``, ``nifti:``,
        ``csv:``); overrides the files' own VOI LUT or window.
    slice_axis:
        ``axial`` (default), ``coronal`` or ``sagittal``: how NIfTI volumes are cut into 2-D images.
    """
    image_size = check_image_size(image_size, "pass --image-size 28, 64 or 224")
    if max_images is not None:
        max_images = check_int("max_images", max_images, minimum=3, fix="pass at least 3 images (one per split)")
    val_fraction = check_probability("val_fraction", val_fraction, open_low=False)
    test_fraction = check_probability("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise invalid("val_fraction + test_fraction", val_fraction + test_fraction, "below 1",
                      "leave some images for training")
    fracs = (val_fraction, test_fraction)
    if not isinstance(name, str) or not name:
        raise _unknown_dataset(name)
    check_data_options(name, data_dir=data_dir, labels=labels, window=window, slice_axis=slice_axis)
    with per_file_lines():
        return _load(name, data_dir, image_size, seed, max_images, fracs, labels, window, slice_axis)


def _load(name: str, data_dir: str | Path | None, image_size: int, seed: int, max_images: int | None,
          fracs: tuple[float, float], labels: str | Path | None, window: str | tuple[float, float] | None,
          slice_axis: str) -> DatasetSplits:
    """:func:`load_splits` after its checks: the loader of ``name``."""
    if name == "demo":
        check_demo_size(max_images)
        return make_demo(max_images or DEMO_DEFAULT_SIZE, image_size=image_size, seed=seed, fractions=fracs)
    if name == "ham10000":
        return _load_ham10000(_need_dir(data_dir, name), image_size, seed, max_images, fracs)
    if name.lower() in MEDMNIST_FLAGS:
        return _load_medmnist(name.lower(), _need_dir(data_dir, name), image_size, seed, max_images)
    prefix, _, rest = name.partition(":")
    if prefix in ("folder", "dicom", "nifti", "csv") and rest:
        path = Path(rest).expanduser()
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        win = parse_window(window)
        if prefix == "folder":
            return _load_folder(path, image_size, seed, max_images, fracs)
        from dpaudit.medical import load_csv_manifest, load_dicom_tree, load_nifti_folder

        if prefix == "dicom":
            return load_dicom_tree(path, image_size, seed, max_images, fracs, labels, win)
        if prefix == "nifti":
            return load_nifti_folder(path, image_size, seed, max_images, fracs, labels, win, slice_axis)
        return load_csv_manifest(path, image_size, seed, max_images, fracs, win, slice_axis)
    from dpaudit.volumes import is_segmentation_dataset

    if is_segmentation_dataset(name):
        # A segmentation dataset reached a classification-only path (mia audit, federated): say which it is.
        raise invalid("dataset", name, f"a classification dataset here ({name} is a segmentation dataset, which "
                      "dpaudit train, attack and profile take)", "pass --dataset demo (built in) or another "
                      "classification dataset to this command", cls=DataError)
    raise _unknown_dataset(name)


#: The data options and the datasets they apply to (``--dataset`` names; ``PREFIX:`` for the path forms).
_WINDOW_DATASETS = ("dicom:", "nifti:", "csv:", "demo-ct", "msd:")
_LABELS_DATASETS = ("dicom:", "nifti:")
#: Where NIfTI files are cut along --slice-axis: a NIfTI folder, and a manifest whose rows may name NIfTI files.
_SLICE_AXIS_DATASETS = ("nifti:", "csv:")
_DATA_DIR_DATASETS = ("ham10000", *MEDMNIST_FLAGS, "folder:", "dicom:", "nifti:", "csv:")


def _applies(name: str, datasets: Sequence[str]) -> bool:
    return any(name.startswith(d) if d.endswith(":") else name.lower() == d for d in datasets)


def check_data_options(name: str, *, data_dir: str | Path | None = None, labels: str | Path | None = None,
                       window: object = None, slice_axis: object = None) -> None:
    """Refuse a data option that does not apply to the dataset ``name``: it would be ignored silently (a
    ``--window`` on the demo's 8-bit images, a ``--labels`` file beside a manifest's label column), and a run
    that ignores what the user asked for is not the run they meant (``--background-share`` outside segmentation is
    refused by the training configuration). Unknown names are left to the loaders. ``slice_axis`` other than the
    default ``axial`` is refused where no NIfTI file is cut into slices (``axial`` itself changes nothing anywhere,
    and a configuration cannot tell it typed from the default).

    >>> check_data_options("demo", window="-100,200")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.DataError: --window must be left out for --dataset demo (...), got '-100,200'. Fix: leave out --window.
    """
    if not isinstance(name, str):
        return
    known = _applies(name, ("demo", "demo-ct", "msd:", *_DATA_DIR_DATASETS))
    if not known:
        return
    if window is not None and not _applies(name, _WINDOW_DATASETS):
        raise invalid("--window", window, f"left out for --dataset {name} (it maps DICOM, NIfTI and CT values: "
                      "dicom:, nifti:, csv:, demo-ct and msd:)", "leave out --window", cls=DataError)
    axis = getattr(slice_axis, "value", slice_axis)
    if axis is not None and axis != "axial" and not _applies(name, _SLICE_AXIS_DATASETS):
        raise invalid("--slice-axis", axis, f"left out for --dataset {name} (it cuts NIfTI volumes into 2-D images "
                      "for nifti: and csv:; demo-ct and msd: are cut axially)", "leave out --slice-axis",
                      cls=DataError)
    if labels is not None and not _applies(name, _LABELS_DATASETS):
        where = {"csv": "the manifest's label column", "folder": "the class sub-folders"}.get(
            name.partition(":")[0], "the dataset itself")
        raise invalid("--labels", str(labels), f"left out for --dataset {name} (it is read for dicom:PATH and "
                      f"nifti:PATH; here the labels come from {where})", "leave out --labels", cls=DataError)
    if data_dir is not None and not _applies(name, _DATA_DIR_DATASETS):
        raise invalid("--data-dir", str(data_dir), f"left out for --dataset {name} (it is read for ham10000, "
                      "MedMNIST and the relative paths of folder:, dicom:, nifti: and csv:)",
                      "leave out --data-dir" + ("; give the task folder as msd:PATH" if name.startswith("msd:")
                                                else ""), cls=DataError)


def check_dataset_found(name: str, *, data_dir: str | Path | None = None) -> None:
    """Refuse at once a --dataset that names nothing or points at a folder or file that is not there, with the
    loaders' messages: a command checks this before it claims its --out folder or starts any work (the loaders
    check again, and everything else about the files, when they read them).

    >>> check_dataset_found("folder:/dev/null/images")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.DataError: folder:/dev/null/images: '/dev/null/images' is not an existing folder. Fix: pass ...
    """
    if not isinstance(name, str) or not name:
        raise _unknown_dataset(name)
    if name in ("demo", "demo-ct"):
        return
    if name == "ham10000" or name.lower() in MEDMNIST_FLAGS:
        _need_dir(data_dir, name)
        return
    prefix, _, rest = name.partition(":")
    if prefix not in ("folder", "dicom", "nifti", "csv", "msd") or not rest:
        raise _unknown_dataset(name)
    path = Path(rest).expanduser()
    if not path.is_absolute() and data_dir is not None and prefix != "msd":
        path = Path(data_dir) / path
    if prefix == "csv":
        if not path.is_file():
            raise DataError(f"{name}: {str(path)!r} is not an existing file. Fix: pass --dataset csv:FILE with the "
                            "manifest (columns path,label[,patient_id]).")
    elif not path.is_dir():
        what = {"folder": "the folder of images (class sub-folders optional)",
                "msd": "the Decathlon task folder (dataset.json, imagesTr, labelsTr)"}.get(prefix,
                                                                                     "the folder holding the files")
        raise DataError(f"{name}: {str(path)!r} is not an existing folder. Fix: pass --dataset {prefix}:PATH with "
                        f"{what}.")


def _need_dir(data_dir: str | Path | None, name: str) -> Path:
    if data_dir is None:
        raise invalid("data_dir", None, f"the folder holding the {name} files", "pass --data-dir", cls=DataError)
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise invalid("data_dir", str(data_dir), "an existing folder",
                      f"pass the folder holding the {name} files with --data-dir", cls=DataError)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Splitting


def _grouped_stratified_split(labels: np.ndarray, groups: np.ndarray, fractions: tuple[float, float],
                              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split image indices into (train, val, test) keeping each group on one side, stratified by label.

    A group's label is the largest label among its images (in HAM10000 all images of a lesion share dx). Within
    each label, groups are shuffled and assigned to test, then validation, until each holds its share of that
    label's IMAGES; the rest go to training. Each label with at least 3 groups contributes at least one group to
    every split, and at least one group of every label trains (a label's only group, e.g. one patient, trains).
    """
    uniq, inv = np.unique(groups, return_inverse=True)
    glabel = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(glabel, inv, labels)
    gsize = np.bincount(inv, minlength=len(uniq))
    side = np.zeros(len(uniq), dtype=np.int64)  # 0 train, 1 val, 2 test
    val_frac, test_frac = fractions
    for c in np.unique(glabel):
        members = rng.permutation(np.flatnonzero(glabel == c))
        total = gsize[members].sum()
        cum = np.cumsum(gsize[members])
        before = cum - gsize[members]  # images assigned before this group
        n_test = max(1, int(np.searchsorted(before, test_frac * total, side="left"))) if len(members) >= 3 else 0
        n_val_end = int(np.searchsorted(before, (test_frac + val_frac) * total, side="left"))
        n_val_end = max(n_val_end, n_test + (1 if len(members) >= 3 and val_frac > 0 else 0))
        n_val_end = min(n_val_end, len(members) - 1)  # at least one group of each label trains
        n_test = min(n_test, n_val_end)
        side[members[:n_test]] = 2
        side[members[n_test:n_val_end]] = 1
    img_side = side[inv]
    return tuple(np.flatnonzero(img_side == s) for s in (0, 1, 2))  # type: ignore[return-value]


def _select_groups(groups: np.ndarray, max_images: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of a seeded random selection of whole groups holding at most ``max_images`` images (all if None)."""
    n = len(groups)
    if max_images is None or max_images >= n:
        return np.arange(n)
    uniq, inv = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inv)
    keep = np.zeros(len(uniq), dtype=bool)
    used = 0
    order = rng.permutation(len(uniq))
    for g in order:
        if used + sizes[g] <= max_images:
            keep[g] = True
            used += sizes[g]
    if not used:
        # Every group is larger than max_images (e.g. CT series of hundreds of slices): the first group of the
        # seeded order, cut to max_images images. The split still keeps it on one side.
        return np.flatnonzero(inv == order[0])[:max_images]
    return np.flatnonzero(keep[inv])


def _merge_identical(groups: np.ndarray, digests: Sequence[str], labels: np.ndarray, sources: Sequence[str],
                     name: str, label_names: Sequence[str]) -> tuple[np.ndarray, int, int]:
    """Merge groups in which images with identical stored content share a group (union-find over the group ids and
    the contents): copies can never straddle a split, and patients linked by a copy (one export re-pseudonymised
    under another PatientID: same pixels, whatever its UIDs) are one privacy unit, whose k counts the images of
    all of them.

    Returns the merged group keys, the number of images whose content repeats an earlier one and the number of
    groups that were joined to another. Identical content under two different labels is an error naming both files
    (``sources``: as the user wrote them) and both labels (as the class names the user wrote).
    """
    first: dict[str, int] = {}
    parent = {g: g for g in np.unique(groups).tolist()}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    repeats = joined = 0
    for i, d in enumerate(digests):
        if not d:
            continue
        j = first.setdefault(d, i)
        if j == i:
            continue
        repeats += 1
        if labels[i] != labels[j]:
            raise DataError(f"{name}: {sources[j]} and {sources[i]} hold identical images under different labels "
                            f"({label_names[int(labels[j])]!r} and {label_names[int(labels[i])]!r}). Fix: remove one "
                            "of them or correct its label.")
        a, b = root(str(groups[i])), root(str(groups[j]))
        if a != b:
            parent[max(a, b)] = min(a, b)
            joined += 1
    merged = np.array([root(str(g)) for g in groups.tolist()]) if repeats else np.asarray(groups)
    return merged, repeats, joined


def _split_and_check(images: torch.Tensor, labels: np.ndarray, label_names: Sequence[str],
                     groups: Mapping[str, np.ndarray], patient_ids: np.ndarray, name: str,
                     fractions: tuple[float, float], rng: np.random.Generator, *, unit: str,
                     digests: Sequence[str] | None = None, sources: Sequence[str] | None = None,
                     skipped: Mapping[str, int] | None = None, notes: Sequence[str] = ()) -> DatasetSplits:
    """Split by patient (merged with identical content) and check that no file or content lies on two sides.

    The merged groups become the ``patient_ids``: patients linked by identical images are one privacy unit for k
    as for the split (a per-patient k counted per PatientID would miss the linked patient's copies)."""
    patient_ids = np.asarray(patient_ids).astype(str)
    # How the messages name each image's file (quoted, as the user wrote it: dpaudit.errors.shown_path, or a
    # manifest's path and data row), one name per file: also what tells that two images come from one file.
    sources = list(sources) if sources is not None else [f"image {i}" for i in range(len(labels))]
    split_groups, repeats, joined = (patient_ids, 0, 0) if digests is None else _merge_identical(
        patient_ids, digests, labels, sources, name, label_names)
    parts = _grouped_stratified_split(labels, split_groups, fractions, rng)
    for key, values in (("file", sources), ("image content", digests)):
        if values is None:
            continue
        side_of: dict[str, int] = {}
        for side, idx in enumerate(parts):
            for i in idx:
                v = values[i]
                if v and side_of.setdefault(v, side) != side:
                    raise DataError(f"{name}: the same {key} ({sources[i]}) lies in two splits. Fix: report this "
                                    "as a bug (the loaders split by patient and content).")
    notes = list(notes)
    if repeats:
        linked = ""
        if joined and unit != "image":
            members: dict[str, set[str]] = {}
            for p, m in zip(patient_ids.tolist(), split_groups.tolist(), strict=True):
                members.setdefault(m, set()).add(p)
            sets = [len(v) for v in members.values() if len(v) > 1]
            who = {"lesion": "lesion ids", "study": "studies", "subject": "subjects"}.get(unit, "patient ids")
            linked = (f"; {sum(sets)} {who} share identical images and count as {len(sets)} privacy unit(s) (k "
                      "counts their images together: e.g. one person's export copied under another PatientID)")
        notes.append(f"{repeats} image(s) repeat the content of another file; each set of copies was kept in one "
                     f"split{linked}")
    splits = _splits_from(images, labels, label_names, groups, split_groups, name, parts, unit=unit,
                          skipped=skipped, notes=tuple(notes), content_ids=digests)
    if repeats:  # the sets of copies in training, for privacy_unit's refusal with the image unit
        held: dict[str, list[str]] = {}
        for i in parts[0].tolist():
            if digests[i]:
                held.setdefault(digests[i], []).append(sources[i])
        sets = [tuple(v) for v in held.values() if len(v) > 1]
        splits = replace(splits, copy_examples=tuple(sets[:3]), copy_sets=len(sets))
    return splits


def _splits_from(images: torch.Tensor, labels: np.ndarray, label_names: Sequence[str],
                 groups: Mapping[str, np.ndarray], patient_ids: np.ndarray, name: str,
                 parts: tuple[np.ndarray, np.ndarray, np.ndarray], *, unit: str = "image",
                 skipped: Mapping[str, int] | None = None, notes: tuple[str, ...] = (),
                 content_ids: Sequence[str] | None = None) -> DatasetSplits:
    full = ImageDataset(images, torch.as_tensor(labels, dtype=torch.int64), tuple(label_names), groups,
                        patient_ids, name, None if content_ids is None else np.asarray(list(content_ids), object))
    train, val, test = (full.subset(p, f"{name}/{s}") for p, s in zip(parts, ("train", "val", "test"), strict=True))
    if len(train) == 0:
        raise DataError(f"{name}: the training split is empty ({len(full)} images in total). Fix: provide more "
                        "images or lower the validation and test fractions.")
    return DatasetSplits(train, val, test, name, unit=unit, skipped=dict(skipped or {}), notes=notes)


# ----------------------------------------------------------------------------------------------------------------
# Demo data


def check_demo_size(max_images: int | None, flag: str = "--max-images") -> None:
    """The demo has :data:`DEMO_DEFAULT_SIZE` images: more is refused (it would be generated, slowly, while the
    documentation promises that size).

    >>> check_demo_size(5000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpaudit.errors.DataError: --max-images must be at most 2000 for --dataset demo (its size), got 5000. Fix: ...
    """
    if max_images is not None and max_images > DEMO_DEFAULT_SIZE:
        raise invalid(flag, max_images, f"at most {DEMO_DEFAULT_SIZE} for --dataset demo (its size)",
                      f"pass {flag} {DEMO_DEFAULT_SIZE} or less, or leave it out (all {DEMO_DEFAULT_SIZE}); for "
                      "more images use your own data (folder:PATH, dicom:PATH, ...)", cls=DataError)


def make_demo(n_images: int = DEMO_DEFAULT_SIZE, *, image_size: int = 64, seed: int = 0,
              fractions: tuple[float, float] = (0.15, 0.15)) -> DatasetSplits:
    """Synthetic dermoscopy-like images: SYNTHETIC data for demos and tests, not a medical dataset.

    Each synthetic lesion is a pigmented blob on a textured skin-toned background, photographed 1 to 4 times
    (rotated, shifted, re-lit, fresh sensor noise); all views of one lesion share a ``patient_id`` and stay in one
    split. About 20% of lesions are class 1 ("immediate treatment", as the seed paper's HAM10000 task) and are
    drawn with, on average, a more irregular border, more asymmetry and more colour variegation (the ABCD cues of
    dermoscopy); the class distributions overlap, so the task is learnable but not trivial. Metadata ``sex`` and
    ``age_band`` are synthetic too (class 1 is older on average). Deterministic given ``seed``; about 0.5 s for
    2000 images at 64 x 64 on one core.
    """
    n_images = check_int("n_images", n_images, minimum=3)
    size = check_image_size(image_size, "pass --image-size 28, 64 or 224")
    check_images_fit(n_images, 3, size, name="demo")
    rng = np.random.default_rng([seed, 0xDE30])
    # Lesions and their number of views (HAM10000 has 1.34 images per lesion on average).
    views = []
    while sum(views) < n_images:
        views.append(1 + int(rng.binomial(3, 0.15)))
    views[-1] -= sum(views) - n_images
    n_les = len(views)
    lesion_of = np.repeat(np.arange(n_les), views)
    y_les = (rng.random(n_les) < 0.2).astype(np.int64)
    mal = y_les.astype(np.float64)
    # Per-lesion appearance (ABCD cues): class means differ, spreads overlap.
    les = {
        "r0": rng.uniform(0.32, 0.52, n_les) + 0.05 * mal,
        "irreg": np.abs(rng.normal(0.04 + 0.10 * mal, 0.035)),       # border irregularity (harmonics 3..8)
        "asym": np.abs(rng.normal(0.03 + 0.14 * mal, 0.05)),          # first harmonic: egg-shaped asymmetry
        "varieg": np.clip(rng.normal(0.08 + 0.47 * mal, 0.14), 0, 1),  # share of a second colour
        "phase": rng.uniform(0, 2 * np.pi, (n_les, 9)),
        "harm": rng.normal(0, 1, (n_les, 6)) / np.arange(3, 9) ** 0.7,
        "brown": rng.uniform(0.55, 1.15, n_les),
        "second": rng.integers(0, 3, n_les),
        "skin": rng.uniform(0.72, 1.02, n_les),
        "mix_freq": rng.uniform(1.0, 3.0, (n_les, 2, 2)),
        "mix_phase": rng.uniform(0, 2 * np.pi, (n_les, 2)),
    }
    les["harm"] /= np.linalg.norm(les["harm"], axis=1, keepdims=True)
    sex_les = np.where(rng.random(n_les) < 0.54, "male", "female")
    age_les = np.clip(np.round(rng.normal(46 + 16 * mal, 15) / 5) * 5, 5, 85)

    images = np.empty((n_images, 3, size, size), dtype=np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    v, u = np.meshgrid(grid, grid, indexing="ij")
    skin_rgb = np.array([0.86, 0.66, 0.55], dtype=np.float32)
    brown_rgb = np.array([0.45, 0.28, 0.17], dtype=np.float32)
    second_rgb = np.array([[0.14, 0.09, 0.08], [0.36, 0.40, 0.50], [0.62, 0.26, 0.25]], dtype=np.float32)
    chunk = max(1, 2 ** 20 // (size * size))
    for start in range(0, n_images, chunk):
        sl = slice(start, min(n_images, start + chunk))
        li = lesion_of[sl]
        m = len(li)
        f32 = np.float32
        rot = rng.uniform(0, 2 * np.pi, m).astype(f32)[:, None, None]
        cx, cy = (rng.normal(0, 0.06, (2, m)).astype(f32)[..., None, None])
        light = rng.uniform(0.9, 1.1, m).astype(f32)[:, None, None, None]
        dx, dy = u[None] - cx, v[None] - cy
        rho = np.sqrt(dx * dx + dy * dy)
        phi = np.arctan2(dy, dx) + rot
        ph = les["phase"][li].astype(f32)
        border = 1 + les["asym"][li, None, None].astype(f32) * np.cos(phi + ph[:, 0, None, None])
        for k in range(6):  # harmonics 3..8
            border += (les["irreg"][li] * les["harm"][li, k]).astype(f32)[:, None, None] * np.cos(
                (k + 3) * phi + ph[:, k + 1, None, None])
        radius = les["r0"][li].astype(f32)[:, None, None] * border
        soft = 0.04 * les["r0"][li].astype(f32)[:, None, None]
        mask = 0.5 - 0.5 * np.tanh(np.clip((rho - radius) / (2 * soft), -15, 15))
        # Colour variegation: a smooth field decides where the second colour shows.
        fr, mp = les["mix_freq"][li].astype(f32), les["mix_phase"][li].astype(f32)
        field_ = (np.sin(np.pi * (fr[:, 0, 0, None, None] * u + fr[:, 0, 1, None, None] * v) + mp[:, 0, None, None])
                  + np.sin(np.pi * (fr[:, 1, 0, None, None] * v - fr[:, 1, 1, None, None] * u) + mp[:, 1, None, None]))
        varieg = les["varieg"][li].astype(f32)[:, None, None]
        mix = varieg * (0.5 + 0.5 * np.tanh(2 * (field_ + 2 * varieg - 1)))
        centre = 1 - 0.25 * np.exp(-(rho / (0.5 * radius)) ** 2)  # darker centre (both classes)
        lesion_col = (brown_rgb[None, :, None, None] * les["brown"][li].astype(f32)[:, None, None, None]
                      * (1 - mix[:, None]) + second_rgb[les["second"][li]][:, :, None, None] * mix[:, None])
        lesion_col = lesion_col * centre[:, None]
        tex_f = rng.uniform(0.5, 2.5, (m, 3, 2)).astype(f32)
        tex_p = rng.uniform(0, 2 * np.pi, (m, 3)).astype(f32)
        texture = sum(np.sin(np.pi * (tex_f[:, j, 0, None, None] * u + tex_f[:, j, 1, None, None] * v)
                             + tex_p[:, j, None, None]) for j in range(3)) * f32(0.02)
        skin = skin_rgb[None, :, None, None] * les["skin"][li].astype(f32)[:, None, None, None]
        img = skin * (1 - mask[:, None]) + lesion_col * mask[:, None]
        img = img * light + texture[:, None] + f32(0.02) * rng.standard_normal(img.shape, dtype=f32)
        images[sl] = np.clip(img, 0, 1)

    labels = y_les[lesion_of]
    pids = np.array([f"demo-lesion-{i:05d}" for i in lesion_of])
    groups = {"sex": sex_les[lesion_of], "age_band": np.array([age_band(a) for a in age_les[lesion_of]])}
    parts = _grouped_stratified_split(labels, pids, fractions, np.random.default_rng([seed, 0x5B17]))
    return _splits_from(torch.from_numpy(images), labels, HAM10000_LABEL_NAMES, groups, pids, "demo", parts,
                        unit="lesion")


# ----------------------------------------------------------------------------------------------------------------
# Decoding files


def _file_error(exc: DataError, path: Path, root: Path, name: str = "") -> DataError:
    """A reader's error about ``path`` as a folder dataset's messages name it: the path relative to its ``root``
    (:func:`dpaudit.errors.shown_path`), after the dataset's ``name`` for an error (a skip warning goes without)."""
    return naming_file(exc, path, shown_path(path, root), f"{name}: " if name else "")


def _decode_files(paths: Sequence[Path], image_size: int, channels: int, *, skip_unreadable: bool, root: Path,
                  name: str) -> tuple[list[Pixels | None], int]:
    """Decode image files in threads (Pillow and tifffile release the GIL), resizing each as it is read.

    Returns one :class:`~dpaudit.images.Pixels` per path (None for a file that does not decode, when
    ``skip_unreadable``: a file that does not decode, or holds a non-finite pixel) and the number of such files.
    Other errors (a 16-bit colour PNG) always propagate. Messages name a file relative to ``root``, after ``name``.
    """
    out: list[Pixels | None] = [None] * len(paths)

    def work(i: int) -> None:
        try:
            out[i] = read_image(paths[i], image_size, channels)
        except UnreadableImageError as exc:
            if not skip_unreadable:
                raise _file_error(exc, paths[i], root, name) from None
            skipped_unreadable(_file_error(exc, paths[i], root))
        except DataError as exc:
            raise _file_error(exc, paths[i], root, name) from None

    workers = decode_workers([probe_size(p, image_size, channels) for p in paths],
                             [shown_path(p, root) for p in paths], name=name, fix=DECODE_FIX)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(paths))))
    return out, sum(p is None for p in out)


def _channels_of(paths: Sequence[Path], skip_unreadable: bool, *, root: Path, name: str
                 ) -> tuple[int, list[bool | None], list[str]]:
    """The dataset's channels from the readable images' headers (:func:`dpaudit.images.dataset_channels`: the
    majority's), whether each file is colour (None: it did not open), and the note on the files converted."""
    colour: list[bool | None] = []
    for p in paths:
        try:
            colour.append(probe_channels(p) == 3)
        except UnreadableImageError as exc:
            if not skip_unreadable:
                raise _file_error(exc, p, root, name) from None
            skipped_unreadable(_file_error(exc, p, root))
            colour.append(None)
        except DataError as exc:
            raise _file_error(exc, p, root, name) from None
    channels, said = dataset_channels(sum(bool(c) for c in colour), sum(c is not None for c in colour))
    return channels, colour, said


def _stack(pixels: Sequence[Pixels]) -> torch.Tensor:
    return torch.from_numpy(to_unit_range(list(pixels)))


# ----------------------------------------------------------------------------------------------------------------
# Array files (MedMNIST .npz)


def _array_to_unit(arr: np.ndarray, what: str) -> np.ndarray:
    """A MedMNIST-style image array to float32 in [0, 1] (rule in the README, "Data"), checking every value.

    uint8: / 255. Other unsigned integers: / (2^b - 1), b the bits of the array's largest value (at least 8).
    Floats: kept in [0, 1]; in [0, 255] (the 8-bit scale stored as float): / 255; otherwise mapped by the array's
    minimum and maximum. Signed integers: as floats. A non-finite value is an error naming the image index.
    """
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype.kind == "u":
        high = int(arr.max()) if arr.size else 0
        return arr.astype(np.float32) / np.float32(2 ** max(8, high.bit_length()) - 1)
    if arr.dtype.kind not in "fi":
        raise DataError(f"{what}: images must hold numbers, got dtype {arr.dtype}. Fix: store the images as uint8 "
                        "or float arrays.")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            pos = np.argwhere(bad)[0]
            raise DataError(f"{what}: image {int(pos[0])} holds a non-finite pixel value ({float(arr[tuple(pos)])} at "
                            f"row {int(pos[1])}, column {int(pos[2])}). Fix: replace the non-finite values, or "
                            "remove that image.")
    if not arr.size:
        return arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 1:
        return arr.astype(np.float32)
    if lo >= 0 and hi <= 255:
        return arr.astype(np.float32) / np.float32(255.0)
    return ((arr.astype(np.float64) - lo) / ((hi - lo) or 1.0)).astype(np.float32)


def _resize_array(arr: np.ndarray, image_size: int, what: str) -> torch.Tensor:
    """Image array N x H x W (grey) or N x H x W x C to float32 N x C x image_size x image_size in [0, 1]."""
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DataError(f"{what}: images must be N x H x W (grey) or N x H x W x 3 (colour), got shape "
                        f"{arr.shape}. Fix: use a 2D MedMNIST file.")
    unit = _array_to_unit(arr, what)
    out = []
    for s in range(0, len(unit), 1024):
        t = torch.from_numpy(np.ascontiguousarray(unit[s:s + 1024])).permute(0, 3, 1, 2).to(torch.float32)
        if t.shape[-2:] != (image_size, image_size):
            t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        out.append(t.clamp_(0.0, 1.0))
    if not out:
        return torch.zeros((0, arr.shape[-1], image_size, image_size), dtype=torch.float32)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# HAM10000


def _ham_image_index(root: Path) -> dict[str, Path]:
    folders = [root, root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    index: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() == ".jpg" and p.name.startswith("ISIC_"):
                    index.setdefault(p.stem, p)
    return index


def _load_ham10000(root: Path, image_size: int, seed: int, max_images: int | None,
                   fractions: tuple[float, float]) -> DatasetSplits:
    csv_path = root / "HAM10000_metadata.csv"
    if not csv_path.is_file():
        found = sorted(p.name for p in root.glob("*.csv"))
        raise DataError(f"ham10000: {str(csv_path)!r} not found (CSV files in that folder: {found or 'none'}). "
                        "Fix: pass --data-dir the folder holding HAM10000_metadata.csv and the ISIC_*.jpg images "
                        "(directly or in HAM10000_images_part_1/ and HAM10000_images_part_2/).")
    table = read_table(csv_path, "ham10000", [RowKey("image_id", pattern=r"ISIC_\d+"),
                                              RowKey("lesion_id", pattern=r"HAM_\d+")])
    table.require(HAM10000_REQUIRED_COLUMNS, "ham10000",
                  "use the official metadata file (lesion_id, image_id, dx, dx_type, age, sex, localization)")
    table.refuse_line_breaks((*HAM10000_REQUIRED_COLUMNS, "sex", "age"), "ham10000")
    rows, columns = table.rows, table.columns
    if not rows:
        raise DataError(f"ham10000: {csv_path.name} has no rows. Fix: use the official metadata file (one row per "
                        "image).")
    empty = [i + 1 for i, r in enumerate(rows) if not (r["image_id"] and r["lesion_id"])]
    if empty:
        raise DataError(f"ham10000: {csv_path.name} data row {empty[0]} has an empty image_id or lesion_id "
                        f"({len(empty)} such row(s)). Fix: fill in or delete those rows.")
    ids, counts = np.unique([r["image_id"] for r in rows], return_counts=True)
    repeated = ids[counts > 1].tolist()
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise DataError(f"ham10000: {csv_path.name} lists image_id {shown} more than once (each image must be one "
                        "row; a repeat would put the same image in two splits and inflate N, and kappa = 1/N with "
                        "it). Fix: delete the repeated rows.")
    known = HAM10000_IMMEDIATE | HAM10000_NOT_IMMEDIATE
    bad = sorted({r["dx"] for r in rows} - known)
    if bad:
        raise DataError(f"ham10000: {csv_path.name} has unknown dx value(s) {bad}; allowed: {sorted(known)}. Fix: "
                        "use the official metadata file.")
    index = _ham_image_index(root)
    absent = [r["image_id"] for r in rows if r["image_id"] not in index]
    if absent:
        raise DataError(f"ham10000: {len(absent)} image(s) listed in {csv_path.name} are missing, e.g. "
                        f"{absent[0]}.jpg (looked in {root}, HAM10000_images_part_1/ and HAM10000_images_part_2/). "
                        "Fix: put every listed image in one of those folders.")
    labels = np.array([1 if r["dx"] in HAM10000_IMMEDIATE else 0 for r in rows], dtype=np.int64)
    lesions = np.array([r["lesion_id"] for r in rows])
    rng = np.random.default_rng([seed, zlib.crc32(b"ham10000")])
    keep = _select_groups(lesions, max_images, rng)

    sex = np.array([r.get("sex") or "unknown" for r in rows])
    # ages out of range or not numbers: 'unknown', counted (identifiers.age_group) over the images loaded, not the
    # whole metadata file (--max-images)
    bad: Counter[str] = Counter()
    ages = np.array([age_group(age_in_years(rows[i].get("age", "")), bad) for i in keep], dtype=str)
    groups = {}
    if "sex" in columns:
        groups["sex"] = sex[keep]
    if "age" in columns:
        groups["age_band"] = ages
    paths = [index[rows[i]["image_id"]] for i in keep]
    check_images_fit(len(paths), 3, image_size, name="ham10000")
    pixels, _ = _decode_files(paths, image_size, 3, skip_unreadable=False, root=root, name="ham10000")
    notes = [*table.notes, *age_note(bad)]
    return _split_and_check(_stack(pixels), labels[keep], HAM10000_LABEL_NAMES, groups, lesions[keep], "ham10000",
                            fractions, rng, unit="lesion", digests=dataset_digests(pixels),
                            sources=[shown_path(p, root) for p in paths], notes=notes)


# ----------------------------------------------------------------------------------------------------------------
# MedMNIST


def _medmnist_file(root: Path, flag: str, image_size: int) -> Path:
    exact = root / f"{flag}_{image_size}.npz"
    if exact.is_file():
        return exact
    sized = {}
    for p in root.glob(f"{flag}_*.npz"):
        tail = p.stem[len(flag) + 1:]
        if tail.isdigit():
            sized[int(tail)] = p
    plain = root / f"{flag}.npz"
    # Prefer the smallest file at least as large as asked (downscaling loses less), then the plain 28 px file.
    larger = sorted(s for s in sized if s >= image_size)
    if larger:
        return sized[larger[0]]
    if plain.is_file():
        return plain
    if sized:
        return sized[max(sized)]
    raise DataError(f"{flag}: no {flag}.npz or {flag}_SIZE.npz in {str(root)!r}. Fix: pass --data-dir the folder "
                    "holding the MedMNIST file (dpaudit never downloads data).")


def _medmnist_labels(lab: np.ndarray, what: str, n_images: int, n_names: int | None) -> np.ndarray:
    """One split's labels as int64, each checked: integral, >= 0, and below the flag's class count when known."""
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1:
        raise DataError(f"{what} has shape {lab.shape}; dpaudit trains single-label classifiers. Fix: use a "
                        "single-label MedMNIST dataset (ChestMNIST is multi-label).")
    if len(lab) != n_images:
        raise DataError(f"{what} holds {len(lab)} labels for {n_images} images. Fix: store one label per image.")
    if lab.dtype.kind not in "biuf":
        raise DataError(f"{what} must hold class indices, got dtype {lab.dtype}. Fix: store integer labels.")
    as_float = lab.astype(np.float64)
    bad = ~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0)
    if n_names is not None:
        bad |= as_float >= n_names
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = f"an integer in [0, {n_names - 1}]" if n_names is not None else "an integer >= 0"
        raise DataError(f"{what}[{i}] must be {allowed}, got {lab[i].item()!r} ({int(bad.sum())} such label(s)). Fix: "
                        "correct the labels in the file.")
    return as_float.astype(np.int64)


def _load_medmnist(flag: str, root: Path, image_size: int, seed: int, max_images: int | None) -> DatasetSplits:
    path = _medmnist_file(root, flag, image_size)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{flag}: {path.name} does not load as an .npz file ({exc}). Fix: pass the MedMNIST file "
                        "as downloaded.") from None
    with npz:
        keys = set(npz.files)
        needed = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
        missing = [k for k in needed if k not in keys]
        if missing:
            raise DataError(f"{flag}: {path.name} lacks the array(s) {missing} (found {sorted(keys)}). Fix: pass the "
                            "MedMNIST file as downloaded.")
        try:
            raw = {k: npz[k] for k in needed}
        except ValueError as exc:  # object arrays need pickle, which is never allowed
            raise DataError(f"{flag}: {path.name} holds an array that needs pickle to load ({exc}). Fix: store "
                            "numeric arrays only.") from None
    known = _MEDMNIST_LABEL_NAMES.get(flag)
    labels = {s: _medmnist_labels(raw[f"{s}_labels"], f"{flag}: {path.name} {s}_labels", len(raw[f"{s}_images"]),
                                  len(known) if known else None) for s in ("train", "val", "test")}
    n_cls = int(max(int(v.max()) for v in labels.values() if len(v)) + 1)
    names = known if known else tuple(str(i) for i in range(n_cls))
    total = sum(len(v) for v in labels.values())
    rng = np.random.default_rng([seed, zlib.crc32(flag.encode())])
    shape = raw["train_images"].shape
    check_images_fit(min(total, max_images or total), shape[-1] if len(shape) == 4 else 1, image_size, name=flag)
    splits, digests = [], []
    for s in ("train", "val", "test"):
        n = len(labels[s])
        idx = np.arange(n)
        if max_images is not None and max_images < total:
            k = max(1, round(max_images * n / total))
            idx = np.sort(rng.choice(n, size=min(n, k), replace=False))
        arr = raw[f"{s}_images"][idx]
        digests.append({hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
                        for a in arr})
        imgs = _resize_array(arr, image_size, f"{flag}: {path.name} {s}_images")
        splits.append(ImageDataset(imgs, torch.from_numpy(labels[s][idx]), names, {},
                                   np.array([f"{flag}-{s}-{i}" for i in idx]), f"{flag}/{s}"))
    # MedMNIST keeps its own splits (no patient ids to check): report images stored identically in training and
    # in validation or test, which inflate the measured utility (a note, not an error: the file is the standard).
    shared = sum(1 for d in digests[1:] for h in d if h in digests[0])
    notes = (f"{path.name}: {shared} validation/test image(s) identical to a training image",) if shared else ()
    return DatasetSplits(*splits, name=flag, unit="image", notes=notes)


# ----------------------------------------------------------------------------------------------------------------
# Image folders


def _walk_images(folder: Path, skipped: Counter[str], root: Path) -> list[Path]:
    """Image files at any depth below ``folder`` (sorted), counting hidden entries, non-image files, broken links
    and unreadable folders skipped (:func:`dpaudit.images.walk`; stderr names them relative to ``root``).

    Symbolic links to folders are not followed (no cycles); hidden files and folders (a leading dot: ``.DS_Store``,
    macOS ``._*`` resource forks, ``.git``) are skipped.
    """
    found = []
    for dirpath, dirnames, filenames in walk(folder, skipped, root):
        skipped["hidden"] += sum(d.startswith(".") for d in dirnames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith("."):
                skipped["hidden"] += 1
            elif Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / f)
            else:
                skipped["not an image"] += 1
    return sorted(found)


def _describe_skipped(skipped: Mapping[str, int]) -> str:
    """The skipped files' line of :func:`dpaudit.config.data_loading_notes` ('no file skipped' when none)."""
    return (data_loading_notes(skipped, ()) or ["no file skipped"])[0]


def _alnum(text: str) -> str:
    """``text`` case-folded with only its letters and digits: 'SMITH^JOHN' and 'smith_john' compare equal."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _names_patient(folder: str, identifiers: Iterable[str]) -> bool:
    """True when ``folder`` equals an identifier of a patient whose files it holds (a PatientID, a PatientName or
    one of its components, a BIDS subject label), or contains one of 3 or more letters and digits, compared
    ignoring case and punctuation ('DOE_JANE_PID0042' holds PatientName DOE^JANE and PatientID PID0042)."""
    name = _alnum(folder)
    for ident in identifiers:
        key = _alnum(ident)
        if key and (key == name or (len(key) >= 3 and key in name)):
            return True
    return False


def _check_class_folders(name: str, folders: Sequence[str], groups: Sequence[str] | None, *, unit: str,
                         identifiers: Mapping[str, set[str]] | None, fix: str, rename: str) -> None:
    """Class names taken from folder names reach every output (metrics.json, checkpoints, profile.json, the
    report), so a folder name becomes a class name only when nothing shows that it is a patient:

    * the classes are refused when every class folder holds the images of one ``unit`` (one patient, study or
      volume, by ``groups``): the folders are then patients (a PACS export by patient), not classes, and a
      classifier would learn to tell those patients apart;
    * a folder name holding DICOM's person-name separator '^' (SMITH^JOHN) is refused;
    * a folder name that equals or contains an identifier of the patients whose files it holds
      (``identifiers``: folder -> PatientIDs, PatientNames, BIDS subject labels; see :func:`_names_patient`) is
      refused. Ordinary class names with digits (class_001, T2_2020, ISIC_2019_MEL, CD138, 2019) pass.

    ``fix`` is the way to give labels (a flag of the command), ``rename`` the other fix for a folder's name. The
    error names one folder, on stderr only (the user needs it to fix the layout); nothing is written.
    """
    classes = sorted(set(folders))
    members: dict[str, set[str]] = {c: set() for c in classes}
    for f, g in zip(folders, groups if groups is not None else [None] * len(folders), strict=True):
        if g is not None:
            members[f].add(g)
    single = {c for c in classes if groups is not None and len(members[c]) == 1}
    if len(classes) >= 2 and len(single) == len(classes):
        raise DataError(f"{name}: every class folder holds the images of one {unit} ({len(classes)} class folders, "
                        f"one {unit} each): they are {unit}s, not classes, and a classifier would learn to tell them "
                        f"apart. Fix: {fix}.")
    caret = [c for c in classes if "^" in c]
    named = [c for c in classes if identifiers is not None and _names_patient(c, identifiers.get(c, ()))]
    for looks, why in ((caret, "holds a '^', DICOM's separator of a person's names"),
                       (named, "holds the PatientID, PatientName or subject label of the files in it")):
        if looks:
            raise DataError(f"{name}: class folder {looks[0]!r} ({len(looks)} of {len(classes)} class folders) "
                            f"{why}: a patient identifier, and a class name is written to every output. Fix: {fix}, "
                            f"or {rename}.")


# ----------------------------------------------------------------------------------------------------------------
# Class names: labels written differently, class folders, classes left without images


def _label_names(values: Sequence[str]) -> tuple[str, ...]:
    """Sorted distinct labels: numerically when every label is an integer (so "10" follows "9")."""
    uniq = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in uniq):
        uniq.sort(key=int)
    return tuple(uniq)


#: A number as a spreadsheet writes one: digits, an optional sign, point and exponent. What ``float()`` and
#: ``Decimal()`` accept beyond this is text: underscores ('1_0' is not 10), 'inf', 'nan', surrounding white space.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _number(text: str) -> Decimal | None:
    """The exact value of a numeric label (decimal, never rounded to a float: 12345678901234567 and
    12345678901234568 are two numbers), else None."""
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond Decimal's range (1e99999999999999999999): kept as text
        return None


def _label_key(text: str) -> tuple[str, Decimal | str]:
    """What makes two label spellings one class: the exact number for a numeric label ("1", "1.0", "01", "1e0"
    are one class, as a spreadsheet writes them), else the text ignoring case (refused by
    :func:`_merge_label_spellings`)."""
    x = _number(text)
    return ("number", x) if x is not None else ("text", text.casefold())


def _canonical_number(x: Decimal, seen: set[str]) -> str:
    """An integer as its plain digits (1.0 -> '1'; up to 30 digits), another number as its shortest spelling."""
    if x == x.to_integral_value() and x.adjusted() < 30:
        return str(int(x))
    return min(seen, key=lambda v: (len(v), v))


def _merge_label_spellings(values: Sequence[str], name: str, where: str, notes: list[str]) -> list[str]:
    """Labels written differently for one class, made one (cells are already stripped of white space).

    The same number in several spellings (Excel writes ``1`` in some rows and ``1.0`` in others) is merged, with a
    note naming the spellings: an integer as its plain digits, another number as its shortest spelling. Texts that
    differ only in case (``Benign``, ``benign``) are refused naming ``where`` and the spellings: whether they are
    one class is the user's call, and a silent split doubles the classes.
    """
    spellings: dict[tuple[str, Decimal | str], set[str]] = {}
    for v in values:
        spellings.setdefault(_label_key(v), set()).add(v)
    rename: dict[str, str] = {}
    for (kind, key), seen in sorted(spellings.items(), key=lambda kv: str(kv[0])):
        if len(seen) < 2:
            continue
        shown = ", ".join(repr(v) for v in sorted(seen))
        if kind == "text":
            raise DataError(f"{name}: {where} spells one label in several ways that differ only in case ({shown}). "
                            "Fix: write each class one way in the labels (they are compared exactly).")
        canon = _canonical_number(key, seen) if isinstance(key, Decimal) else ""
        notes.append(f"labels {shown} in {where} are one number: merged as class {canon!r}")
        rename |= dict.fromkeys(seen, canon)
    return [rename.get(v, v) for v in values]


def _folder_key(folder: str) -> str:
    """What makes two class folder names one name to a reader or a file system: the name NFC-normalised, without
    white space at either end, ignoring case (:func:`class_folder_names` refuses two folders with one key)."""
    return unicodedata.normalize("NFC", folder).strip().casefold()


def class_folder_names(name: str, folders: Sequence[str], notes: list[str]) -> dict[str, str]:
    """The class each class folder is (folder name -> class name): the one rule of the folder, DICOM and NIfTI
    loaders, and the rule of a labels column (:func:`_merge_label_spellings`) applied to folder names.

    * Folders whose names are one number written differently (``1`` and ``01``, ``1.0``) are one class, named by
      the number's plain digits, with a note naming the folders. A class number is what the user means by such a
      name (zero padding is how file browsers and export scripts sort folders), and a labels column merges the same
      spellings: two classes would split one class's images in two and shift every class index after it.
    * Folders whose names differ only in case (``Benign``, ``benign``), in white space at either end (``benign``,
      ``benign ``) or in Unicode normalisation (``é`` as one code point, NFC, or as ``e`` and a combining accent,
      NFD: macOS writes the latter) are refused, naming both (with ``repr``, so that a space shows): whether they
      are one class or two cannot be told, a file browser shows them alike, and a case-insensitive or
      normalising file system (Windows, macOS) holds them as one folder, so the same data would load with another
      number of classes there (:func:`_folder_key`).

    >>> notes = []; class_folder_names("folder:x", ["01", "1", "2", "nodule"], notes), notes
    ({'01': '1', '1': '1', '2': '2', 'nodule': 'nodule'}, ["class folders '01', '1' are one number: merged as class '1'"])
    """
    by_key: dict[str, set[str]] = {}
    for f in folders:
        by_key.setdefault(_folder_key(f), set()).add(f)
    # the folder to keep first: NFC-normalised, stripped (the spelling the others are meant as), then by name
    clash = next((sorted(v, key=lambda f: (unicodedata.normalize("NFC", f) != f, f.strip() != f, f))
                  for v in by_key.values() if len(v) > 1), None)
    if clash is not None:
        a, b = clash[0], clash[1]
        nfc_a, nfc_b = unicodedata.normalize("NFC", a), unicodedata.normalize("NFC", b)
        hows = [(nfc_a.strip() != nfc_b.strip(), "case",
                 "a case-insensitive file system (Windows, macOS) holds them as one folder"),
                (nfc_a.casefold() != nfc_b.casefold(), "white space at the start or end of the name",
                 "a file browser shows them alike (the space is invisible)"),
                (a.strip().casefold() != b.strip().casefold(), "Unicode normalisation (the same letters encoded "
                 "two ways, NFC and NFD)", "a file browser shows them alike (macOS writes accented names as NFD)")]
        how = " and ".join(h for differs, h, _ in hows if differs)
        why = "; ".join(w for differs, _, w in hows if differs)
        # ascii() where the encodings differ: repr would print the two names alike
        show = ascii if hows[2][0] else repr
        shown = " and ".join(show(f) for f in clash)
        raise DataError(f"{name}: class folders {shown} differ only in {how}: one class or two cannot be told, and "
                        f"{why}. Fix: move the images of {show(b)} into {show(a)} if they are one class, or rename one of "
                        "them if they are two.")
    said: list[str] = []
    merged = _merge_label_spellings(list(folders), name, "the class folder names", said)
    notes += [n.replace("labels ", "class folders ", 1).replace(" in the class folder names", "", 1) for n in said]
    return dict(zip(folders, merged, strict=True))


def _drop_empty_classes(name: str, label_names: Sequence[str], labels: np.ndarray, tried: Mapping[str, int],
                        notes: list[str], *, what: str, remove: str) -> tuple[tuple[str, ...], np.ndarray]:
    """The classes left once the files are selected and decoded, and ``labels`` (each image's index into
    ``label_names``) renumbered over them, in their order.

    A class none of whose images is left (its files did not decode, or ``--max-images`` selected none) is dropped,
    with a note naming it (``what``: ``"class folder"``, or ``"class"`` for a labels column) and why: ``tried``
    counts each class's files that were decoded or failed to read (0: none selected). A class kept without images
    would be an output no image trains (MCC and the confusion matrix undefined for it) and would shift the index of
    every class after it. Data that had two classes or more and are left with fewer are refused (``remove``: how
    to take the class out, the other fix).
    """
    present = np.bincount(labels, minlength=len(label_names)) > 0
    if present.all():
        return tuple(label_names), labels
    why = {c: (f"none of its {tried[c]} file(s) decodes" if tried.get(c) else
               "--max-images selected none of its files") for c, p in zip(label_names, present, strict=True) if not p}
    notes += [f"{what} {c!r} dropped: {w}" for c, w in why.items()]
    kept = tuple(c for c, p in zip(label_names, present, strict=True) if p)
    if len(label_names) >= 2 and len(kept) < 2:
        fixes = []
        if any(tried.get(c) for c in why):
            fixes.append("replace the files that do not decode (each is named on stderr)")
        if any(not tried.get(c) for c in why):
            fixes.append("pass a larger --max-images")
        listed = "; ".join(f"{what} {c!r}: {w}" for c, w in why.items())
        raise DataError(f"{name}: {len(why)} of {len(label_names)} classes have no image left ({listed}), which "
                        f"leaves {len(kept)} class(es) ({', '.join(map(repr, kept)) or 'none'}); a classifier "
                        f"needs 2. Fix: {', or '.join(fixes)}, or {remove}.")
    return kept, (np.cumsum(present) - 1)[labels]


def _load_folder(root: Path, image_size: int, seed: int, max_images: int | None,
                 fractions: tuple[float, float]) -> DatasetSplits:
    name = f"folder:{root}"
    if not root.is_dir():
        raise DataError(f"{name}: {str(root)!r} is not an existing folder. Fix: pass --dataset folder:PATH with "
                        "the folder of images (class sub-folders optional).")
    skipped: Counter[str] = Counter()
    top, subdirs = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            skipped["hidden"] += 1
        elif is_broken_link(p):
            skipped_entry(p, root, BROKEN_LINK, skipped, broken_link_why(p))
        elif p.is_dir():
            subdirs.append(p)
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            top.append(p)
        else:
            skipped["not an image"] += 1
    classes = [(d.name, _walk_images(d, skipped, root)) for d in subdirs]
    empty = [n for n, files in classes if not files]
    classes = [(n, files) for n, files in classes if files]
    if classes and top:
        raise DataError(f"{name}: images both at the top level ({top[0].name}, ...) and in class sub-folders "
                        f"({', '.join(n for n, _ in classes[:3])}). Fix: move the top-level images into a class "
                        "sub-folder, or pass the folder of one class.")
    if not classes:
        if not top:
            raise DataError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) found in the folder or its "
                            f"sub-folders ({_describe_skipped(skipped)}). Fix: pass the folder holding the images.")
        classes = [(root.name or "images", top)]
    if classes:
        _check_class_folders(name, [n for n, _ in classes], None, unit="image", identifiers=None,
                             fix="list the images with their labels in a manifest (--dataset csv:FILE with "
                                 "columns path,label)", rename="rename the class folders to class names")
    # Counted in the notes (written to JSON), named on stderr only: a folder name is not checked to be a class.
    notes = [f"{len(empty)} class sub-folder(s) without images ignored"] if empty else []
    if empty:
        SKIP_LOG.warning("class sub-folder(s) without images ignored: %s", ", ".join(repr(n) for n in empty))
    class_of = class_folder_names(name, [n for n, _ in classes], notes)
    label_names = _label_names(list(class_of.values()))
    index = {c: i for i, c in enumerate(label_names)}
    paths = [p for _, files in classes for p in files]
    labels = np.concatenate([np.full(len(files), index[class_of[n]], dtype=np.int64) for n, files in classes])
    pids = np.array([str(p.relative_to(root)) for p in paths])
    rng = np.random.default_rng([seed, zlib.crc32(b"folder")])
    keep = _select_groups(pids, max_images, rng)
    paths = [paths[i] for i in keep]
    channels, colour, _ = _channels_of(paths, skip_unreadable=True, root=root, name=name)
    opened = [c is not None for c in colour]
    check_images_fit(sum(opened), channels, image_size, name=name)
    pixels, _ = _decode_files([p for p, ok in zip(paths, opened, strict=True) if ok], image_size, channels,
                              skip_unreadable=True, root=root, name=name)
    decoded = iter(pixels)
    got = [next(decoded) if ok else None for ok in opened]
    good = [i for i, px in enumerate(got) if px is not None]
    # The files converted, counted among those that decoded (a colour file skipped as unreadable was not).
    notes = [*notes, *channels_note(channels, sum(bool(colour[i]) for i in good), len(good))]
    skipped["unreadable"] += len(got) - len(good)
    if not good:
        raise DataError(f"{name}: none of the image files decodes ({_describe_skipped(skipped)}). Fix: pass a "
                        "folder of PNG, JPEG or TIFF images.")
    sel = keep[good]
    kept = [got[i] for i in good]
    tried = Counter(label_names[labels[i]] for i in keep)  # each class's files selected, decoded or not
    label_names, kept_labels = _drop_empty_classes(name, label_names, labels[sel], tried, notes, what="class folder",
                                                   remove="move the folder out of the dataset")
    return _split_and_check(_stack(kept), kept_labels, label_names, {}, pids[sel], name, fractions, rng,
                            unit="image", digests=dataset_digests(kept), sources=[shown_path(paths[i], root) for i in good],
                            skipped=skipped, notes=notes)
