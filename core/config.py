"""The DP-SGD configuration shared by bounds, attacks, training and the report, and the defaults per task.

It keeps the raw mechanism parameters, not just epsilon: two runs with equal epsilon can differ in
reconstruction risk (seed paper, section 2.3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpaudit.errors import DataError, check_int, check_positive, check_probability, invalid
from dpaudit.memory import check_image_size


def steps_for(epochs: int, n_train: int, expected_batch_size: int) -> int:
    """Number of DP-SGD steps for ``epochs`` passes with Poisson sampling at rate batch/N (integer arithmetic).

    One epoch is ceil(N / batch) steps, so that every record is expected to be seen once per epoch.
    """
    epochs = check_int("epochs", epochs)
    n_train = check_int("n_train", n_train)
    expected_batch_size = check_int("batch_size", expected_batch_size)
    if expected_batch_size > n_train:
        raise invalid("batch_size", expected_batch_size, f"at most the number of training images ({n_train})",
                      f"pass --batch-size {n_train} or less")
    return epochs * (-(-n_train // expected_batch_size))


@dataclass(frozen=True)
class DpSgdConfig:
    """One DP-SGD run as the accountant sees it.

    Attributes
    ----------
    noise_multiplier:
        sigma: standard deviation of the Gaussian noise divided by the clip norm. 0 means no noise (no DP).
    sampling_probability:
        q: Poisson sampling probability of each record per step (expected batch size / N).
    steps:
        T: number of noisy gradient releases the adversary sees.
    max_grad_norm:
        C: per-sample clip norm. The bounds do not depend on it; the attack's view does.
    target_delta:
        delta at which epsilon is reported. The ReRo bounds do not depend on it.
    """

    noise_multiplier: float
    sampling_probability: float
    steps: int
    max_grad_norm: float = 1.0
    target_delta: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier, allow_zero=True))
        object.__setattr__(self, "sampling_probability", check_probability(
            "sampling_probability", self.sampling_probability, open_high=False,
            fix="pass the expected batch size divided by the number of training records, e.g. --q 0.01"))
        object.__setattr__(self, "steps", check_int(
            "steps", self.steps, fix="pass the number of DP-SGD steps, epochs * ceil(N / batch size)"))
        object.__setattr__(self, "max_grad_norm", check_positive(
            "max_grad_norm", self.max_grad_norm, fix="pass a positive clip norm, e.g. 1.0"))
        object.__setattr__(self, "target_delta", check_probability(
            "target_delta", self.target_delta, fix=f"pass a delta well below 1/N, {DELTA_EXAMPLE}"))

    @property
    def is_private(self) -> bool:
        return self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)


def parse_trainable(trainable: str) -> int | None:
    """``all`` -> None, ``head`` -> 1, ``last-N`` -> N (the number of trailing layers with parameters to train)."""
    if trainable == "all":
        return None
    if trainable == "head":
        return 1
    m = re.fullmatch(r"last-(\d+)", trainable) if isinstance(trainable, str) else None
    if m is None or int(m.group(1)) < 1:
        raise invalid("trainable", trainable, "all, head or last-N with N >= 1",
                      "pass --trainable all, --trainable head (linear probe) or --trainable last-2")
    return int(m.group(1))


# ----------------------------------------------------------------------------------------------------------------
# The privacy unit (what every DP statement is made for). Here, not in dpaudit.data, so that results that record
# it (dpaudit.audit.results) load without torch; dpaudit.data re-exports these names.

#: Smallest noise multiplier the accountants take. Below it the per-step privacy loss of a sampled record exceeds
#: ``dpaudit.bounds.pld.LOSS_CAP`` (700 nats) by many orders of magnitude, so every bound is ~ its trivial value,
#: and the PLD's grid and moment integrals (whose resolution scales with sigma) no longer fit in memory.
#: Calibration searches from 1e-3 (``dpaudit.bounds.calibrate.SIGMA_RANGE``), well above it.
MIN_NOISE_MULTIPLIER = 1e-4
#: Largest noise multiplier the accountants take: far beyond any noise DP-SGD uses (0.3 to 10), where the bounds are
#: all but their blind-guess values; far above it sigma ** 2 overflows a float (from ~1.3e154) and the accountants
#: would end in a traceback instead of a number.
MAX_NOISE_MULTIPLIER = 1e6
#: The example a fix gives for target_delta: the value of the one default rule of every command (min(8e-7, 1/(10 N)),
#: :func:`dpaudit.bounds.default_delta`), not a round number of another convention.
DELTA_EXAMPLE = "e.g. --delta 8e-7 (the default: min(8e-7, 1/(10 N)))"


def check_noise_multiplier(value: float, *, allow_zero: bool = False, fix: str | None = None) -> float:
    """A noise multiplier sigma the accountants take: finite, and 0 (no noise, when ``allow_zero``) or at least
    :data:`MIN_NOISE_MULTIPLIER` and at most :data:`MAX_NOISE_MULTIPLIER`."""
    fix = fix or "pass the noise standard deviation divided by the clip norm, e.g. --sigma 1.0"
    v = check_positive("noise_multiplier", value, allow_zero=allow_zero, fix=fix)
    if v != 0 and v < MIN_NOISE_MULTIPLIER:
        raise invalid("noise_multiplier", value,
                      f"{'0 or ' if allow_zero else ''}at least {MIN_NOISE_MULTIPLIER:g} (below it the per-step privacy "
                      "loss is far beyond what the accountants resolve)",
                      f"pass --sigma {MIN_NOISE_MULTIPLIER:g} or more")
    if v > MAX_NOISE_MULTIPLIER:
        raise invalid("noise_multiplier", value,
                      f"at most {MAX_NOISE_MULTIPLIER:g} (far beyond any noise DP-SGD uses; the accountants overflow far above it)",
                      f"pass --sigma {MAX_NOISE_MULTIPLIER:g} or less")
    return v


def check_replayed_noise(name: str, value: float, *, fix: str = "pass e.g. --sigmas 0,1e-3") -> float:
    """A noise multiplier an attack replays as it is (no accountant: 0 and tiny values are meaningful there): finite,
    at least 0 and at most :data:`MAX_NOISE_MULTIPLIER` (far above it the noise's squares overflow a float and the
    attack's statistics would be inf or NaN, not a failed reconstruction)."""
    v = check_positive(name, value, allow_zero=True, fix=fix)
    if v > MAX_NOISE_MULTIPLIER:
        raise invalid(name, value, f"at most {MAX_NOISE_MULTIPLIER:g} (far beyond any noise DP-SGD uses)",
                      f"pass --sigmas {MAX_NOISE_MULTIPLIER:g} or less")
    return v


#: What a dataset's ``patient_ids`` can stand for (see :class:`dpaudit.data.DatasetSplits`; ``volume``: a segmentation
#: dataset's scans, one per patient, :class:`dpaudit.volumes.SegmentationSplits`).
PRIVACY_UNITS = ("patient", "subject", "lesion", "volume", "study", "image")


@dataclass(frozen=True)
class ImagesPerUnit:
    """The training split's images-per-unit distribution: ``histogram`` holds (images, number of units) pairs.

    No identifier is kept: only counts (safe to print, log and write to JSON and reports).
    """

    unit: str
    n_units: int
    max: int
    mean: float
    histogram: tuple[tuple[int, int], ...]


#: How a sentence names the patient of data whose ids are lesion ids (HAM10000's lesion_id, the built-in demo's
#: synthetic lesions): there are no patient ids, so each lesion counts as one patient (a person with several
#: lesions has more images, and less protection, than the k counted).
LESION_AS_PATIENT = "one patient (one lesion id: the data carry no patient ids)"

#: ``--privacy-unit`` choices: the unit every DP statement is made for.
PRIVACY_UNIT_CHOICES = ("patient", "image")


def data_loading_notes(skipped: Mapping[str, int] | Iterable[tuple[str, int]], notes: Iterable[str]) -> list[str]:
    """What a loader passed over (counts by reason) and decided, one line each, as every command that loads data
    prints it and keeps it in its JSON, and as the report's data section lists it. Counts only: the reasons and the
    loaders' notes name no patient.

    >>> data_loading_notes({"not DICOM": 1, "not an image (no pixel data)": 1}, ["files grouped by StudyInstanceUID (3)"])
    ['2 file(s) skipped (1 not DICOM, 1 not an image (no pixel data))', 'files grouped by StudyInstanceUID (3)']
    """
    counts = dict(skipped.items() if isinstance(skipped, Mapping) else skipped)
    total = sum(counts.values())
    lines = []
    if counts:
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if v)
        lines.append(f"{total} file(s) skipped ({parts})" if total else "no file skipped")
    return lines + [str(n) for n in notes]


