"""Utility metrics on a test split: MCC (the seed paper's metric), balanced accuracy, AUROC, accuracy, subgroups.

Pure numpy. Every value is an empirical measurement on the given split (no interval is attached here; the spread
over ``--seeds`` is reported by the training run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from dpaudit.errors import DataError
from dpaudit.identifiers import MIN_SUBGROUP_UNITS, withhold_histogram

__all__ = ["ClassificationMetrics", "GroupMetrics", "accuracy", "auroc", "balanced_accuracy", "choose_threshold", "classify",
           "confusion_matrix", "mcc", "subgroup_metrics"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts C[i, j] of true class i predicted as j."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def mcc(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient; for K > 2 classes Gorodkin's R_K generalisation.

    Matthews, BBA 1975; Gorodkin, Comput. Biol. Chem. 2004, eq. (8):
    R_K = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)) with c correct predictions, s
    samples, t_k true and p_k predicted counts of class k. When every prediction is one class the formula is 0/0;
    it is then 0 (no correlation), the convention of Chicco & Jurman, BMC Genomics 2020 (the seed paper's [33])
    and scikit-learn. NaN when ``y_true`` holds fewer than two classes (no correlation can be measured).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    s = cm.sum()
    c = np.trace(cm)
    t = cm.sum(axis=1)
    p = cm.sum(axis=0)
    denom = math.sqrt(max(s * s - float(p @ p), 0.0)) * math.sqrt(max(s * s - float(t @ t), 0.0))
    if np.count_nonzero(t) < 2:
        return float("nan")
    return float((c * s - float(p @ t)) / denom) if denom > 0 else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(np.asarray(y_pred) == y_true)) if len(y_true) else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    t = cm.sum(axis=1)
    present = t > 0
    return float(np.mean(np.diag(cm)[present] / t[present])) if present.any() else float("nan")


def _binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos n_neg) with mid-ranks for ties (Hanley & McNeil, Radiology 1982)."""
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # mid-ranks: equal scores share the mean of their ranks
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mid = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mid, counts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve: binary from the class-1 probability; K > 2 the macro one-vs-rest mean over
    classes present (NaN if fewer than two classes are present)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise DataError(f"probs must be N x K for N = {len(y_true)} labels, got shape {probs.shape}.")
    if probs.shape[1] == 2:
        return _binary_auroc(y_true == 1, probs[:, 1])
    vals = [_binary_auroc(y_true == k, probs[:, k]) for k in range(probs.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if len(vals) >= 2 else float("nan")


@dataclass(frozen=True)
class GroupMetrics:
    """MCC and accuracy of one subgroup (e.g. sex = female) on one split; ``mcc`` is NaN when undefined in the
    subgroup.

    ``n`` counts the subgroup's images in the split, ``units`` its privacy units (patients; images when the data
    carry no patient ids; None in profiles written before they were counted). A cell held by fewer than
    :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` units in the split is ``withheld``: ``n``, ``units``, ``mcc``
    and ``accuracy`` are None and ``reason`` says why. Small-cell suppression at loading counts units over the
    whole data; a value held by enough patients there may still be held by one or two in the test split, and a
    metric of one or two identifiable patients discloses their results (accuracy 0.5 on two patients: one of them
    was misclassified) while being too noisy to act on.
    """

    group: str
    value: str
    n: int | None
    mcc: float | None
    accuracy: float | None
    units: int | None = None
    withheld: bool = False
    reason: str | None = None

    #: Why a metric is null in JSON (dpaudit.codec writes NaN as null with its reason).
    UNDEFINED: ClassVar[dict[str, str]] = {
        "mcc": "not defined: the subgroup's images hold one class only (MCC needs both)",
        "accuracy": "not defined: the subgroup holds no image"}

    def __post_init__(self) -> None:
        shown = {"n": self.n, "units": self.units, "mcc": self.mcc, "accuracy": self.accuracy}
        if self.withheld and (any(v is not None for v in shown.values()) or not self.reason):
            raise DataError(f"subgroup {self.group} = {self.value}: a withheld cell holds no count or metric and "
                            f"says why (got {', '.join(k for k, v in shown.items() if v is not None) or 'no reason'}). "
                            "Fix: build it with GroupMetrics.withheld_cell.")
        if not self.withheld and (self.n is None or self.mcc is None or self.accuracy is None):
            raise DataError(f"subgroup {self.group} = {self.value}: a published cell needs n, mcc and accuracy. "
                            "Fix: pass them, or build a withheld cell with GroupMetrics.withheld_cell.")

    @classmethod
    def withheld_cell(cls, group: str, value: str, reason: str) -> GroupMetrics:
        """A cell too small to publish: no count, no metric, only why."""
        return cls(group, value, None, None, None, withheld=True, reason=reason)

    @property
    def null_reasons(self) -> dict[str, str]:
        """Why this cell's fields are null in JSON (dpaudit.codec): a withheld cell's count and metrics."""
        if not self.withheld:
            return {}
        return dict.fromkeys(("n", "units", "mcc", "accuracy"), f"withheld: {self.reason}")

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A published cell's null metric reads back as NaN (not defined). A cell of an earlier layout (no unit
        count): withheld when it holds fewer than
        :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` images, since its units are no more than its images (a
        larger cell's units are unknown and it stays)."""
        if data.get("withheld") is False:
            # a published cell's null metric is NaN (not defined): ``float | None`` would read null as None
            return {**data, **{k: "nan" for k in ("mcc", "accuracy") if data.get(k) is None}}
        if "withheld" in data or not isinstance(data.get("n"), int) or data["n"] >= MIN_SUBGROUP_UNITS:
            return data
        return {"group": data.get("group"), "value": data.get("value"), "n": None, "mcc": None, "accuracy": None,
                "withheld": True, "reason": f"fewer than {MIN_SUBGROUP_UNITS} images in the split (the profile "
                                            "predates counting patients)"}


@dataclass(frozen=True)
class ClassificationMetrics:
    """Utility of a classifier on one split (empirical).

    ``mcc`` is the seed paper's metric (section 4.2). Predictions follow ``decision_rule``: the arg-max class, or
    for two classes the operating point (threshold on the class-1 probability) chosen on the validation split,
    as a clinic would fix it before deployment. ``mcc_argmax`` is the arg-max value beside it: DP-SGD models on
    imbalanced data often rank well (AUROC) yet predict only the majority class at 0.5, where MCC is 0.
    """

    n: int
    mcc: float
    balanced_accuracy: float
    auroc: float
    accuracy: float
    loss: float
    subgroups: tuple[GroupMetrics, ...] = field(default_factory=tuple)
    threshold: float | None = None
    mcc_argmax: float = float("nan")

    #: Written to JSON beside the fields (dpaudit.codec), for the reader.
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("decision_rule",)
    #: Why a metric is null in JSON (dpaudit.codec writes NaN as null with its reason).
    UNDEFINED: ClassVar[dict[str, str]] = {
        "mcc": "not defined: the split's labels or predictions hold one class only",
        "mcc_argmax": "not defined: the split's labels or arg-max predictions hold one class only",
        "balanced_accuracy": "not defined: the split holds no image",
        "auroc": "not defined: the split's labels hold one class only",
        "accuracy": "not defined: the split holds no image",
        "loss": "not measured on this split"}

    @property
    def decision_rule(self) -> str:
        if self.threshold is None:
            return "arg-max class"
        return f"class-1 probability >= {self.threshold:.3g} (chosen on the validation split)"


def subgroup_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: Mapping[str, np.ndarray],
                     num_classes: int, *, units: np.ndarray, unit: str = "image", split: str = "test"
                     ) -> tuple[GroupMetrics, ...]:
    """MCC and accuracy per value of every subgroup variable (sorted by group, then value).

    ``units``: the privacy unit of each image (the split's ``patient_ids``), ``unit`` what they are (``"patient"``,
    ``"image"``, ...: :attr:`dpaudit.data.DatasetSplits.unit`), ``split`` the split's name for the reason. A value
    held by fewer than :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` distinct units of this split is withheld
    (:meth:`GroupMetrics.withheld_cell`): units are counted, not images. A column's values partition the split,
    whose ``n`` and accuracy are published: when one value is withheld, the next smallest is withheld with it as its
    complement (:func:`dpaudit.identifiers.withhold_histogram`), else its count and accuracy would follow by
    subtraction.
    """
    units = np.asarray(units).astype(str)
    if units.shape != (len(y_true),):
        raise DataError(f"units must hold one privacy unit per image ({len(y_true)}), got shape {units.shape}. "
                        "Fix: pass the split's patient_ids.")
    out = []
    for name in sorted(groups):
        col = np.asarray(groups[name])
        values = sorted(set(col.tolist()))
        sels = [col == value for value in values]
        held = [len(set(units[sel].tolist())) for sel in sels]
        # the values partition the split, whose n and accuracy are published: a lone withheld cell's n and
        # accuracy would follow by subtraction, so its complement goes with it
        _, reasons = withhold_histogram([int(sel.sum()) for sel in sels], held, unit, f"the {split} split")
        for value, sel, held_by, reason in zip(values, sels, held, reasons, strict=True):
            if reason is not None:
                out.append(GroupMetrics.withheld_cell(name, str(value), reason))
                continue
            out.append(GroupMetrics(name, str(value), int(sel.sum()), mcc(y_true[sel], y_pred[sel], num_classes),
                                    accuracy(y_true[sel], y_pred[sel]), units=held_by))
    return tuple(out)


def choose_threshold(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """The threshold on the class-1 probability that maximises MCC on these (validation) labels.

    Returns None when it cannot be chosen (not two classes, or one class absent), in which case the arg-max rule
    applies. Candidates are the midpoints between consecutive distinct scores (and 0.5); ties go to the
    threshold closest to 0.5, so an uninformative model keeps the usual rule.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 2 or len(y_true) == 0:
        return None
    pos = y_true == 1
    n_pos, n = int(pos.sum()), len(y_true)
    if n_pos == 0 or n_pos == n:
        return None
    score = probs[:, 1]
    order = np.argsort(-score, kind="mergesort")
    s_sorted, pos_sorted = score[order], pos[order]
    # Predict positive for the top j scores, j = 1..n-1, only at boundaries between distinct scores.
    tp = np.cumsum(pos_sorted)[:-1].astype(np.float64)
    j = np.arange(1, n, dtype=np.float64)
    fp = j - tp
    fn = n_pos - tp
    tn = (n - n_pos) - fp
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)
    distinct = s_sorted[:-1] > s_sorted[1:]
    if not distinct.any():
        return None
    m = np.where(distinct, m, -np.inf)
    cut = 0.5 * (s_sorted[:-1] + s_sorted[1:])
    best = m.max()
    if best <= 0:
        return None
    candidates = cut[m >= best - 1e-12]
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


