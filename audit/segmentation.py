"""Segmentation utility: Dice and IoU per class per volume, on the reassembled 3-D prediction (seed paper 2.1.2).

The seed paper "measure[s] the class-wise Dice score of the 3D volumes and report[s] the average over all volumes
for the liver and tumour" (section 2.1.2). Here: every test volume's slices are predicted (arg-max class per
pixel), stacked back in axial order, and per foreground class

    Dice = 2 |P & G| / (|P| + |G|),   IoU = |P & G| / |P | G|

is computed on the whole volume, then averaged over volumes.

Empty-class convention (MONAI's ``DiceMetric(ignore_empty=True)``, the default): a class absent from a volume's
ground truth gives no value for that volume (NaN), and the mean over volumes leaves it out; a class absent from
every test volume has Dice NaN (undefined, shown as "n/a"). A prediction of a class that the ground truth lacks is
thus not penalised in that volume's Dice for that class (it still lowers the other classes' values through the
missed pixels). ``tests/test_segmentation.py`` checks these values against MONAI's ``DiceMetric`` and ``MeanIoU``.

Pure numpy apart from :func:`evaluate_segmentation`, which runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

__all__ = ["EMPTY_CLASS_CONVENTION", "SegmentationMetrics", "dice_iou_per_volume", "evaluate_segmentation",
           "segmentation_metrics"]

EMPTY_CLASS_CONVENTION = ("a class absent from a volume's ground truth is left out of that class's mean over "
                          "volumes (MONAI DiceMetric ignore_empty=True); NaN when absent from every volume")


def dice_iou_per_volume(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of classes 1..K-1 of one volume (label maps of equal shape): two arrays of K-1 values.

    NaN for a class absent from ``target`` (the empty-class convention above).
    """
    pred = np.asarray(pred).reshape(-1)
    target = np.asarray(target).reshape(-1)
    dice = np.full(num_classes - 1, np.nan)
    iou = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        g = target == c
        n_g = int(g.sum())
        if n_g == 0:
            continue
        p = pred == c
        inter = int(np.count_nonzero(p & g))
        n_p = int(p.sum())
        dice[c - 1] = 2.0 * inter / (n_p + n_g)
        iou[c - 1] = inter / (n_p + n_g - inter)
    return dice, iou


def _nanmean(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(v.mean()) if len(v) else float("nan")


def _nanstd(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(v.std(ddof=1)) if len(v) > 1 else float("nan")


@dataclass(frozen=True)
class SegmentationMetrics:
    """Empirical segmentation utility on one split, per foreground class (by name).

    ``dice`` and ``iou`` are means over volumes (each volume's value on its reassembled 3-D prediction);
    ``dice_std`` the standard deviation over volumes; ``volumes_with_class`` how many volumes held the class (the
    number of values in its mean). ``dice_mean`` is the mean over foreground classes (NaN-free classes only).
    """

    n_volumes: int
    dice: Mapping[str, float]
    iou: Mapping[str, float]
    dice_std: Mapping[str, float]
    volumes_with_class: Mapping[str, int]
    pixel_accuracy: float
    loss: float
    empty_class_convention: str = EMPTY_CLASS_CONVENTION
    subgroups: tuple = field(default_factory=tuple)  # no subgroup metadata for volumes

    #: Written to JSON beside the fields (dpaudit.codec), for the reader.
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("dice_mean",)

    @property
    def dice_mean(self) -> float:
        vals = [v for v in self.dice.values() if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def mcc(self) -> float:
        """Not defined for segmentation (NaN); kept so code that reads a classifier's headline finds a number."""
        return float("nan")

    def summary_values(self) -> dict[str, float]:
        """The numbers summarised over seeds: Dice and IoU per class."""
        return {**{f"dice_{k}": v for k, v in self.dice.items()}, **{f"iou_{k}": v for k, v in self.iou.items()}}


def segmentation_metrics(volumes: list[tuple[np.ndarray, np.ndarray]], label_names: tuple[str, ...], *,
                         loss: float = float("nan")) -> SegmentationMetrics:
    """Metrics from (prediction, ground truth) label-map pairs, one pair per volume."""
    k = len(label_names)
    names = label_names[1:]
    if not volumes:
        nan = {n: float("nan") for n in names}
        return SegmentationMetrics(0, nan, nan, nan, dict.fromkeys(names, 0), float("nan"), loss)
    per = [dice_iou_per_volume(p, t, k) for p, t in volumes]
    dice = np.stack([d for d, _ in per])
    iou = np.stack([i for _, i in per])
    correct = sum(int(np.count_nonzero(p == t)) for p, t in volumes)
    total = sum(int(t.size) for _, t in volumes)
    return SegmentationMetrics(
        n_volumes=len(volumes),
        dice={n: _nanmean(dice[:, j]) for j, n in enumerate(names)},
        iou={n: _nanmean(iou[:, j]) for j, n in enumerate(names)},
        dice_std={n: _nanstd(dice[:, j]) for j, n in enumerate(names)},
        volumes_with_class={n: int(np.isfinite(dice[:, j]).sum()) for j, n in enumerate(names)},
        pixel_accuracy=correct / total, loss=loss)


def evaluate_segmentation(model, split, mean: tuple[float, ...], std: tuple[float, ...], *,
                          batch: int = 64) -> SegmentationMetrics:
    """Predict every slice of ``split`` (a :class:`dpaudit.volumes.SliceDataset`), reassemble each volume and
    measure Dice and IoU per class (and the mean per-pixel cross-entropy)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    preds, loss_sum = [], 0.0
    with torch.inference_mode():
        for i in range(0, len(split), batch):
            x = ((split.images[i:i + batch] - m) / s).to(device)
            y = split.labels[i:i + batch].to(device)
            logits = model(x)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum")) / y[0].numel()
            preds.append(logits.argmax(dim=1).cpu())
    model.train(was_training)
    if not preds:
        return segmentation_metrics([], split.label_names)
    pred = torch.cat(preds).numpy()
    target = split.labels.numpy()
    vols = [(pred[ix], target[ix]) for ix in split.volumes()]
    return segmentation_metrics(vols, split.label_names, loss=loss_sum / len(split))