def record_noun(data_unit: str) -> str:
    """What one training record is called in sentences: a 2-D ``"slice"`` where the records are slices of volumes
    (``data_unit`` ``"volume"``: segmentation data, NIfTI volumes without patient ids), else ``"image"``. Wording
    only: JSON keys and the ``--privacy-unit image`` choice keep the word image.

    >>> record_noun("volume"), record_noun("patient")
    ('slice', 'image')
    """
    return "slice" if data_unit == "volume" else "image"


@dataclass(frozen=True)
class PrivacyUnit:
    """The unit the privacy numbers are stated for, and k = the most training images one unit contributes.

    ``unit`` is ``"patient"`` (k = ``records_per_patient`` from the data: DICOM PatientID, a ``patient_id``
    column, a BIDS ``sub-<label>``, a NIfTI volume, HAM10000's lesion_id) or ``"image"`` (k = 1). ``data_unit``
    says where the data's groups come from (:data:`PRIVACY_UNITS`: ``patient`` ids, BIDS ``subject`` labels,
    ``lesion`` ids, ``volume`` files, DICOM ``study`` UIDs, or ``image``: none); ``chosen_by`` whether the default
    or ``--privacy-unit`` chose.
    Only counts: safe to print and to write to checkpoints, JSON and reports.
    """

    unit: str
    data_unit: str
    records_per_patient: int
    images_per_unit: ImagesPerUnit
    chosen_by: str = "default"

    @property
    def data_records_per_patient(self) -> int:
        """The data's k: the most training images one patient (lesion, volume) has, whatever the unit; 1 when the
        data carry no ids. Under ``--privacy-unit image`` it is the k of the per-patient epsilon given beside."""
        return self.images_per_unit.max if self.data_unit != "image" else 1

    @property
    def image_unit_hides_patients(self) -> bool:
        """The guarantees are per image while one patient has several training images (per patient: weaker)."""
        return self.unit == "image" and self.data_records_per_patient > 1

    @property
    def record(self) -> str:
        """What one training record is called in sentences: ``"slice"`` (a 2-D slice of a volume) or ``"image"``.
        Wording only: the unit's value stays ``"image"`` (``--privacy-unit image``, JSON)."""
        return record_noun(self.data_unit)

    def describe(self) -> str:
        """One line for the console and the report, e.g. ``privacy unit: patient (k = 4 ...)``."""
        ids = {"patient": "patient ids", "lesion": "lesion ids, as no patient ids exist: each lesion counts as one "
               "patient",
               "study": "StudyInstanceUIDs, as the files carry no usable PatientID",
               "subject": "BIDS subject labels (sub-<label>), as no patient_id column exists",
               "volume": "volumes, as no patient ids exist: each volume counts as one patient",
               "image": "no patient ids"}[self.data_unit]
        if self.unit == "patient" and self.data_unit == "volume":
            k, n = self.records_per_patient, self.images_per_unit.n_units
            return (f"privacy unit: patient (from the data's {ids}; k = {k} {_noun('slice', k)} per volume at most "
                    f"in the training split, {n} {_noun('volume', n)})")
        if self.unit == "patient":
            k, n = self.records_per_patient, self.images_per_unit.n_units
            return (f"privacy unit: patient (from the data's {ids}; k = {k} {_noun('image', k)} per patient at "
                    f"most in the training split, {n} {_noun('patient', n)})")
        why = "--privacy-unit image" if self.chosen_by == "option" else f"the data carry {ids}"
        k = self.data_records_per_patient
        rec = self.record
        note = "" if rec == "image" else f"one 2-D {rec} is one record; "
        if self.image_unit_hides_patients:
            # per image while one patient has several images: per patient the guarantee is weaker; said here
            return (f"privacy unit: {rec} ({note}{why}; k = 1). Note: one patient has up to {k} {rec}s in the training "
                    f"split: every epsilon here is per {rec}, and per patient ({k} {rec}s moving together) it is "
                    "larger")
        return f"privacy unit: {rec} ({note}{why}; k = 1)"