def classify(y_true: np.ndarray, probs: np.ndarray, *, loss: float = float("nan"),
             groups: Mapping[str, np.ndarray] | None = None, threshold: float | None = None,
             units: np.ndarray | None = None, unit: str = "image", split: str = "test") -> ClassificationMetrics:
    """All metrics from true labels and predicted class probabilities (N x K).

    ``units``, ``unit``, ``split``: the privacy unit of each image, what it is and the split's name, for the
    subgroups' small-cell rule (:func:`subgroup_metrics`); needed when ``groups`` holds any subgroup.

    ``threshold`` (two classes only): predict class 1 when its probability is at least this value, e.g. the one
    :func:`choose_threshold` picked on the validation split; None predicts the arg-max class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    y_argmax = probs.argmax(axis=1)
    if threshold is not None and k != 2:
        raise DataError(f"threshold needs two classes, got {k}. Fix: pass threshold=None.")
    y_pred = (probs[:, 1] >= threshold).astype(np.int64) if threshold is not None else y_argmax
    if groups and units is None:
        raise DataError("classify: subgroups need the privacy unit of each image (a small cell is counted in "
                        "units, not images). Fix: pass units=the split's patient_ids.")
    return ClassificationMetrics(
        n=len(y_true), mcc=mcc(y_true, y_pred, k), balanced_accuracy=balanced_accuracy(y_true, y_pred, k),
        auroc=auroc(y_true, probs), accuracy=accuracy(y_true, y_pred), loss=float(loss),
        subgroups=subgroup_metrics(y_true, y_pred, groups or {}, k,
                                   units=np.arange(len(y_true)) if units is None else units, unit=unit, split=split),
        threshold=threshold,
        mcc_argmax=mcc(y_true, y_argmax, k))
