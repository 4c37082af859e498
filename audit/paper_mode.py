"""Paper mode for segmentation: the MSD Liver rows of the seed paper's Table 3, recomputed.

Ziller et al. (the seed paper), Table 3, MSD Liver: delta = 8e-7, N_train = 106 volumes, batch size 1 (q = 1/106),
500 epochs (T = 53 000 steps, section 4.2.3), kappa = 1/106, sigma from Opacus' RDP calibration for each epsilon.
The paper's ReRo numbers come from the Edgeworth approximation of Hayes et al. (an approximation, not a bound);
``dpaudit.bounds.rero_bound(method="edgeworth")`` reproduces them (spec bounds.md, "Paper mode"). The table's own
sigma column is a different setting and is not used.

When it applies (:func:`is_msd_liver`): the report adds the paper-mode appendix only for an MSD task folder
(``msd:PATH``) whose classes are MSD Liver's: background, liver and a tumour class (``cancer`` in Task03_Liver's
``dataset.json``; ``tumour``/``tumor``/``lesion`` accepted). The folder's name is not required (copies are often
renamed); the labels are, since the paper's rows describe the liver and tumour task, not another organ's. The
built-in ``demo-ct`` is liver-like but synthetic and has no row in the paper, so it gets no appendix.

Pure: bounds only (numpy, scipy), no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dpaudit.config import LIVER_TUMOUR_NAMES, is_liver_classes

__all__ = ["MSD_LIVER_PAPER", "PaperRow", "is_msd_liver", "msd_liver_rows"]

#: Names of MSD Liver's tumour class that count as its (Task03_Liver's dataset.json says "cancer").
TUMOUR_NAMES = LIVER_TUMOUR_NAMES


def is_msd_liver(dataset: str, label_names: Sequence[str]) -> bool:
    """True when the paper's MSD Liver rows are the comparison for this data: ``msd:PATH`` with the classes
    background, liver and a tumour class (in this order, names compared case-insensitively)."""
    return isinstance(dataset, str) and dataset.startswith("msd:") and is_liver_classes(label_names)

#: (epsilon, worst case, relaxed) as printed in the seed paper's Table 3, MSD Liver (percent / 100).
MSD_LIVER_PAPER = ((1.0, 0.0166, 0.0097), (8.0, 0.1796, 0.0368), (20.0, 0.7424, 0.2737))
#: The paper's MSD Liver training configuration (section 4.2.3 and Table 3's caption).
MSD_LIVER_N_TRAIN = 106
MSD_LIVER_STEPS = 500 * 106
PAPER_DELTA = 8e-7


@dataclass(frozen=True)
class PaperRow:
    """One budget in paper mode: sigma (Opacus RDP calibration), Edgeworth worst case and relaxed at kappa = 1/N
    (approximations, not bounds), and the values printed in the paper (None where the paper has no row)."""

    epsilon: float
    noise_multiplier: float
    worst_case: float
    relaxed: float
    paper_worst_case: float | None
    paper_relaxed: float | None


def msd_liver_rows(epsilons: tuple[float, ...] = (1.0, 8.0, 20.0)) -> tuple[PaperRow, ...]:
    """The seed paper's MSD Liver configuration at each epsilon, in paper mode (Edgeworth, RDP-calibrated sigma)."""
    from dpaudit.bounds import noise_for_epsilon, rero_bound

    q, steps, kappa = 1.0 / MSD_LIVER_N_TRAIN, MSD_LIVER_STEPS, 1.0 / MSD_LIVER_N_TRAIN
    printed = {e: (w, r) for e, w, r in MSD_LIVER_PAPER}
    rows = []
    for eps in epsilons:
        sigma = float(noise_for_epsilon(eps, q, steps, PAPER_DELTA, accountant="rdp"))
        w = rero_bound(sigma, q, steps, [kappa], threat_model="worst_case", method="edgeworth")
        r = rero_bound(sigma, q, steps, [kappa], threat_model="relaxed", method="edgeworth")
        pw, pr = printed.get(float(eps), (None, None))
        rows.append(PaperRow(float(eps), sigma, float(w.gamma[0]), float(r.gamma[0]), pw, pr))
    return tuple(rows)