def _noun(word: str, count: int) -> str:
    """``word`` for a count of 1, else its plural (``image``, ``images``)."""
    return word if count == 1 else word + "s"


def check_records_per_patient(given: int, data_unit: str, data_max: int, *, unit: str = "patient",
                              where: str = "the training split") -> int:
    """A k given by hand (``--records-per-patient``) checked against the data: below the most images one patient
    (lesion, volume) has in ``where`` it would state a per-patient guarantee that does not hold for that patient,
    and is refused. On data without patient ids (``data_unit`` ``"image"``) nothing is known, and the given k stands.
    k = 1 with ``unit`` ``"image"`` is the record-level statement, true as such (the image is the unit).

    >>> check_records_per_patient(4, "patient", 4)
    4
    >>> check_records_per_patient(2, "image", 1)
    2
    >>> check_records_per_patient(1, "patient", 4, unit="image")
    1
    >>> check_records_per_patient(2, "lesion", 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpaudit.errors.DataError: records_per_patient must be at least 4 (the most images one patient (one lesion id: the data carry no patient ids) has in the training split; ...
    >>> check_records_per_patient(2, "patient", 4)
    Traceback (most recent call last):
    ...
    dpaudit.errors.DataError: records_per_patient must be at least 4 (the most images one patient has in \
the training split; a smaller k states a per-patient guarantee that does not hold), got 2. \
Fix: leave out --records-per-patient (k is then read from the data), or pass --records-per-patient 4.
    """
    k = check_int("records_per_patient", given, fix="pass --records-per-patient 1 or more")
    if data_unit != "image" and k < data_max and (k > 1 or unit == "patient"):
        what = {"volume": "slices one volume", "lesion": f"images {LESION_AS_PATIENT}"}.get(data_unit,
                                                                                           "images one patient")
        raise invalid("records_per_patient", k, f"at least {data_max} (the most {what} has in {where}; a smaller "
                      "k states a per-patient guarantee that does not hold)",
                      "leave out --records-per-patient (k is then read from the data), or pass "
                      f"--records-per-patient {data_max}", cls=DataError)
    return k


