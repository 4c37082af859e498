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
* ``column:NAME``: one client per distinct value of the metadata column ``NAME`` (e.g. a site or scanner column):
  a subgroup of the dataset, so a table's column only when its name is a known subgroup attribute or it is marked
  ``subgroup_NAME`` (:func:`dpaudit.identifiers.subgroup_name`).
  A column whose value differs between one patient's images is refused (:func:`check_patients_at_one_site`), as is
  a value with fewer than ``min_train`` training images, and a column that identifies patients
  (:func:`dpaudit.identifiers.identifier_reason`: one site per patient name or id would publish them as site names;
  the loaders drop such columns from the metadata, by name and by content).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpaudit.errors import ConfigError, check_int, invalid
from dpaudit.identifiers import MIN_SUBGROUP_UNITS, OTHER, column_key, identifier_reason, subgroup_name

__all__ = ["Partition", "check_patients_at_one_site", "parse_partition", "partition_indices", "partition_splits"]

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
    m = re.fullmatch(r"column:\s*(\S(?:.*\S)?)\s*", text)  # a table's column name as written: spaces allowed
    if m:
        why = identifier_reason(m.group(1))
        if why is not None:
            raise ConfigError(f"{flag} column:{m.group(1)}: the column {m.group(1)!r} identifies patients: {why}; "
                              "sites are never made of patient identifiers. Fix: pass "
                              f"{flag} column:NAME with a site or scanner column, or {flag} iid.")
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
                      num_classes: int, seed: int, min_train: int = 4, option_prefix: str = "--",
                      columns: Sequence[str] | None = None) -> list[list[np.ndarray]]:
    """Indices of each client's images in each split: ``result[split][client]`` (sorted).

    ``split_labels[0]`` is the training split (``min_train`` applies to it, for every kind of partition).
    ``split_columns`` holds the metadata column of each split for ``column:NAME`` (else None). ``option_prefix``
    names the command's options in errors (``--`` for ``federated train``'s ``--partition``/``--clients``,
    ``--federated-`` for the profile's); ``columns``, the metadata columns the dataset has (the error for a column
    it lacks lists them).

    Every patient's images end up at one site (:func:`check_patients_at_one_site`): the per-patient epsilon of a
    site (its k images moving together through that site's mechanism) and the client-level per-patient epsilon
    (the site's) are sound only then. ``iid`` and ``dirichlet`` assign whole patients; a ``column:NAME`` whose
    value differs between one patient's images is refused.
    """
    flag, clients_flag = f"{option_prefix}partition", f"{option_prefix}clients"
    clients = check_int("clients", clients, minimum=1, fix=f"pass {clients_flag} 5")
    rng = np.random.default_rng([seed, 0xFED])
    if partition.kind == "column":
        if any(c is None for c in split_columns):
            others = (f", or {flag} column:NAME with a column the dataset has ({', '.join(columns)})" if columns
                      else " (the dataset has no metadata columns)" if columns is not None
                      else ", or a metadata column of the dataset")
            rename = ("" if subgroup_name(partition.column) is not None  # a subgroup's name already: dropped
                      else f"rename the column subgroup_{partition.column} in the table, or ")
            raise ConfigError(f"{flag} column:{partition.column}: the dataset has no metadata column "
                              f"{partition.column!r} (a table's column is one when its name is a known subgroup "
                              "attribute such as site, center, hospital or scanner, or it is marked subgroup_NAME; "
                              "a column that identifies patients, or whose values are each held by fewer than "
                              f"{MIN_SUBGROUP_UNITS} patients, is none: the loader's notes name those it dropped). "
                              f"Fix: {rename}pass {flag} iid or {flag} dirichlet:ALPHA{others}.")
        values = sorted({str(v) for col in split_columns for v in col})  # type: ignore[union-attr]
        if OTHER in values:  # the loader's small-cell suppression (dpaudit.identifiers.small_cells) merged values
            raise ConfigError(f"{flag} {partition}: column {partition.column!r} holds {OTHER!r}, the values the "
                              f"loader merged because fewer than {MIN_SUBGROUP_UNITS} patients hold each (its notes "
                              "count them): as sites they would be merged into one. Fix: pass "
                              f"{flag} iid, or {flag} column:NAME with a column whose every site holds "
                              f"{MIN_SUBGROUP_UNITS} patients or more.")
        if len(values) != clients:
            raise invalid(clients_flag, clients, f"the number of distinct values of column {partition.column!r} "
                          f"({len(values)})", f"pass {clients_flag} {len(values)}")
        result = [[np.nonzero(np.asarray(col).astype(str) == v)[0] for v in values]  # type: ignore[union-attr]
                  for col in split_columns]
        check_patients_at_one_site(split_patients, result, f"{flag} {partition}",
                                   f"pass {flag} iid or {flag} dirichlet:ALPHA (they keep each patient's images "
                                   f"at one site), or a column whose value is the same for all images of a patient")
        small = [len(ix) for ix in result[0] if len(ix) < min_train]
        if small:
            # counted, not named: a site's value is the user's data (a subgroup's values never reach an error)
            sites = f"{len(small)} of the {len(values)} sites (holding {', '.join(map(str, small))} training images)"
            raise ConfigError(f"{flag} {partition}: {sites} hold fewer than {min_train} training images "
                              f"(each site trains on its share of the training split). Fix: pass {flag} iid or "
                              f"{flag} dirichlet:ALPHA with fewer {clients_flag}, or give those sites more patients in "
                              "the dataset (another --seed draws another train/validation/test split).")
        return result

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
        image_owner = owner[of_image]  # whole patients: every image goes where its patient goes
        return [np.nonzero(image_owner == k)[0] for k in range(clients)]

    for _ in range(MAX_DIRICHLET_DRAWS):
        shares = (rng.dirichlet(np.full(clients, partition.alpha), size=num_classes)
                  if partition.kind == "dirichlet" else None)
        result = [assign(lab, pat, shares) for lab, pat in zip(split_labels, split_patients, strict=True)]
        if min(len(ix) for ix in result[0]) >= min_train:
            check_patients_at_one_site(split_patients, result, f"{flag} {partition}", "report this as a bug")
            return result
        if partition.kind == "iid":
            break
    n_images = len(split_labels[0])
    n_units = len(_patients(split_labels[0], split_patients[0])[1])
    whole = f" of {n_units} patients, each dealt whole to one site" if split_patients[0] is not None else ""
    most = _most_iid_clients(split_labels[0], split_patients[0], clients, min_train, seed)
    fewer = (f"pass {clients_flag} {most} or fewer" if most >= 1 else
             f"train on more images (the training split holds {n_images})")
    fewer_dirichlet = (f"pass fewer {clients_flag} (at most {most}: the most an even deal of the training split "
                       "allows)" if most >= 1 else fewer)
    if partition.kind == "iid":
        raise ConfigError(f"{flag} iid over {clients} clients leaves a client with fewer than {min_train} training "
                          f"images (the training split holds {n_images} images{whole}). Fix: {fewer}.")
    raise ConfigError(f"{flag} {partition} over {clients} clients leaves a client with fewer than {min_train} "
                      f"training images in each of {MAX_DIRICHLET_DRAWS} draws (the training split holds {n_images} "
                      f"images{whole}). Fix: {fewer_dirichlet}, or pass a larger alpha ({flag} "
                      f"dirichlet:{partition.alpha * 10:g}), which spreads the classes more evenly.")


