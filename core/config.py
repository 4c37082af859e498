"""The DP-SGD configuration shared by bounds, attacks, training and the report.

It keeps the raw mechanism parameters, not just epsilon: two runs with equal epsilon can differ in
reconstruction risk (seed paper, section 2.3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dpaudit.errors import DataError, check_int, check_positive, check_probability, invalid


def steps_for(epochs: int, n_train: int, expected_batch_size: int) -> int:
    """Number of DP-SGD steps for ``epochs`` passes with Poisson sampling at rate batch/N (integer arithmetic).

    One epoch is ceil(N / batch) steps, so that every record is expected to be seen once per epoch.
    """
    epochs = check_int("epochs", epochs)
    n_train = check_int("n_train", n_train)
    expected_batch_size = check_int("batch_size", expected_batch_size)
    if expected_batch_size > n_train:
        raise invalid("batch_size", expected_batch_size, f"at most the number of training images ({n_train})",
                      "pass a smaller --batch-size")
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
        object.__setattr__(self, "noise_multiplier", check_positive(
            "noise_multiplier", self.noise_multiplier, allow_zero=True,
            fix="pass the noise standard deviation divided by the clip norm, e.g. --sigma 1.0"))
        object.__setattr__(self, "sampling_probability", check_probability(
            "sampling_probability", self.sampling_probability, open_high=False,
            fix="pass the expected batch size divided by the number of training records, e.g. --q 0.01"))
        object.__setattr__(self, "steps", check_int(
            "steps", self.steps, fix="pass the number of DP-SGD steps, epochs * ceil(N / batch size)"))
        object.__setattr__(self, "max_grad_norm", check_positive(
            "max_grad_norm", self.max_grad_norm, fix="pass a positive clip norm, e.g. 1.0"))
        object.__setattr__(self, "target_delta", check_probability(
            "target_delta", self.target_delta, fix="pass a delta well below 1/N, e.g. 1e-5"))

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

#: What a dataset's ``patient_ids`` can stand for (see :class:`dpaudit.data.DatasetSplits`).
PRIVACY_UNITS = ("patient", "lesion", "image")


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


#: ``--privacy-unit`` choices: the unit every DP statement is made for.
PRIVACY_UNIT_CHOICES = ("patient", "image")


@dataclass(frozen=True)
class PrivacyUnit:
    """The unit the privacy numbers are stated for, and k = the most training images one unit contributes.

    ``unit`` is ``"patient"`` (k = ``records_per_patient`` from the data: DICOM PatientID, a ``patient_id``
    column, a NIfTI volume, HAM10000's lesion_id) or ``"image"`` (k = 1). ``data_unit`` says what the data's ids
    are (``patient``, ``lesion``, ``image``); ``chosen_by`` whether the default or ``--privacy-unit`` chose.
    Only counts: safe to print and to write to checkpoints, JSON and reports.
    """

    unit: str
    data_unit: str
    records_per_patient: int
    images_per_unit: ImagesPerUnit
    chosen_by: str = "default"

    def describe(self) -> str:
        """One line for the console and the report, e.g. ``privacy unit: patient (k = 4 ...)``."""
        ids = {"patient": "patient ids", "lesion": "lesion ids, as no patient ids exist",
               "image": "no patient ids"}[self.data_unit]
        if self.unit == "patient":
            return (f"privacy unit: patient (from the data's {ids}; k = {self.records_per_patient} images per "
                    f"patient at most in the training split, {self.images_per_unit.n_units} patients)")
        why = "--privacy-unit image" if self.chosen_by == "option" else f"the data carry {ids}"
        return f"privacy unit: image ({why}; k = 1)"


# ----------------------------------------------------------------------------------------------------------------
# Defaults shared by every command and configuration

#: The dataset every command loads by default: the built-in synthetic demo (nothing to download).
DEFAULT_DATASET = "demo"
#: The classifier every command trains or attacks by default (segmentation tasks train ``unet``).
DEFAULT_ARCH = "resnet9"

#: Side length images are resized to when no ``--image-size`` is given: the built-in synthetic demos are made at
#: 28 pixels (the demo profile trains 4 budgets x 3 seeds in minutes on a CPU; at 64 pixels each run costs about
#: five times as much); real data default to 64 pixels, the seed paper's attack setting.
DEFAULT_IMAGE_SIZE = 64
DEMO_IMAGE_SIZE = 28
DEMO_DATASETS = ("demo", "demo-ct")


def default_image_size(dataset: str) -> int:
    """The image size of ``dataset`` when none is given: 28 for the built-in demos, 64 otherwise.

    >>> default_image_size("demo"), default_image_size("ham10000")
    (28, 64)
    """
    return DEMO_IMAGE_SIZE if dataset in DEMO_DATASETS else DEFAULT_IMAGE_SIZE


#: What ``--image-size`` says about its default (the same words on every command).
IMAGE_SIZE_DEFAULT_HELP = (f"{DEMO_IMAGE_SIZE} for the built-in demos ({', '.join(DEMO_DATASETS)}), "
                           f"{DEFAULT_IMAGE_SIZE} otherwise")


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