# ----------------------------------------------------------------------------------------------------------------
# Defaults shared by every command and configuration

#: The dataset every command loads by default: the built-in synthetic demo (nothing to download).
DEFAULT_DATASET = "demo"
#: The classifier every command trains or attacks by default (segmentation tasks train ``unet``:
#: :data:`TRAIN_DEFAULTS`).
DEFAULT_ARCH = "resnet9"

#: Side length images are resized to when no ``--image-size`` is given: the built-in synthetic demos are made at
#: 28 pixels (the demo profile trains 4 budgets x 3 seeds in minutes on a CPU; at 64 pixels each run costs about
#: five times as much); real data default to 64 pixels, the seed paper's attack setting.
DEFAULT_IMAGE_SIZE = 64
DEMO_IMAGE_SIZE = 28
DEMO_DATASETS = ("demo", "demo-ct")
#: Default total number of images of the built-in ``demo`` (about 70% of them train): a CPU demo in seconds; its
#: largest --max-images (here, without the data stack, for the messages that suggest one).
DEMO_DEFAULT_SIZE = 2000


def default_image_size(dataset: str) -> int:
    """The image size of ``dataset`` when none is given: 28 for the built-in demos, 64 otherwise.

    >>> default_image_size("demo"), default_image_size("ham10000")
    (28, 64)
    """
    return DEMO_IMAGE_SIZE if dataset in DEMO_DATASETS else DEFAULT_IMAGE_SIZE