def _most_iid_clients(labels: np.ndarray, patients: np.ndarray | None, clients: int, min_train: int,
                      seed: int) -> int:
    """The most clients below ``clients`` for which ``iid`` gives every site ``min_train`` training images with the
    seed's own draw (the first draw :func:`partition_indices` makes: a permutation of the patients dealt
    round-robin); 0 when none does."""
    _, plabel, of_image = _patients(labels, patients)
    for c in range(clients - 1, 0, -1):
        if len(labels) < c * min_train:
            continue
        perm = np.random.default_rng([seed, 0xFED]).permutation(len(plabel))
        owner = np.empty(len(plabel), dtype=np.int64)
        owner[perm] = np.arange(len(plabel)) % c
        if np.bincount(owner[of_image], minlength=c).min() >= min_train:
            return c
    return 0


def check_patients_at_one_site(split_patients: list[np.ndarray | None], result: list[list[np.ndarray]], what: str,
                               fix: str) -> None:
    """Refuse a partition that puts one patient's images at two or more sites, in any split.

    A patient whose images train at two sites goes through both sites' DP-SGD mechanisms: the per-patient epsilon
    is then the composition of the sites' mechanisms, not the worst site's, and under client-level DP the patient
    is a group of sites, not one. dpaudit states neither, so such a partition is refused before training. The
    message counts the patients and names none of them (identifiers never reach logs or output).
    """
    split = set()
    for patients, owners in zip(split_patients, result, strict=True):
        if patients is None:
            continue  # each image is its own patient
        ids = np.asarray(patients)
        owner = np.full(len(ids), -1, dtype=np.int64)
        for k, ix in enumerate(owners):
            owner[ix] = k
        placed = owner >= 0
        uniq, pid = np.unique(ids[placed], return_inverse=True)
        pairs = np.unique(pid.astype(np.int64) * len(owners) + owner[placed])  # distinct (patient, site) pairs
        sites_per_patient = np.bincount(pairs // len(owners), minlength=len(uniq))
        split.update(uniq[sites_per_patient > 1].tolist())
    if split:
        raise ConfigError(f"{what} puts the images of {len(split)} patient(s) at more than one site: such a "
                          "patient goes through several sites' mechanisms, and the per-patient epsilon of one site "
                          f"would not bound their risk. Fix: {fix}.")


def _group_of(column: str, groups: Sequence[str]) -> str | None:
    """The subgroup of ``groups`` that ``--partition column:NAME`` names: NAME itself, or the subgroup the table's
    column NAME is read as (:func:`dpaudit.identifiers.subgroup_name`: ``subgroup_hospital`` is ``hospital``,
    ``age`` is ``age_band``), compared ignoring case and punctuation as the loader reads column names.

    >>> _group_of("subgroup_hospital", ["hospital", "sex"]), _group_of("age", ["age_band"]), _group_of("x", ["sex"])
    ('hospital', 'age_band', None)
    """
    if column in groups:
        return column
    wanted = {column_key(column), column_key(subgroup_name(column) or column)}
    return next((g for g in groups if column_key(g) in wanted), None)


def partition_splits(splits: Any, partition: Partition | str, clients: int, *, seed: int, option_prefix: str = "--"
                     ) -> list[list[np.ndarray]]:
    """Each client's image indices in the training, validation and test splits of ``splits``
    (:func:`partition_indices`: whole patients per site, every site with training images; errors name
    the options ``{option_prefix}partition`` and ``{option_prefix}clients``). ``partition`` is a
    :class:`Partition` or its text. The profile calls it on its data before any task runs."""
    if isinstance(partition, str):
        partition = parse_partition(partition, flag=f"{option_prefix}partition")
    parts = (splits.train, splits.val, splits.test)
    columns = [c for c in (parts[0].groups or {}) if all(c in (s.groups or {}) for s in parts)]
    group = _group_of(partition.column, columns) if partition.column else None
    cols = [s.groups.get(group) if group else None for s in parts]
    return partition_indices([s.labels.numpy() for s in parts], [s.patient_ids for s in parts], cols, partition,
                             clients, num_classes=splits.num_classes, seed=seed, option_prefix=option_prefix,
                             columns=columns)
