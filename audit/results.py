"""The frozen results of training and of the canary membership audit (numpy only, no torch).

:func:`dpaudit.audit.train.train` returns a :class:`TrainResult` and
:func:`dpaudit.audit.canary.run_canary_audit` a :class:`CanaryAuditResult`; ``dpaudit train --json``,
``dpaudit mia audit --json``, ``metrics.json`` and the profile's ``profile.json`` all store these same classes
through :mod:`dpaudit.codec`, so the profile's schema and the report read them without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from dpaudit.attacks.lower_bounds import OneRunScoreAudit, low_epsilon_caveat
from dpaudit.audit.metrics import ClassificationMetrics, GroupMetrics
from dpaudit.audit.segmentation import SegmentationMetrics
from dpaudit.codec import JsonResult
from dpaudit.config import DpSgdConfig, PrivacyUnit
from dpaudit.numfmt import LABEL_EMPIRICAL, LABEL_RDP, LABEL_UPPER, empirical_epsilon_label, upper

__all__ = ["CanaryAuditResult", "EpochRecord", "Metrics", "TprAtFpr", "TrainResult", "Utility"]

#: The task's utility on one split: a classifier's or a segmentation network's.
Metrics = ClassificationMetrics | SegmentationMetrics


@dataclass(frozen=True, eq=False)
class EpochRecord(JsonResult):
    """One epoch of one run: mean training loss, validation utility, and the privacy spent so far."""

    epoch: int
    steps: int
    train_loss: float
    val_loss: float
    val_mcc: float
    val_accuracy: float
    epsilon_rdp: float | None  # RDP upper bound on epsilon after this epoch; None for non-private
    seconds: float
    val_dice: float | None = None  # segmentation: mean Dice over foreground classes (val_mcc is then NaN)


@dataclass(frozen=True)
class Utility:
    """A run's test utility by metric name (a view of :attr:`TrainResult.metrics` for tables; not stored).

    A classifier's MCC, balanced accuracy, AUROC and accuracy; for segmentation (``mcc`` NaN) Dice and IoU per
    foreground class in class order (None where no test volume holds the class) and the pixel accuracy.
    Undefined values (NaN) are None.
    """

    mcc: float
    balanced_accuracy: float | None = None
    auroc: float | None = None
    accuracy: float | None = None
    classes: tuple[str, ...] = ()
    dice: tuple[float | None, ...] = ()
    iou: tuple[float | None, ...] = ()

    METRICS: ClassVar[tuple[str, ...]] = ("mcc", "balanced_accuracy", "auroc", "accuracy")

    @classmethod
    def of(cls, metrics: Metrics) -> Utility:
        if isinstance(metrics, SegmentationMetrics):
            names = tuple(metrics.dice)
            return cls(mcc=math.nan, classes=names, dice=tuple(_finite(metrics.dice[c]) for c in names),
                       iou=tuple(_finite(metrics.iou.get(c)) for c in names),
                       accuracy=_finite(metrics.pixel_accuracy))
        return cls(mcc=float(metrics.mcc), balanced_accuracy=_finite(metrics.balanced_accuracy),
                   auroc=_finite(metrics.auroc), accuracy=_finite(metrics.accuracy))

    def values(self) -> dict[str, float | None]:
        """Every metric by name: the classifier's four, then ``dice_<class>`` and ``iou_<class>``."""
        out: dict[str, float | None] = {m: getattr(self, m) for m in self.METRICS}
        out.update({f"dice_{c}": d for c, d in zip(self.classes, self.dice, strict=True)})
        out.update({f"iou_{c}": v for c, v in zip(self.classes, self.iou, strict=True)})
        return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True, eq=False)