def image_size_for(dataset: str, image_size: int | None) -> int:
    """``image_size`` checked (an integer >= 8), or :func:`default_image_size` of ``dataset`` when it is None.

    Raises :class:`~dpaudit.errors.ConfigError` naming ``image_size`` with a fix for a value below 8.

    >>> image_size_for("demo", None), image_size_for("demo", 64)
    (28, 64)
    """
    size = default_image_size(dataset) if image_size is None else image_size
    return check_image_size(size, f"pass --image-size {DEMO_IMAGE_SIZE}, {DEFAULT_IMAGE_SIZE} or 224, or leave it out")


def check_max_images(max_images: int | None) -> int | None:
    """``max_images`` checked (None: every image; else an integer >= 3, one image per split at least)."""
    if max_images is None:
        return None
    return check_int("max_images", max_images, minimum=3,
                     fix="pass --max-images 3 or more (one image per split at least), or leave it out")


#: What ``--image-size`` says about its default (the same words on every command).
IMAGE_SIZE_DEFAULT_HELP = (f"{DEMO_IMAGE_SIZE} for the built-in demos ({', '.join(DEMO_DATASETS)}), "
                           f"{DEFAULT_IMAGE_SIZE} otherwise")


# ----------------------------------------------------------------------------------------------------------------
# Defaults that depend on the task
#
# A classifier and a segmentation network want different architectures and training lengths. The options whose
# sensible value depends on the task default to None in TrainConfig and ProfileConfig (and on the command line);
# the configuration takes the value for its task from the tables below, the one place they are written, and
# records which options it filled (``task_defaults``), so that a run says which defaults it used. ``--help``
# prints both columns (:func:`task_default_help`). The image size depends on the dataset instead
# (:func:`default_image_size`: the built-in demos, demo-ct included, are made at 28 pixels).

#: The seed paper's MSD Liver loss weights (background, liver, tumour), section 4.2.3: "a weighted loss function
#: (Background: 0.1, Liver: 0.4, Tumour: 0.5)". The paper used them for its non-private and epsilon = 1e9 runs and
#: an unweighted loss at epsilon <= 20; dpaudit uses them at every budget by default, because on demo-ct the
#: unweighted loss learned no tumour at epsilon 1, 8 or 20 (README, "Segmentation").
PAPER_MSD_LIVER_CLASS_WEIGHTS = (0.1, 0.4, 0.5)

#: Names of MSD Liver's tumour class (Task03_Liver's dataset.json says "cancer"; nnU-Net copies say "tumor").
LIVER_TUMOUR_NAMES = ("cancer", "tumour", "tumor", "lesion")


def is_liver_classes(label_names: Sequence[str]) -> bool:
    """True for MSD Liver's classes: background, liver and a tumour class, in this order (names compared
    case-insensitively), the classes :data:`PAPER_MSD_LIVER_CLASS_WEIGHTS` weight.

    >>> is_liver_classes(("background", "Liver", "cancer")), is_liver_classes(("background", "spleen"))
    (True, False)
    """
    names = tuple(str(n).strip().lower() for n in label_names)
    return len(names) == 3 and names[0] == "background" and names[1] == "liver" and names[2] in LIVER_TUMOUR_NAMES


def class_weights_for(config: Any, label_names: Sequence[str]) -> tuple[tuple[float, ...], str | None]:
    """(the loss's class weights, a note or None) of a configuration on data of these classes.

    Weights given on the command line (or in the Python API) are kept as they are, and refused when their number
    is not the number of classes (never cut or padded): the one check, made wherever the data's classes become
    known (``train``, the profile's data stage, a training task), so before any training. The segmentation default,
    the seed paper's MSD Liver weights, fits MSD Liver's classes only (:func:`is_liver_classes`, demo-ct's
    included); on another task (two classes, four, another organ) the default is the unweighted loss, with a note
    that says so and how to weight it.

    >>> from types import SimpleNamespace
    >>> class_weights_for(SimpleNamespace(class_weights=(0.1, 0.9)), ("background", "liver", "tumour"))
    Traceback (most recent call last):
    ...
    dpaudit.errors.ConfigError: class_weights must be one weight per class: 3 for background, liver, tumour (2 given), got '0.1,0.9'. Fix: pass --class-weights with 3 values, or --class-weights none.
    """
    weights = tuple(getattr(config, "class_weights", None) or ())
    from_default = "class_weights" in tuple(getattr(config, "task_defaults", ()) or ())
    k = len(label_names)
    if weights and not from_default and len(weights) != k:
        raise invalid("class_weights", ",".join(f"{w:g}" for w in weights),
                      f"one weight per class: {k} for {', '.join(map(str, label_names))} ({len(weights)} given)",
                      f"pass --class-weights with {k} values, or --class-weights none")
    if not (from_default and weights == PAPER_MSD_LIVER_CLASS_WEIGHTS) or is_liver_classes(label_names):
        return weights, None
    return (), (f"class_weights none (unweighted loss): the default {format_default(weights)} is the seed paper's "
                f"for MSD Liver's background, liver and tumour, and this task's {k} classes are "
                f"{', '.join(map(str, label_names))}; pass --class-weights with {k} values to weight the loss")

