"""Splitting a dataset across federated clients (sites): IID, Dirichlet over labels, or a metadata column.

The unit that is assigned to a client is the patient (``ImageDataset.patient_ids``): all images of one patient stay
at one site, as in a real federation. The same partition rule is applied to the training, validation and test
splits, so every client has its own test split drawn from its own label mixture.

* ``iid``: patients are shuffled and dealt to clients round-robin.
* ``dirichlet:ALPHA``: for each class c, a share vector p_c ~ Dirichlet(alpha, ..., alpha) over the clients
  (Hsu, Qi, Brown, "Measuring the effects of non-identical data distribution for federated visual
  classification", arXiv 1909.06335, section 3); the patients of class c are assigned to client k with
  probability p_c[k]. Small alpha: each client sees few classes. The same p_c serve every split. The draw is
  repeated (from the same seeded stream) until every client holds at least ``min_train`` training images.
* ``column:NAME``: one client per distinct value of the metadata column ``NAME`` (e.g. a site or scanner column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dpaudit.errors import ConfigError, check_int, invalid

__all__ = ["Partition", "parse_partition", "partition_indices"]

#: Redraws of the Dirichlet shares before giving up on a partition in which every client has data.
MAX_DIRICHLET_DRAWS = 200


@dataclass(frozen=True)
class Partition:
    """A parsed ``--partition`` value: ``kind`` is ``iid``, ``dirichlet`` (with ``alpha``) or ``column`` (``column``)."""

    kind: str
    alpha: float | None = None
    column: str | None = None

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "column":
            return f"column:{self.column}"
        return "iid"


def parse_partition(text: str, *, flag: str = "--partition") -> Partition:
    """Parse ``iid``, ``dirichlet:ALPHA`` (ALPHA > 0) or ``column:NAME`` (``flag`` names the option in errors).

    >>> parse_partition("dirichlet:0.5")
    Partition(kind='dirichlet', alpha=0.5, column=None)
    """
    allowed = "iid, dirichlet:ALPHA (ALPHA > 0) or column:NAME"
    fix = f"pass e.g. {flag} dirichlet:0.5"
    if not isinstance(text, str):
        raise invalid(flag, text, allowed, fix)
    if text == "iid":
        return Partition("iid")
    m = re.fullmatch(r"dirichlet:([0-9.eE+-]+)", text)
    if m:
        try:
            alpha = float(m.group(1))
        except ValueError:
            raise invalid(flag, text, allowed, fix) from None
        if not alpha > 0 or not np.isfinite(alpha):
            raise invalid(flag, text, allowed, fix)
        return Partition("dirichlet", alpha=alpha)
    m = re.fullmatch(r"column:(\w+)", text)
    if m:
        return Partition("column", column=m.group(1))
    raise invalid(flag, text, allowed, fix)


def _patients(labels: np.ndarray, patient_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique patient ids in first-appearance order, each patient's label (of its first image), image -> patient)."""
    if patient_ids is None:
        patient_ids = np.arange(len(labels))
    uniq, first, inverse = np.unique(patient_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-appearance order: independent of how ids sort
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], labels[first[order]], rank[inverse]


def partition_indices(split_labels: list[np.ndarray], split_patients: list[np.ndarray | None],
                      split_columns: list[np.ndarray | None], partition: Partition, clients: int, *,
                      num_classes: int, seed: int, min_train: int = 4) -> list[list[np.ndarray]]:
    """Indices of each client's images in each split: ``result[split][client]`` (sorted).

    ``split_labels[0]`` is the training split (``min_train`` applies to it). ``split_columns`` holds the metadata
    column of each split for ``column:NAME`` (else None).
    """
    clients = check_int("clients", clients, minimum=1, fix="pass --clients 5")
    rng = np.random.default_rng([seed, 0xFED])
    if partition.kind == "column":
        if any(c is None for c in split_columns):
            raise ConfigError(f"partition column:{partition.column}: the dataset has no metadata column "
                              f"{partition.column!r}. Fix: pass --partition iid or dirichlet:ALPHA, or a column "
                              "the dataset has (demo: sex, age_band).")
        values = sorted({str(v) for col in split_columns for v in col})  # type: ignore[union-attr]
        if len(values) != clients:
            raise invalid("clients", clients, f"the number of distinct values of column {partition.column!r} "
                          f"({len(values)}: {', '.join(values)})", f"pass --clients {len(values)}")
        return [[np.nonzero(np.asarray(col).astype(str) == v)[0] for v in values]  # type: ignore[union-attr]
                for col in split_columns]

    def assign(labels: np.ndarray, patients: np.ndarray | None, shares: np.ndarray | None) -> list[np.ndarray]:
        _, plabel, of_image = _patients(labels, patients)
        owner = np.empty(len(plabel), dtype=np.int64)
        if shares is None:  # iid: shuffle patients, deal round-robin
            perm = rng.permutation(len(plabel))
            owner[perm] = np.arange(len(plabel)) % clients
        else:
            for c in range(num_classes):
                members = np.nonzero(plabel == c)[0]
                owner[members] = rng.choice(clients, size=len(members), p=shares[c])
        image_owner = owner[of_image]
        return [np.nonzero(image_owner == k)[0] for k in range(clients)]

    for _ in range(MAX_DIRICHLET_DRAWS):
        shares = (rng.dirichlet(np.full(clients, partition.alpha), size=num_classes)
                  if partition.kind == "dirichlet" else None)
        result = [assign(lab, pat, shares) for lab, pat in zip(split_labels, split_patients, strict=True)]
        if min(len(ix) for ix in result[0]) >= min_train:
            return result
        if partition.kind == "iid":
            break
    raise ConfigError(f"partition {partition} over {clients} clients leaves a client with fewer than {min_train} "
                      f"training images (tried {MAX_DIRICHLET_DRAWS if partition.kind == 'dirichlet' else 1} "
                      "draws). Fix: pass fewer --clients, a larger Dirichlet alpha, or more --max-images.")
