"""Console lines of a segmentation training run (Dice and IoU per class), shared by the commands that train."""

from __future__ import annotations

import math
from typing import Any


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%" if math.isfinite(v) else "n/a"


def print_segmentation(console: Any, result: Any) -> None:
    """Test Dice and IoU per class (per volume, on the reassembled 3-D prediction); the privacy unit (the volume)
    is the command's own line (``PrivacyUnit.describe``)."""
    m = result.metrics
    parts = [f"{name} Dice {_pct(m.dice[name])} (IoU {_pct(m.iou[name])}, {m.volumes_with_class[name]} volumes)"
             for name in m.dice]
    console.print(f"test utility (empirical, {m.n_volumes} volumes, 3-D per volume): " + "; ".join(parts))
    console.print(f"  empty classes: {m.empty_class_convention}")
    if len(result.per_seed) > 1:
        s = result.seed_summary
        console.print(f"over {len(result.per_seed)} seeds (mean +- std): " + ", ".join(
            f"Dice {name} {_pct(s[f'dice_{name}'][0])} +- {_pct(s[f'dice_{name}'][1])}" for name in m.dice))
    weights = result.class_weights
    console.print(f"model: {result.arch}; loss: per-pixel cross-entropy, " + (
        "class weights " + ", ".join(f"{n} {w:g}" for n, w in zip(result.label_names, weights, strict=True))
        if weights else "unweighted"))
    console.print(f"wall time {result.wall_seconds:.1f} s, {result.train_samples_per_second:.1f} training slices/s")
    if result.checkpoint:
        console.print(f"wrote {result.checkpoint}, {result.metrics_path}, {result.curve_path}")