#: Training of a segmentation network, the same for ``dpaudit train`` and ``dpaudit profile``: MONAI's BasicUNet,
#: 20 epochs of Poisson batches of 16 slices at lr 1e-2 (NAdam) with the paper's class weights where they fit
#: (MSD Liver's three classes; otherwise unweighted, :func:`class_weights_for`). Measured on
#: demo-ct at 28 px (16 training volumes, 256 slices; one run per cell, seed 0, Dice liver / tumour): non-private
#: 0.91 / 0.39 after 6 epochs (96 steps), 0.94 / 0.79 after 12, 0.94 / 0.75 after 20 (320 steps); at epsilon 1,
#: 8, 20 after 12 epochs 0.80 / 0, 0.87 / 0, 0.91 / 0.39, after 20 epochs 0.77 / 0, 0.84 / 0.13, 0.89 / 0.53
#: (README "Segmentation"). The earlier 6 epochs on 16 volumes with smaller lesions learned no tumour even without
#: DP.
SEGMENTATION_TRAINING: dict[str, Any] = {
    "arch": "unet", "epochs": 20, "batch_size": 16, "lr": 1e-2, "class_weights": PAPER_MSD_LIVER_CLASS_WEIGHTS}

#: ``dpaudit train`` and ``dpaudit mia audit`` (TrainConfig): per task, the value of each option left at None.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"arch": DEFAULT_ARCH, "epochs": 10, "batch_size": 64, "lr": 2e-3, "class_weights": ()},
    "segmentation": SEGMENTATION_TRAINING,
}

#: ``dpaudit profile`` (ProfileConfig): per task, the value of each option left at None.
#:
#: Classification, measured on the demo. seeds 3, not 2: utility is reported as a 95% t-interval over seeds with
#: Welch's test against the baseline, and t(0.975, 1) = 12.7 makes two seeds' intervals span the whole MCC range
#: (t(0.975, 2) = 4.3). Measured on the demo (defaults, 3 seeds, one run on the shared 2-core machine under load):
#: seeds 0-1 alone gave MCC 0.447 [-1, 1] at epsilon 1 and 0.806 [0.436, 1] at 10^9; all three 0.522 [0.010, 1]
#: and 0.808 [0.735, 0.880] (the non-private 0.790 [0.571, 1], p = 0.77: not distinguishable, as in the seed
#: paper). The third seed's five runs were 33% of the training time (563 of 1702 s), so the demo takes about 1.5
#: times as long as with 2 seeds. batch_size 64, not 128: at 4 epochs on the demo's 1,399 training images the
#: non-private baseline needs the 88 steps (measured: MCC 0.835 +- 0.064 at 64 against 0.655 +- 0.101 at 128, 2
#: seeds; the demo profile in 7 min).
#:
#: Segmentation: the training above, one seed and the seed paper's MSD Liver budgets 1, 8, 20 (a CPU profile of
#: demo-ct in minutes; README "Segmentation").
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"arch": DEFAULT_ARCH, "epochs": 4, "batch_size": 64, "lr": 2e-3, "class_weights": (),
                       "seeds": 3, "epsilons": (1.0, 8.0, 20.0, 1e9)},
    "segmentation": {**SEGMENTATION_TRAINING, "seeds": 1, "epsilons": (1.0, 8.0, 20.0)},
}