class TrainResult(JsonResult):
    """What one training run (``seeds`` runs) produced: ``dpaudit train``'s result, stored whole in
    ``metrics.json`` and, one per budget and seed, in the profile's ``train``.

    Privacy numbers: ``epsilon_achieved`` is the tight PLD epsilon (a sound upper bound) of the mechanism that
    actually ran, ``epsilon_rdp`` the RDP epsilon Opacus would report (also a sound upper bound, usually the
    larger), ``epsilon_patient`` the tight
    epsilon per patient when the unit is the patient and k > 1. Utility numbers are empirical, on the test split, of
    the first seed's model (the one in the checkpoint); ``seed_summary`` holds mean and standard deviation over seeds
    per metric. ``init`` is ``scratch`` or the init file's name (never its folder, which may name a cohort).
    ``checkpoint``, ``metrics_path`` and ``curve_path`` are the files written (relative to the profile's folder in
    a profile). ``max_grad_norm`` is None without DP (nothing is clipped).
    """

    dataset: str
    task: str
    arch: str
    arch_args: dict[str, Any]
    init: str
    trainable: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str | None  # torch.optim name (None: not recorded, in profiles of an earlier dpaudit)
    epsilon_target: float | None
    epsilon_achieved: float | None
    epsilon_rdp: float | None
    noise_multiplier: float
    sampling_probability: float
    steps: int
    target_delta: float
    delta_rule: str
    max_grad_norm: float | None
    n_train: int
    label_names: tuple[str, ...]
    metrics: Metrics
    val_metrics: Metrics | None
    history: tuple[EpochRecord, ...]
    per_seed: tuple[Metrics, ...]
    seed_summary: dict[str, tuple[float, float | None]]
    wall_seconds: float
    train_samples_per_second: float
    notes: tuple[str, ...] = ()
    replaced_layers: tuple[str, ...] = ()
    init_report: tuple[str, ...] = ()
    trainable_parameters: int = 0
    frozen_parameters: int = 0
    checkpoint: str | None = None
    metrics_path: str | None = None
    curve_path: str | None = None
    privacy: PrivacyUnit | None = None
    epsilon_patient: float | None = None
    data_notes: tuple[str, ...] = ()  # files the loader skipped and what it decided (counts only)
    reused_checkpoint: bool = False  # a profile found this run finished in its folder and did not train again
    class_weights: tuple[float, ...] = ()  # the loss's weight per class (segmentation); () unweighted
    task_defaults: tuple[str, ...] = ()  # the options that took their task's default (dpaudit.config)

    LABELS: ClassVar[dict[str, str]] = {
        "epsilon_achieved": "sound upper bound (tight PLD accountant), per image (per slice for segmentation): "
                            "what --epsilon sets",
        "epsilon_rdp": f"{LABEL_UPPER} (RDP, Opacus' default orders), per image; beside epsilon_achieved, "
                       f"{LABEL_RDP}",
        "epsilon_patient": "sound upper bound (tight PLD, the k images of one patient moving together)",
        "metrics": "empirical, test split, first seed's model",
        "per_seed": "empirical, test split, each seed's model",
        "val_metrics": "empirical, validation split, first seed's model (where the operating point is chosen)",
        "history": "empirical, per epoch (train_loss on the training batches, val_* on the validation split); "
                   f"epsilon_rdp: {LABEL_UPPER} (RDP) after that epoch",
        "train_samples_per_second": "empirical (this run's speed)",
        "seed_summary": "empirical, [mean, sample standard deviation] over seeds (std null with one seed: not "
                        "estimable)"}
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each privacy and utility field is (written to JSON beside them); under
        ``--privacy-unit image`` on data with patient ids, ``epsilon_patient`` names the data's k it is for."""
        labels = dict(self.LABELS)
        pu = self.privacy
        if self.epsilon_patient is not None and pu is not None and pu.unit == "image":
            labels["epsilon_patient"] = (
                f"sound upper bound (tight PLD), per patient: the privacy.images_per_unit.max = "
                f"{pu.data_records_per_patient} images of one patient moving together; given beside the per-image "
                "guarantee (--privacy-unit image), not what training calibrated")
        return labels

    @property
    def private(self) -> bool:
        return self.epsilon_achieved is not None

    def privacy_statement(self) -> tuple[str, ...]:
        """What the run's epsilon protects, as ``train`` prints it (and ``mia audit``, which trains the same way):
        the privacy unit line and, when a patient has several images, the epsilon per patient beside the
        per-image one that training calibrated. Empty when the run recorded no privacy unit."""
        pu = self.privacy
        if pu is None:
            return ()
        lines = [pu.describe()]
        if self.epsilon_patient is not None:
            seg = self.segmentation
            what, per = ("slices of one volume", "slice") if seg else ("images of one patient", "image")
            image_unit = pu.unit == "image"
            k = pu.data_records_per_patient if image_unit else pu.records_per_patient
            lines.append(f"privacy per patient: epsilon {upper(self.epsilon_patient)} (k = {k} {what} moving "
                         f"together; tight PLD, sound upper bound); the per-{per} epsilon below is what training "
                         "calibrated" + (" and, with --privacy-unit image, the guarantee this run states"
                                         if image_unit else ""))
        return tuple(lines)

    @property
    def dp(self) -> DpSgdConfig | None:
        """The DP-SGD mechanism that ran (None for the non-private baseline)."""
        if not self.private:
            return None
        return DpSgdConfig(self.noise_multiplier, self.sampling_probability, self.steps,
                           self.max_grad_norm if self.max_grad_norm is not None else 1.0, self.target_delta)

    @property
    def epsilon(self) -> float | None:
        """The achieved epsilon (tight PLD, a sound upper bound); None for the non-private baseline."""
        return self.epsilon_achieved

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def utility(self) -> Utility:
        return Utility.of(self.metrics)

    @property
    def subgroups(self) -> tuple[GroupMetrics, ...]:
        return tuple(self.metrics.subgroups)

    @property
    def seconds(self) -> float:
        return self.wall_seconds

    @property
    def n_train_volumes(self) -> int | None:
        """Segmentation: the training volumes (the patient unit; kappa = 1 / volumes)."""
        if not self.segmentation or self.privacy is None:
            return None
        return int(self.privacy.images_per_unit.n_units)