def format_default(value: Any) -> str:
    """A default as the command line spells it: ``(0.1, 0.4, 0.5)`` -> ``0.1,0.4,0.5``, ``()`` -> ``none``,
    ``1e9`` -> ``1e9``."""
    if isinstance(value, tuple):
        return ",".join(format_default(v) for v in value) if value else "none"
    if isinstance(value, float):
        mantissa, _, exponent = f"{value:g}".partition("e")
        return f"{mantissa}e{int(exponent)}" if exponent else mantissa
    return str(value)


def task_default_help(table: dict[str, dict[str, Any]], name: str) -> str:
    """``"Default: 10 (classification), 20 (segmentation)."`` for ``--help`` (``"Default: 10."`` for one task)."""
    if len(table) == 1:
        return f"Default: {format_default(next(iter(table.values()))[name])}."
    return "Default: " + ", ".join(f"{format_default(d[name])} ({task})" for task, d in table.items()) + "."


def apply_task_defaults(config: Any, table: dict[str, dict[str, Any]], task: str) -> tuple[str, ...]:
    """Fill every field of the frozen ``config`` that is None with its task's default; return their names.

    ``config.task_defaults`` (names filled earlier, e.g. read back from a profile.json) is kept when each named
    field still holds its task's default, so the record survives a round trip; a name that does not is an error.
    """
    defaults = table[task]
    filled = []
    for name, value in defaults.items():
        if getattr(config, name) is None:
            object.__setattr__(config, name, value)
            filled.append(name)
    earlier = tuple(getattr(config, "task_defaults", ()) or ())
    for name in earlier:
        if name not in defaults or getattr(config, name) != defaults[name]:
            raise invalid("task_defaults", name, f"options that hold the {task} default",
                          "leave task_defaults out; the configuration fills it")
    return tuple(n for n in defaults if n in filled or n in earlier)


def describe_task_defaults(config: Any) -> str | None:
    """``"segmentation defaults: arch unet, epochs 20, ..."``, or None when no option took a task default."""
    names = tuple(getattr(config, "task_defaults", ()) or ())
    if not names:
        return None
    def shown(n: str) -> str:
        value = format_default(getattr(config, n))
        if n == "class_weights" and getattr(config, n) == PAPER_MSD_LIVER_CLASS_WEIGHTS:
            return f"{value} for background, liver, tumour (else none)"
        return value

    return (f"{config.task} defaults: " + ", ".join(f"{n} {shown(n)}" for n in names)
            + " (pass an option to change it)")


def parse_class_weights(value: Any) -> tuple[float, ...] | None:
    """``--class-weights``: ``none`` -> () (unweighted), ``"0.1,0.4,0.5"`` or a sequence -> positive floats;
    None stays None (the task's default)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", ""):
            return ()
        items: list[Any] = [v.strip() for v in text.split(",") if v.strip()]
    else:
        items = list(value)
    try:
        weights = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise invalid("class_weights", value, "none or one positive number per class, e.g. 0.1,0.4,0.5",
                      "pass --class-weights 0.1,0.4,0.5 or --class-weights none") from None
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise invalid("class_weights", value, "positive finite numbers, one per class",
                      "pass --class-weights 0.1,0.4,0.5 or --class-weights none")
    return weights


def parse_window(window: str | tuple[float, float] | Sequence[float] | None) -> tuple[float, float] | None:
    """``"LOW,HIGH"`` (or a pair) to a (low, high) pair of finite numbers with low < high; None stays None.

    >>> parse_window("-100,200")
    (-100.0, 200.0)
    """
    if window is None:
        return None
    parts = window.split(",") if isinstance(window, str) else list(window)
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise invalid("window", window, "two numbers LOW,HIGH", "pass --window -100,200 (liver CT, in HU)",
                      cls=DataError) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise invalid("window", window, "two finite numbers LOW,HIGH with LOW < HIGH",
                      "pass --window -100,200 (liver CT, in HU)", cls=DataError)
    return lo, hi