@dataclass(frozen=True, eq=False)
class TprAtFpr(JsonResult):
    """Empirical TPR of the canary test at a threshold set on the non-member canaries' scores.

    ``tpr_low`` / ``tpr_high``: two-sided Clopper-Pearson interval at the audit's confidence; ``fpr_high``:
    one-sided upper limit of the FPR. The threshold is read off the non-members, so the intervals are nominal.
    """

    fpr_target: float
    threshold: float
    true_positives: int
    positives: int
    false_positives: int
    negatives: int
    tpr: float
    tpr_low: float
    tpr_high: float
    fpr: float
    fpr_high: float
    label: str = "empirical"


@dataclass(frozen=True, eq=False)
class CanaryAuditResult(JsonResult):
    """Outcome of a canary membership audit (``dpaudit mia audit``; the profile's ``mia_audits``).

    Attributes
    ----------
    canaries, score, confidence, selection, seed:
        The audit's design (:class:`dpaudit.audit.canary.CanaryAuditConfig`).
    one_run:
        The empirical lower bound (one-run theorem) with the guesses that produced it.
    accountant_epsilon:
        Sound upper bound: tight PLD epsilon of the training run at ``target_delta`` (None: not private).
    epsilon_rdp:
        The looser RDP upper bound Opacus would report.
    ceiling:
        The largest lower bound this design (m canaries, this confidence and selection) could ever report.
    tpr_at_fpr, roc, auc:
        Empirical ROC of the canary scores (members vs non-members), for information; not bounds.
    members:
        How many canaries the coin flips put into training.
    train:
        The training run's result.
    """

    canaries: int
    score: str
    confidence: float
    selection: str
    seed: int
    one_run: OneRunScoreAudit
    accountant_epsilon: float | None
    epsilon_rdp: float | None
    epsilon_target: float | None
    target_delta: float
    ceiling: float
    members: int
    tpr_at_fpr: tuple[TprAtFpr, ...]
    roc: tuple[tuple[float, float], ...]
    auc: float
    train: TrainResult
    seconds: float
    reference_seconds: float | None = None

    LABELS: ClassVar[dict[str, str]] = {
        "epsilon_lower_bound": f"{LABEL_EMPIRICAL}: {empirical_epsilon_label()} (one-run canary audit), per canary "
                               "image",
        "accountant_epsilon": "sound upper bound (tight PLD accountant), per image (record): the unit each canary "
                              "is; per patient see epsilon_patient",
        "epsilon_rdp": f"{LABEL_UPPER} (RDP), per image; beside accountant_epsilon, {LABEL_RDP}",
        "epsilon_patient": "sound upper bound (tight PLD, the k images of one patient moving together); null when "
                           "no patient has several images",
        "ceiling": "sound upper bound on what this design can certify (the epsilon lower bound its canaries, "
                   "confidence and selection would give with all evaluated guesses right); not a measurement",
        "tpr_at_fpr": "empirical (tpr, fpr; tpr_low, tpr_high: two-sided Clopper-Pearson interval at the audit's "
                      "confidence; fpr_high: one-sided upper Clopper-Pearson limit)",
        "roc": "empirical", "auc": "empirical",
        "one_run": "empirical (the guesses of the one-run audit and the lower bound they give)"}
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("epsilon_lower_bound", "epsilon_patient", "privacy_unit",
                                                  "method", "caveat", "labels")

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is; the empirical epsilon at this audit's confidence."""
        return {**self.LABELS, "epsilon_lower_bound": f"{LABEL_EMPIRICAL}: {empirical_epsilon_label(self.confidence)} "
                                                      "(one-run canary audit), per canary image"}

    @property
    def epsilon_patient(self) -> float | None:
        """The training run's epsilon per patient (k > 1 images of one patient), as ``train`` reports it."""
        return self.train.epsilon_patient

    @property
    def privacy_unit(self) -> tuple[str, ...]:
        """What ``accountant_epsilon`` protects: the training run's privacy statement, the lines ``train``
        prints (the unit and k; the epsilon per patient when a patient has several images)."""
        return self.train.privacy_statement()

    @property
    def epsilon_lower_bound(self) -> float:
        return self.one_run.epsilon_lower_bound

    @property
    def method(self) -> str:
        score = "loss" if self.score == "loss" else "loss minus reference-model loss"
        sel = (f"Bonferroni over {self.one_run.tries} guess counts" if self.one_run.selection == "bonferroni"
               else "guess count chosen on a held-out half")
        return f"one-run audit (Steinke et al. 2023), mislabelled canaries, {score} score, {sel}"

    @property
    def caveat(self) -> str:
        """Why a low empirical epsilon does not prove privacy (plain text)."""
        return low_epsilon_caveat(self.epsilon_lower_bound, self.accountant_epsilon, self.canaries, self.ceiling,
                                  self.confidence)
