"""Hospital layouts: DICOM trees (``dicom:PATH``), NIfTI folders (``nifti:PATH``) and CSV manifests (``csv:FILE``).

Each loader lists the images first (headers only), selects whole patients for ``max_images``, decodes every
selected file once in worker threads (resizing each frame or slice as it is read, through the disk cache of
:mod:`dpaudit.cache`), and splits by patient with the checks of :mod:`dpaudit.data`. The privacy unit is the
patient: DICOM PatientID, a ``patient_id`` column, a BIDS subject (the file name's ``sub-<label>_`` prefix, or a
``sub-<label>`` folder beside ``dataset_description.json``: all of one subject's sessions and sequences), or the volume (file) when nothing else is known; the dataset's ``unit`` says
which (``patient``, ``subject``, ``volume``), and the last one comes with a warning.

A table's patient columns (any spelling of patient_id, an MRN, ...: :func:`dpaudit.identifiers.patient_id_columns`)
are linked with each other, the DICOM header's grouping (a ``dicom:`` tree, or a DICOM file a manifest lists) and the
BIDS subject: images that share any one are one unit (:meth:`_Entries.patients`). A table's subgroups are the
columns :func:`dpaudit.identifiers.subgroup_name` allows (known subgroup attributes, columns marked
``subgroup_NAME``), except those that identify people (by name or content); every other column is dropped with a
note naming the column and the fix (:func:`_drop_identifiers`). A subgroup value held by fewer than 5 privacy units
is reported as 'other (small groups)' (:func:`_suppress_small_cells`, for every layout).

Patient identifiers are pseudonymised here, before any dataset exists: ``patient-00000``, ``patient-00001``, ...
in the order the sorted files first name them. The raw PatientID never reaches a dataset, a message, a log, a
checkpoint, JSON or a report.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from dpaudit.cache import cached
from dpaudit.data import (
    DatasetSplits,
    _check_class_folders,
    _describe_skipped,
    _drop_empty_classes,
    _label_key,
    _label_names,
    _merge_label_spellings,
    _select_groups,
    _split_and_check,
    _stack,
    class_folder_names,
)
from dpaudit.dicom import (
    IMAGE_MODALITIES,
    NO_CLASS_NO_MODALITY,
    PLACEHOLDER_PATIENT_IDS,
    UNKNOWN_CLASS_NO_MODALITY,
    DicomHeader,
    NotAnImage,
    decode_dicom,
    find_dicom,
    is_dicom,
    non_image_fix,
    pydicom_warnings_quiet,
    read_header,
    stored_ranges_differ,
)
from dpaudit.dicom import (
    decode_size as dicom_decode_size,
)
from dpaudit.errors import DataError, naming_file, shown_path
from dpaudit.identifiers import (
    CONTENT_REASON,
    MIN_SUBGROUP_UNITS,
    OTHER,
    age_group,
    age_in_years,
    age_note,
    identifier_like,
    identifier_reason,
    is_age_column,
    is_patient_id_column,
    joins_units,
    patient_id_columns,
    repeats_across,
    small_cells,
    subgroup_name,
    units_word,
    unlisted_fix,
)
from dpaudit.images import (
    IMAGE_EXTENSIONS,
    SKIP_LOG,
    Pixels,
    UnreadableImageError,
    broken_link_why,
    channels_note,
    dataset_channels,
    dataset_digests,
    is_broken_link,
    probe_channels,
    probe_size,
    read_image,
    skipped_unreadable,
    walk,
)
from dpaudit.memory import DECODE_FIX, DecodeSize, check_images_fit, decode_workers
from dpaudit.nifti import decode_nifti, is_nifti, slice_count
from dpaudit.nifti import decode_size as nifti_decode_size
from dpaudit.tables import MISSING_VALUES, RowKey, Table, read_table

__all__ = ["LABEL_KEYS", "load_csv_manifest", "load_dicom_tree", "load_nifti_folder"]

#: Key columns a DICOM labels CSV may use (the first one present is used), besides ``label``.
LABEL_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "path")


def _pseudonyms(raw: Sequence[str]) -> np.ndarray:
    """``patient-NNNNN`` in order of first appearance: the only patient identifiers a dataset ever holds."""
    order: dict[str, int] = {}
    for r in raw:
        order.setdefault(r, len(order))
    return np.array([f"patient-{order[r]:05d}" for r in raw])


def _missing_labels(cells: Sequence[str], name: str, where: str, row_word: str = "data row") -> None:
    """Refuse label cells that are empty or spell a missing value (:data:`MISSING_VALUES`), naming ``where`` (the
    column), how many rows and the first, with its spelling."""
    missing = [(i, c) for i, c in enumerate(cells, start=1) if c in MISSING_VALUES]
    if missing:
        first, text = missing[0]
        spelt = "empty" if not text else f"{text!r}, a missing value"
        shown = sorted({repr(c) for _, c in missing if c})
        kinds = f" (spelt {', '.join(shown)})" if shown else ""
        rename = f" (a class really named {shown[0]} needs another name)" if shown else ""
        raise DataError(f"{name}: {where} has no label in {len(missing)} {row_word}(s){kinds}; the first is "
                        f"{row_word} {first} ({spelt}). Fix: fill in those labels or delete the rows{rename}.")


def _group_columns(table: Table, exclude: Sequence[str], dropped: dict[str, str], name: str, where: str
                   ) -> dict[str, str]:
    """A table's subgroup columns (column -> subgroup name): those :func:`dpaudit.identifiers.subgroup_name` allows
    (a known subgroup attribute, or marked ``subgroup_NAME``) but ``exclude`` (keys, label) and those that identify
    people by name (:func:`dpaudit.identifiers.identifier_reason`). The others but the patient columns (read as the
    patient) go to ``dropped`` (column -> reason) for :func:`_drop_identifiers`. Two columns read as one subgroup
    are a :class:`DataError` naming both (``where`` names the table)."""
    kept: dict[str, str] = {}
    for c in table.columns:
        if not c or c in exclude or is_patient_id_column(c):
            continue
        why = identifier_reason(c)
        group = subgroup_name(c)
        if why is not None:
            dropped[c] = why
        elif group is None:
            dropped[c] = "not a known subgroup attribute (sex, age, site, scanner, ...); " + unlisted_fix(c)
        else:
            twin = next((k for k, g in kept.items() if g == group), None)
            if twin is not None:
                raise DataError(f"{name}: {where} has two columns read as subgroup {group!r} ({twin!r} and {c!r}). "
                                "Fix: delete one of them, or rename one (subgroup_NAME reports a column as "
                                "subgroup NAME).")
            kept[c] = group
    return kept


def _drop_identifiers(name: str, where: str, entries: _Entries, columns: Mapping[str, str],
                      dropped: Mapping[str, str], notes: list[str]) -> None:
    """Columns that are no subgroup: those dropped by name or unasked (``dropped``, column -> reason) and those of
    ``columns`` (a table's subgroup columns, column -> subgroup name in ``entries``) that identify their patients by
    content (:func:`dpaudit.identifiers.identifier_like`, over the linked patients). Each is named (never its
    values) in a note and a warning on stderr; ``where`` names the table."""
    dropped = dict(dropped)
    patients = entries.patients()
    for c, g in columns.items():
        if g == "age_band" and is_age_column(c):  # banded (three bands): coarse by construction, as PatientAge
            continue
        if g in entries.groups and identifier_like(entries.groups[g], patients):
            dropped[c] = CONTENT_REASON
            del entries.groups[g]
    for c, why in dropped.items():
        notes.append(f"column {c!r} of {where} not used as a subgroup: {why}")
        SKIP_LOG.warning(f"{name}: column {c!r} of {where} is not used as a subgroup or site: {why}; its values are "
                         "written nowhere")


def _group_value(column: str, text: str, bad: Counter[str]) -> str:
    """A subgroup cell's value; 'unknown' for a missing one (empty, or a spelling of :data:`MISSING_VALUES`); an
    age banded (:func:`dpaudit.identifiers.age_group`: ``bad`` counts ages out of range or not numbers)."""
    if text in MISSING_VALUES:
        return "unknown"
    if is_age_column(column):
        return age_group(age_in_years(text), bad)
    return text


def _row_groups(row: Mapping[str, str], columns: Mapping[str, str], bad: Counter[str]) -> dict[str, str]:
    """A table row's subgroups (``columns``: column -> subgroup name; ``bad`` counts ages out of range)."""
    return {g: _group_value(c, row[c], bad) for c, g in columns.items()}


def _suppress_small_cells(name: str, entries: _Entries, units: Sequence[str], unit: str) -> list[str]:
    """Small-cell suppression of ``entries``' subgroups (in place), with a note per subgroup changed: a value held
    by fewer than :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` privacy units (``units``, one per image) in the
    whole data is reported as :data:`dpaudit.identifiers.OTHER`; a subgroup so merged that is left with fewer than two
    values beside that and 'unknown' is dropped. The notes count values, never name them (they are what is suppressed)."""
    notes: list[str] = []
    word = units_word(unit)
    for g in list(entries.groups):
        values = entries.groups[g]
        rare = small_cells(values, units)
        if not rare:
            continue
        values = [OTHER if v in rare else v for v in values]
        entries.groups[g] = values
        notes.append(f"subgroup {g!r}: {len(rare)} value(s) held by fewer than {MIN_SUBGROUP_UNITS} {word} each "
                     f"reported as {OTHER!r} (small-cell suppression: such a value singles out its {word})")
        if len(set(values) - {OTHER, "unknown"}) < 2:  # 'other' beside one value (or none) is the rare ones' row
            del entries.groups[g]
            notes.append(f"subgroup {g!r} not reported: fewer than 2 of its values are held by {MIN_SUBGROUP_UNITS} "
                         f"{word} or more")
            SKIP_LOG.warning(f"{name}: subgroup {g!r} is not reported: fewer than 2 of its values are held by "
                             f"{MIN_SUBGROUP_UNITS} {word} or more (rarer values would single out their {word})")
    return notes


def _repeating_columns_warning(name: str, where: str, rows: Iterable[Mapping[str, str]],
                               dropped: Mapping[str, str], what: str) -> list[str]:
    """For data whose every ``what`` (image, volume) is its own unit: a note and a warning for each dropped column
    of the table (``dropped``) whose values repeat across its rows as a patient id's do
    (:func:`dpaudit.identifiers.repeats_across`): it may name the patient, and k = 1 would understate the patient's
    images. Names the column, never its values."""
    rows = list(rows)
    notes: list[str] = []
    for c in dropped:
        if repeats_across([row.get(c, "") for row in rows], MISSING_VALUES):
            said = (f"column {c!r} of {where} repeats its values across {what}s: if it names the patient, rename it "
                    f"patient_id (each of its values one patient); as it is, every {what} is its own unit (k = 1)")
            notes.append(said)
            SKIP_LOG.warning(f"{name}: {said}")
    return notes


def _joining_columns_warning(name: str, where: str, rows: Sequence[Mapping[str, str]], units: Sequence[str],
                             dropped: Mapping[str, str]) -> list[str]:
    """For data grouped by patient: a note and a warning for each dropped column of the table whose values each
    join a few privacy units (``units[i]`` is row i's, after linking; :func:`dpaudit.identifiers.joins_units`), as
    a second id of one person does where the patient column gives that person several ids: k may be understated.
    Names the column, never its values."""
    notes: list[str] = []
    for c in dropped:
        if joins_units([row.get(c, "") for row in rows], units, MISSING_VALUES):
            said = (f"column {c!r} of {where} joins several patients per value, as a second id of one person would: if "
                    f"it names the person (not a measurement or a category), rename it patient_id_2 (every patient column is read and linked, and k "
                    "counts all the person's images); as it is, k may be understated")
            notes.append(said)
            SKIP_LOG.warning(f"{name}: {said}")
    return notes


def _patient_ids(row: Mapping[str, str], columns: Sequence[str]) -> list[str]:
    """A table row's patient keys, one per patient column with a value (empty or a spelling of a missing value,
    :data:`MISSING_VALUES`, is none: 'NA' in many rows is no patient). A key names its column: equal values of two
    columns are not taken for one patient. Raw: pseudonymised before any dataset exists."""
    return [f"id:{c}:{row[c]}" for c in columns if row[c] not in MISSING_VALUES]


def _patient_columns_note(columns: Sequence[str], where: str) -> list[str]:
    """The note on a table with several patient columns (all read and linked)."""
    if len(columns) < 2:
        return []
    return [f"{len(columns)} columns of {where} name the patient ({', '.join(map(repr, columns))}): all read as the "
            "patient and linked (images that share a value of any one of them are one privacy unit)"]


class _Entries:
    """The images a loader will load, one row per image (a frame, slice or single image of a file)."""

    def __init__(self) -> None:
        self.file: list[int] = []
        self.part: list[int] = []
        self.label: list[str] = []
        self.patient: list[str] = []
        self.groups: dict[str, list[str]] = {}
        self.links: list[tuple[str, str]] = []

    def add(self, file: int, parts: Sequence[int], label: str, patient: str, groups: Mapping[str, str],
            also: Sequence[str] = ()) -> None:
        """``also``: more grouping keys of the file (a table's patient ids beside a DICOM PatientID or a BIDS
        subject): all are linked, one privacy unit (:meth:`patients`)."""
        self.links += [(patient, k) for k in also if k != patient]
        for part in parts:
            row = len(self.file)
            self.file.append(file)
            self.part.append(part)
            self.label.append(label)
            self.patient.append(patient)
            for k, v in groups.items():
                self.groups.setdefault(k, ["unknown"] * row).append(v)
            for k, col in self.groups.items():
                if k not in groups:
                    col.append("unknown")

    def __len__(self) -> int:
        return len(self.file)

    def patients(self) -> list[str]:
        """Each image's patient, the keys linked by :meth:`add`'s ``also`` merged (union-find; a set is named by
        its key seen first): images that share either key are one privacy unit, so k is never understated."""
        if not self.links:
            return list(self.patient)
        order: dict[str, int] = {}
        for k in (*self.patient, *(k for pair in self.links for k in pair)):
            order.setdefault(k, len(order))
        parent = {k: k for k in order}

        def root(k: str) -> str:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        for a, b in self.links:
            ra, rb = root(a), root(b)
            if ra != rb:
                first, second = (ra, rb) if order[ra] < order[rb] else (rb, ra)
                parent[second] = first
        return [root(k) for k in self.patient]

    def link_note(self, what: str, files: int, sources: Sequence[str]) -> list[str]:
        """The note on ``files`` files grouped by several keys (``sources`` says which) and how many groups the
        link joined; none when no file has two."""
        if not files:
            return []
        joined = len(set(self.patient)) - len(set(self.patients()))
        said = (f"; {joined} group(s) joined that one key alone keeps apart" if joined else
                "; no group joined (the first key alone already groups them)")
        if len(sources) == 2:
            return [f"{files} {what}(s) carry both {sources[0]} and {sources[1]}: grouped by both (images that "
                    f"share either are one privacy unit, and k counts them together){said}"]
        return [f"{files} {what}(s) carry several of {', '.join(sources[:-1])} and {sources[-1]}: grouped by all "
                f"(images that share any one are one privacy unit, and k counts them together){said}"]


def _decode_size(path: Path, image_size: int) -> DecodeSize | None:
    """The dimensions a file of any kind these loaders read decodes at, from its header (None: it does not read)."""
    if is_nifti(path):
        return nifti_decode_size(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return probe_size(path, image_size, 3)
    return dicom_decode_size(path)


def _decode_files(files: Sequence[Path], decode: Callable[[Path], list[Pixels]], skip_unreadable: bool,
                  shown: Sequence[str], name: str, size_of: Callable[[Path], DecodeSize | None]
                  ) -> list[list[Pixels] | None]:
    """Decode files in threads, as many at once as their decode memory allows (``size_of``: a file's dimensions
    from its header; :func:`dpaudit.memory.decode_workers`); a message names a file ``shown`` (as the user wrote
    it), an error after ``name``."""
    out: list[list[Pixels] | None] = [None] * len(files)

    def work(i: int) -> None:
        try:
            out[i] = decode(files[i])
        except UnreadableImageError as exc:
            if not skip_unreadable:
                raise naming_file(exc, files[i], shown[i], f"{name}: ") from None
            skipped_unreadable(naming_file(exc, files[i], shown[i]))
        except DataError as exc:
            raise naming_file(exc, files[i], shown[i], f"{name}: ") from None

    workers = decode_workers([size_of(f) for f in files], shown, name=name, fix=DECODE_FIX)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(files))))
    return out


def _assemble(name: str, files: Sequence[Path], shown: Sequence[str], entries: _Entries,
              decode: Callable[[Path], list[Pixels]],
              unit: str, seed_rng: np.random.Generator, max_images: int | None, fractions: tuple[float, float],
              skipped: Counter[str], notes: list[str], *, image_size: int, skip_unreadable: bool,
              label_source: str, class_word: str = "class", remove_class: str = "",
              failed_before: Mapping[str, int] | None = None,
              value_notes: Callable[[list[int]], list[str]] | None = None,
              windowed: Callable[[int], bool] | None = None, window: tuple[float, float] | None = None,
              label_notes: Callable[[set[int]], list[str]] | None = None) -> DatasetSplits:
    """Select, decode and split; ``value_notes`` gives the notes on the pixel values of the files used (indices
    into ``files``: selected and decoded), so that they count only what is in the dataset; ``label_source`` names
    where the labels came from, for the note or error on labels written differently; ``windowed`` says which files
    (indices into ``files``) are mapped by a rescale and window of their own (DICOM), whose images are checked for
    being blank (:func:`_blank_note`); ``label_notes`` gives the notes on a labels file's rows, given the files
    (indices into ``files``) skipped as unreadable while decoding, so that a row whose file was is counted
    skipped. ``shown`` names each file in messages as the user wrote it (quoted: :func:`dpaudit.errors.shown_path`,
    or a manifest's path and data row).

    A class left without images (none of its files decodes, or ``max_images`` selected none) is dropped with a note
    (:func:`dpaudit.data._drop_empty_classes`: ``class_word`` names it, ``class folder`` or ``class``;
    ``remove_class`` says how to take it out); ``failed_before`` counts, per class, the files that did not read
    before decoding (their headers), so that a class all of whose files failed there is dropped with its note too."""
    if not len(entries):
        raise DataError(f"{name}: no images to load ({_describe_skipped(skipped)}). Fix: check the path and the "
                        "labels file.")
    pseud = _pseudonyms(entries.patients())
    notes = [*notes, *_suppress_small_cells(name, entries, pseud.tolist(), unit)]
    keep = _select_groups(pseud, max_images, seed_rng)
    check_images_fit(len(keep), 1, image_size, name=name)  # one channel at least: the headers are not all read yet
    need = sorted({entries.file[i] for i in keep})
    decoded = dict(zip(need, _decode_files([files[f] for f in need], decode, skip_unreadable,
                                           [shown[f] for f in need], name,
                                           lambda p: _decode_size(p, image_size)), strict=True))
    skipped["unreadable"] += sum(v is None for v in decoded.values())
    if label_notes is not None:
        notes = [*notes, *label_notes({f for f, v in decoded.items() if v is None})]
    pixels, sel = [], []
    for i in keep:
        frames = decoded[entries.file[i]]
        if frames is None:
            continue
        part = entries.part[i]
        if part >= len(frames):
            raise DataError(f"{name}: {shown[entries.file[i]]} holds {len(frames)} frame(s) or slice(s); "
                            f"index {part} was asked. Fix: correct the index column (0 to {len(frames) - 1}).")
        pixels.append(frames[part])
        sel.append(i)
    if not sel:
        raise DataError(f"{name}: none of the files decodes ({_describe_skipped(skipped)}). Fix: check the files.")
    sel_a = np.asarray(sel)
    if value_notes is not None:
        notes = [*notes, *value_notes(sorted({entries.file[i] for i in sel}))]
    if windowed is not None:
        notes = [*notes, *_blank_note([(shown[entries.file[i]], entries.part[i], px) for i, px in
                                       zip(sel, pixels, strict=True) if windowed(entries.file[i])], window)]
    given = dict(failed_before or {})  # spelt as written: merged with the other labels' spellings
    merged = _merge_label_spellings([*entries.label, *given], name, label_source, notes)
    failed: Counter[str] = Counter()
    for raw, canon in zip(given, merged[len(entries):], strict=True):
        failed[canon] += given[raw]
    merged = merged[:len(entries)]
    label_names = _label_names([*merged, *failed])
    index = {n: i for i, n in enumerate(label_names)}
    labels = np.array([index[merged[i]] for i in sel], dtype=np.int64)
    # each class's files that were tried: selected for decoding, or failed before it
    tried = failed + Counter(c for _, c in {(entries.file[i], merged[i]) for i in keep})
    label_names, labels = _drop_empty_classes(name, label_names, labels, tried, notes, what=class_word,
                                              remove=remove_class)
    groups = {k: np.asarray(v)[sel_a] for k, v in entries.groups.items()}
    sources = [shown[entries.file[i]] for i in sel]
    digests = dataset_digests(pixels)
    return _split_and_check(_stack(pixels), labels, label_names, groups, pseud[sel_a], name, fractions, seed_rng,
                            unit=unit, digests=digests, sources=sources, skipped=skipped, notes=notes)


#: An image whose values span less than one grey level of 8 bits after its rescale and window is blank: every pixel
#: one value to within what a display shows (a window far from the data, a huge width; a Rescale Slope of 0 makes the
#: file unreadable instead, :func:`dpaudit.dicom.decode_dicom`).
BLANK_RANGE = 1.0 / 256


def _is_blank(px: Pixels) -> bool:
    """Blank in [0, 1] (:data:`BLANK_RANGE`); raw values still to be mapped with the dataset's (kind ``"float"``,
    mapped jointly): blank when every value is one (an affine map keeps them one)."""
    spread = float(np.ptp(px.data))
    if px.kind == "unit":
        return spread < BLANK_RANGE
    return spread <= 1e-9 * max(1.0, float(np.abs(px.data).max()))


def _blank_note(images: Sequence[tuple[str, int, Pixels]], window: tuple[float, float] | None) -> list[str]:
    """The images (file as shown, frame, pixels) mapped to [0, 1] by their own rescale and window that come out blank
    (:data:`BLANK_RANGE`): named on stderr (paths, never a PatientID), counted in a note, with the fix. They are
    kept: a blank image is what the file's header asks for, but it trains, is attacked and profiled as no image."""
    blank = [(p, f) for p, f, px in images if _is_blank(px)]
    if not blank:
        return []
    shown = ", ".join(p + (f" (frame {f})" if f else "") for p, f in blank[:10])
    more = f" and {len(blank) - 10} more" if len(blank) > 10 else ""
    fix = ("pass --window LOW,HIGH (in modality units, e.g. -100,200 for liver CT) to map every file by one "
           "window, or remove those files") if window is None else (
        f"check --window {window[0]:g},{window[1]:g} against those files' values (in modality units), or remove them")
    how = "their Rescale Slope/Intercept and window" if window is None else "their Rescale Slope/Intercept and --window"
    SKIP_LOG.warning(f"{len(blank)} DICOM image(s) are blank after {how} (every pixel one value): "
                     f"{shown}{more}. Fix: {fix}.")
    why = ("a Window Center/Width far from the values or far wider than them" if window is None else
           "--window far from their values")
    return [f"{len(blank)} DICOM image(s) blank after {how} (every pixel one value: {why}), kept; {fix}"]


def _need_folder(path: Path, name: str, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{name}: {str(path)!r} is not an existing folder. Fix: pass --dataset {what} with the "
                        "folder holding the files.")


def _folder_labels(name: str, rels: Sequence[PurePath], root: Path, notes: list[str]) -> list[str]:
    """Each file's class from its first-level sub-folder, by the class-folder rule of every loader
    (:func:`dpaudit.data.class_folder_names`: one number written differently is one class, with a note in
    ``notes``; names differing only in case are refused); all files at the top level: one class named after the
    folder."""
    firsts = [r.parts[0] if len(r.parts) > 1 else None for r in rels]
    if all(f is None for f in firsts):
        return [root.name or "images"] * len(rels)
    if any(f is None for f in firsts):
        top = next(r for r, f in zip(rels, firsts, strict=True) if f is None)
        raise DataError(f"{name}: files both at the top level ({top}, ...) and in class sub-folders. Fix: move the "
                        "top-level files into a class sub-folder, or pass --labels FILE.csv.")
    class_of = class_folder_names(name, sorted({str(f) for f in firsts}), notes)
    return [class_of[str(f)] for f in firsts]


@dataclasses.dataclass(frozen=True)
class _Labels:
    """A labels CSV read: its key column, key -> row, the subgroup columns (column -> subgroup name), the columns
    that name the patient (:func:`dpaudit.identifiers.patient_id_columns`, but the key) and the columns dropped
    (column -> reason: identifiers by name, columns not asked for as subgroups)."""

    key: str
    rows: dict[str, dict[str, str]]
    extra: dict[str, str]
    patients: list[str]
    dropped: dict[str, str]
    notes: tuple[str, ...] = ()  # the file's encoding when not UTF-8 (Table.notes)
    row_of: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> its first data row (for messages)


def _read_labels(path: Path, keys: Sequence[str], name: str, root: Path) -> _Labels:
    """A labels CSV (:class:`_Labels`); a ``file`` or ``path`` key is relative to ``root`` (the dataset folder). A
    key listed twice with different labels is an error naming the rows (not the key: it may be a PatientID)."""
    table = read_table(path, name, [RowKey(k, base=root if k in ("file", "path") else None) for k in keys])
    key = next((k for k in keys if k in table.columns), None)
    if key is None or "label" not in table.columns:
        raise DataError(f"{name}: {path.name} needs a label column and one key column of {list(keys)} (found "
                        f"{list(table.columns)}). Fix: add the columns, e.g. {keys[0]},label.")
    dropped: dict[str, str] = {}
    extra = _group_columns(table, [key, "label", "file", "path", "index"], dropped, name, path.name)
    table.refuse_line_breaks((c for c in table.columns if c not in dropped), name)
    _missing_labels([row["label"] for row in table.rows], name, f"{path.name}'s label column")
    rows: dict[str, dict[str, str]] = {}
    first_row: dict[str, int] = {}
    for i, row in enumerate(table.rows, start=1):
        k = row[key].replace("\\", "/")
        if not k:
            raise DataError(f"{name}: {path.name} data row {i} has an empty {key}. Fix: fill it in or delete the "
                            "row.")
        if k in rows and _label_key(rows[k]["label"]) != _label_key(row["label"]):
            raise DataError(f"{name}: {path.name} data rows {first_row[k]} and {i} give one {key} two labels. Fix: "
                            "keep one label per key.")
        rows.setdefault(k, row)
        first_row.setdefault(k, i)
    return _Labels(key, rows, extra, [c for c in patient_id_columns(table.columns) if c != key], dropped,
                   table.notes, first_row)


def _refuse_ambiguous_names(name: str, path: Path, labels: _Labels, rels: Sequence[PurePath]) -> None:
    """A labels row keyed by a bare file name (no folder) labels the file of that relative path and every file of
    that name deeper down that has no row of its own (:func:`load_nifti_folder`). When that is more than one file
    (``a/scan.nii.gz`` and ``b/scan.nii.gz``), which one the row meant cannot be told: refused, naming the row, the
    name and the files, never attached to one or to all of them."""
    keyed = {rel.as_posix() for rel in rels} & set(labels.rows)
    by_name: dict[str, list[str]] = {}
    for rel in rels:
        if rel.name in labels.rows:
            by_name.setdefault(rel.name, []).append(rel.as_posix())
    for bare, found in sorted(by_name.items(), key=lambda kv: labels.row_of[kv[0]]):
        # the file at the top (its path is the name) and those deeper without a row of their own
        hits = [r for r in found if r == bare or r not in keyed]
        if len(hits) > 1:
            raise DataError(f"{name}: {path.name} data row {labels.row_of[bare]} keys {bare!r} by file name, and "
                            f"{len(hits)} volumes have that name ({_shown(hits)}): which one it labels is ambiguous. "
                            f"Fix: key that row by the file's path relative to the dataset folder (e.g. {hits[0]!r}), "
                            f"one row per volume, in the {labels.key} column.")


def _patient_name(path: Path) -> str:
    """The PatientName of one DICOM file (raw: never printed, logged or written), '' when it has none."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["PatientName"])
    except (OSError, ValueError, InvalidDicomError):  # read once already (its header); gone or changed since
        return ""
    return str(ds.get("PatientName") or "")


def _dicom_identifiers(headers: Sequence[DicomHeader], folders: Sequence[str]) -> dict[str, set[str]]:
    """Per class folder, the identifiers of the patients whose files it holds: every PatientID that is not a
    de-identification placeholder, and the PatientName (whole and each component, read from one file per patient
    and folder) that is not one either. Raw identifiers: for the class-folder check only, never written."""
    out: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Path] = {}
    for h, folder in zip(headers, folders, strict=True):
        ids = out.setdefault(folder, set())
        pid = h.keys["PatientID"]
        if pid and pid.upper() not in PLACEHOLDER_PATIENT_IDS:
            ids.add(pid)
        first.setdefault((folder, h.patient), h.path)
    for (folder, _), path in first.items():
        name = _patient_name(path)
        parts = [name, *re.split(r"[\^=]", name)]
        out[folder] |= {p.strip() for p in parts if p.strip() and p.strip().upper() not in PLACEHOLDER_PATIENT_IDS}
    return out


def _without_shared_patient_id(headers: list[DicomHeader]) -> tuple[list[DicomHeader], bool]:
    """One PatientID shared by several files with different studies is a placeholder (``ANONYMOUS``, a site
    code): the files fall back as without one (StudyInstanceUID, else the file). True when that happened."""
    ids = {h.patient for h in headers if h.patient_source == "PatientID"}
    studies = {h.keys["StudyInstanceUID"] for h in headers}
    if len(headers) < 2 or len(ids) != 1 or any(h.patient_source != "PatientID" for h in headers) or \
            len(studies) < 2:
        return headers, False
    out = []
    for h in headers:
        study = h.keys["StudyInstanceUID"]
        patient, source = ("study:" + study, "StudyInstanceUID") if study else ("file:" + str(h.path), "file")
        out.append(dataclasses.replace(h, patient=patient, patient_source=source))
    return out, True


def _shown(keys: Sequence[str], reasons: Mapping[str, str] | None = None) -> str:
    """Up to 5 keys, quoted (with their reason), and how many more."""
    text = ", ".join(repr(k) + (f" ({reasons[k]})" if reasons else "") for k in keys[:5])
    return text + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _note_unmatched_labels(rows: dict[str, dict[str, str]], matched: set[str], key: str, notes: list[str],
                           passed: Mapping[str, str] | None = None) -> None:
    """A labels file's rows that match no image: a note (counted, persisted; the keys themselves, which may be
    PatientIDs or file names, only on stderr when they are file paths). ``passed`` maps the files the loader
    skipped (their keys: relative path and file name) to the reason: a row naming one is said to be skipped, and
    why, not "not found"."""
    unmatched = [k for k in rows if k not in matched]
    if not unmatched:
        return
    passed = passed or {}
    skipped = [k for k in unmatched if k in passed]
    missing = [k for k in unmatched if k not in passed]
    if skipped:
        why = Counter(passed[k] for k in skipped)
        notes.append(f"{len(skipped)} row(s) of the labels file name files that were skipped "
                     f"({', '.join(f'{n} {r}' for r, n in sorted(why.items()))}); they were not used")
    if skipped and key in ("file", "path"):  # other keys may be PatientIDs: counted, never shown
        SKIP_LOG.warning("labelled but skipped: %s. Fix: label image files only (delete these rows from the labels "
                         "file), or replace the files with images", _shown(skipped, passed))
    if missing:
        notes.append(f"{len(missing)} row(s) of the labels file match no image (by {key}); they were not used")
        if key in ("file", "path"):
            SKIP_LOG.warning("labelled but not found: %s. Fix: add the file(s), or delete their rows from the labels "
                             "file", _shown(missing))


def bids_subject(rel: PurePath, root: Path | None = None) -> str | None:
    """The BIDS subject label of a file (``sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz``: ``01``), or None outside
    a BIDS layout. Sessions (``ses-<label>``) and sequences of one subject share it: one person.

    BIDS repeats the subject in every file name (``sub-<label>_...``): that prefix is the subject. A ``sub-<label>``
    folder alone counts only where BIDS is declared, with ``dataset_description.json`` beside the folder (at the
    dataset's root, ``root`` the folder ``rel`` is relative to): ordinary folders are named ``sub-acute`` or
    ``sub-cohortA`` too, and taking such a class or cohort folder as one subject would make it one patient.

    >>> bids_subject(PurePath("sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz")), bids_subject(PurePath("a/b.nii"))
    ('01', None)
    >>> bids_subject(PurePath("anat/sub-A7_T2w.nii.gz")), bids_subject(PurePath("sub-acute/case1.nii.gz"))
    ('A7', None)
    """
    m = _BIDS_FILE.match(rel.name)
    if m:
        return m.group(1)
    if root is not None:
        for i in range(len(rel.parts) - 2, -1, -1):  # the innermost sub-<label> folder first
            m = _BIDS_FOLDER.match(rel.parts[i])
            if m and (root.joinpath(*rel.parts[:i]) / "dataset_description.json").is_file():
                return m.group(1)
    return None


def _in_sub_folder(rel: PurePath) -> bool:
    """Whether a file lies below a folder named like a BIDS subject (``sub-<label>``)."""
    return any(_BIDS_FOLDER.match(part) for part in rel.parts[:-1])


_BIDS_FOLDER = re.compile(r"^sub-([A-Za-z0-9]+)$")
_BIDS_FILE = re.compile(r"^sub-([A-Za-z0-9]+)_")


def _patient_key(ids: Sequence[str], rel: PurePath, file_key: str, root: Path | None,
                 header: DicomHeader | None = None) -> tuple[str, str, list[str]]:
    """(grouping key, where it came from, the other keys) of one file: its patient ids (``ids``, a table's patient
    columns: ``patient``), its DICOM header's PatientID (``patient``), its BIDS subject (``subject``,
    :func:`bids_subject` below ``root``), its DICOM header's StudyInstanceUID (``study``), the first of these it
    has; else the file itself (``volume``). The others are linked with it (:meth:`_Entries.add`), so that no
    grouping alone understates k. Keys are pseudonymised before any dataset exists."""
    keys = [(k, "patient") for k in ids]
    if header is not None and header.patient_source == "PatientID":
        keys.append(("dcm:" + header.patient, "patient"))
    subject = bids_subject(rel, root)
    if subject is not None:
        keys.append(("sub:" + subject, "subject"))
    if header is not None and header.patient_source == "StudyInstanceUID":
        keys.append((header.patient, "study"))
    if not keys:
        return "file:" + file_key, "volume", []
    return keys[0][0], keys[0][1], [k for k, _ in keys[1:]]


def _key_sources(columns: Sequence[str], entries: _Entries, *, dicom: bool) -> list[str]:
    """What groups the files, for :meth:`_Entries.link_note`: the table's patient columns, the DICOM header
    (``dicom``), the BIDS subject where a file has one (a note must not name a key no file carries)."""
    out = [f"a patient id ({c!r} column)" for c in columns]
    if dicom:
        out.append("a grouping from the DICOM header (PatientID, else StudyInstanceUID)")
    keys = (*entries.patient, *(k for pair in entries.links for k in pair))
    if any(k.startswith("sub:") for k in keys):
        out.append("a BIDS subject (sub-<label>)")
    return out


def _grouping_unit(name: str, sources: Counter[str], notes: list[str], *, what: str, sub_folders: int = 0,
                   patient_columns: Sequence[str] = (), table: str | None = None,
                   add_column: str = "") -> str:
    """The dataset's unit from where its files' groups came (:func:`_patient_key`), with a note for files that
    fell back to a coarser source, and a warning (stderr) when no file has a patient id or BIDS subject: each
    volume is then its own patient, which a patient with several volumes breaks. ``sub_folders``: how many of
    the files that fell back to themselves lie in a ``sub-<label>`` folder that is not a BIDS subject's.

    ``patient_columns`` are the patient columns of the ``table`` (``"the manifest"``, ``"the labels file"``; None:
    the dataset has no table), so that a warning about files without a patient id says why: an empty cell in
    those columns, or no patient column at all (then ``add_column`` is the fix that adds one)."""
    if patient_columns:
        cols = ", ".join(map(repr, patient_columns))
        why = f"an empty or missing-value cell in {table}'s patient column ({cols})"
        fix = "fill in their patient ids"
    else:
        why = (f"{table or 'the dataset'} has no patient column (patient_id, PatientID, MRN, ...), and these "
               f"{what}s carry none of their own (a DICOM PatientID or StudyInstanceUID, a BIDS subject)")
        fix = add_column or "give each file its patient in a patient_id column"
    unit = next((u for u in ("patient", "subject", "study") if sources[u]), "volume")
    if sub_folders:
        notes.append(f"{sub_folders} {what}(s) in sub-<label> folders not grouped by them: not a BIDS layout (the "
                     "file names do not start with sub-<label>_ and no dataset_description.json lies beside the "
                     "folders)")
    if unit == "patient" and sources["subject"]:
        notes.append(f"{sources['subject']} {what}(s) without a patient_id grouped by their BIDS subject "
                     "(sub-<label>)")
    if unit in ("patient", "subject") and sources["study"]:
        notes.append(f"{sources['study']} DICOM {what}(s) without a patient id, a PatientID or a BIDS subject grouped "
                     "by their StudyInstanceUID (a patient with several studies counts as several)")
    if unit != "volume" and sources["volume"]:
        notes.append(f"{sources['volume']} {what}(s) without a patient_id or BIDS subject (sub-<label>): each "
                     "taken as its own patient")
        # a missing id among given ones: if such a file is another image of a patient, k is understated; said aloud
        SKIP_LOG.warning(f"{name}: {sources['volume']} {what}(s) have no patient id ({why}) and no BIDS subject: "
                         f"each is taken as its own patient, which understates k if one belongs to a patient with "
                         f"other {what}s. Fix: {fix}")
    if unit == "study":
        notes.append(f"no patient ids and no BIDS subjects (sub-<label>): DICOM {what}s grouped by their "
                     "StudyInstanceUID (a patient with several studies counts as several)")
        SKIP_LOG.warning(f"{name}: no {what} has a patient id (a patient_id column), a usable PatientID or a BIDS "
                         f"subject: DICOM {what}s are grouped by their StudyInstanceUID, which counts a patient with "
                         "several studies as several. Fix: for patient-level DP give each file its patient in a "
                         "patient_id column; for image-level DP pass --privacy-unit image")
    if unit == "volume":
        notes.append(f"no patient ids and no BIDS subjects (sub-<label>): each {what} taken as one patient")
        SKIP_LOG.warning(f"{name}: no {what} has a patient id (a patient_id column) or a BIDS subject "
                         f"(sub-<label>): each {what} is taken as its own patient, which counts a patient "
                         f"with several {what}s (sequences, sessions) as several and weakens the per-patient "
                         "guarantee. Fix: for patient-level DP give each file its patient in a patient_id column "
                         "of the labels CSV (or use the BIDS layout: sub-<label>/ folders beside a "
                         "dataset_description.json, files named sub-<label>_...); for "
                         "image-level DP pass --privacy-unit image")
    return unit


# ----------------------------------------------------------------------------------------------------------------
# DICOM


def _map_jointly(headers: Iterable[DicomHeader], window: tuple[float, float] | None) -> bool:
    """Whether the DICOM files of one dataset are decoded with ``map_jointly`` (:func:`dpaudit.dicom.decode_dicom`):
    without --window, when their stored ranges differ (:func:`dpaudit.dicom.stored_ranges_differ`)."""
    return window is None and stored_ranges_differ(headers)


def _window_note(headers: Sequence[DicomHeader], window: tuple[float, float]) -> list[str]:
    """--window is in modality units; the values it is given for (-100,200 for liver) are Hounsfield units, which
    only CT has. Applied to every file as asked, but said once when files of another modality are among them, in
    words that fit the tree: CT with other modalities, one other modality alone, or several without CT."""
    others = Counter(h.modality if h.modality in IMAGE_MODALITIES else "other" for h in headers
                     if h.modality != "CT")
    if not others:
        return []
    w, n, ct = f"--window {window[0]:g},{window[1]:g}", sum(others.values()), len(headers) - sum(others.values())
    counts = ", ".join(f"{m} {k}" for m, k in sorted(others.items()))
    own = "leave out --window to map each file by its own window (else its stored range)"
    if ct:
        return [f"{w} applied to {ct} CT file(s) and to {n} DICOM file(s) of other modalities too ({counts}), whose "
                "values are not Hounsfield units: check that the window fits them, or load each modality from its "
                "own folder with a --window for it"]
    if len(others) == 1:
        m = next(iter(others))
        what = f"modality {m}" if m != "other" else "a modality other than CT"
        return [f"{w} applied to {n} DICOM file(s) of {what}, none CT: the window is read in their modality's "
                f"values, not Hounsfield units; check that it fits them, or {own}"]
    return [f"{w} applied to {n} DICOM file(s) of {len(others)} modalities, none CT ({counts}), whose values are "
            "not Hounsfield units and differ in scale between modalities: load each modality from its own folder "
            f"with a --window for it, or {own}"]


def _dicom_value_notes(headers: Sequence[DicomHeader], window: tuple[float, float] | None, jointly: bool
                       ) -> list[str]:
    """Notes on how the pixel values of these DICOM files (those used) were mapped, where the mapping is not a
    fixed one the files define (counts only: no file names, since notes reach metrics.json and the report);
    ``jointly``: they were decoded with ``map_jointly`` (:func:`_map_jointly` of the dataset's files)."""
    frames = sum(h.frames_invalid for h in headers)
    said = ([f"{frames} DICOM file(s) hold a Number of Frames the standard does not allow (0 or not a number; PS3.3 "
             "C.7.6.6 requires 1 or more): each read as the one frame its pixel data hold"] if frames else [])
    if window is not None:
        return said + _window_note(headers, window)
    notes = said
    floats = sum(h.float_pixels and not h.has_window for h in headers)
    if floats:
        notes.append(f"{floats} DICOM file(s) with float pixel data (Float or Double Float Pixel Data) and no window: "
                     "mapped to [0, 1] with the dataset's other float images by one affine map from their joint "
                     "minimum and maximum; pass --window LOW,HIGH for a fixed map")
    joint = [h for h in headers if h.stored_ranges] if jointly else []
    if joint:
        ranges = len({r for h in joint for r in h.stored_ranges})
        notes.append(f"{len(joint)} DICOM file(s) without a window whose stored values map to modality values "
                     f"differently ({ranges} stored ranges in modality values: Rescale Slope/Intercept, Modality "
                     "LUT or Bits Stored differ between files or frames): mapped to [0, 1] by their modality values, "
                     "with the dataset's float images, by one affine map from their joint minimum and maximum, so "
                     "that one value gives one intensity in every file; pass --window LOW,HIGH for a fixed map")
    return notes


def _pydicom_quiet(load: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
    """Run a loader that reads DICOM files with pydicom's own warnings silenced (:func:`pydicom_warnings_quiet`:
    dpaudit says what they would, its way)."""
    @functools.wraps(load)
    def quiet(*args: Any, **kwargs: Any) -> DatasetSplits:
        with pydicom_warnings_quiet():
            return load(*args, **kwargs)
    return quiet


@_pydicom_quiet
def load_dicom_tree(root: Path, image_size: int, seed: int, max_images: int | None, fractions: tuple[float, float],
                    labels: str | Path | None, window: tuple[float, float] | None) -> DatasetSplits:
    """``dicom:PATH``: every DICOM file below ``root``, one image per frame, grouped by PatientID."""
    name = f"dicom:{root}"
    _need_folder(root, name, "dicom:PATH")
    skipped: Counter[str] = Counter()
    headers: list[DicomHeader] = []
    passed: dict[Path, str] = {}  # the files skipped, with the reason: for a labels file that names one
    for p in find_dicom(root, skipped, passed):
        try:
            h = read_header(p)
        except UnreadableImageError as exc:
            skipped_unreadable(naming_file(exc, p, shown_path(p, root)))
            skipped["unreadable"] += 1
            passed[p] = "unreadable"
            continue
        except DataError as exc:
            raise naming_file(exc, p, shown_path(p, root), f"{name}: ") from None
        if isinstance(h, NotAnImage):
            skipped[h.reason] += 1
            passed[p] = h.reason
        else:
            headers.append(h)
    # Objects with pixel data that name neither an image storage class nor an image Modality: the files are
    # there, what is missing is said, with the fix (setting their Modality).
    unnamed = {r: skipped[r] for r in (NO_CLASS_NO_MODALITY, UNKNOWN_CLASS_NO_MODALITY) if skipped[r]}
    if unnamed:
        none, private = unnamed.get(NO_CLASS_NO_MODALITY, 0), unnamed.get(UNKNOWN_CLASS_NO_MODALITY, 0)
        missing_what = (f"no SOP Class UID ({none}) or a private or unknown one ({private})," if none and private
                        else "no SOP Class UID" if none else "a private or unknown SOP Class UID")
        unnamed_text = (f"{none + private} DICOM file(s) with pixel data have {missing_what} and no image "
                        "Modality (CT, MR, ...), so they cannot be told from segmentations or dose grids")
    if not headers:
        fix = (f"{unnamed_text}. Fix: {non_image_fix(NO_CLASS_NO_MODALITY)}" if unnamed else
               "Fix: pass the folder holding the DICOM files")
        raise DataError(f"{name}: no DICOM image files found at any depth ({_describe_skipped(skipped)}). {fix}.")
    rels = [h.path.relative_to(root) for h in headers]
    notes: list[str] = []
    if unnamed:
        notes.append(f"{unnamed_text}: skipped; {non_image_fix(NO_CLASS_NO_MODALITY)}")
    entries = _Entries()
    bad: Counter[str] = Counter()  # subgroup values out of range, by kind
    with_header_groups = any(h.sex != "unknown" or h.age is not None for h in headers)
    if labels is not None:
        table = _read_labels(Path(labels), LABEL_KEYS, name, root)
        key, rows, extra = table.key, table.rows, table.extra
        notes.extend(table.notes)
    else:
        # the files whose header did not read count for their class folder too (a class of such files only is
        # dropped with a note, not lost without a word)
        failed = sorted(p.relative_to(root) for p, r in passed.items() if r == "unreadable")
        # and so do the files of a class folder none of whose files is a DICOM image (not DICOM, no pixel data):
        # the folder is dropped with the note the folder: and nifti: loaders give, not lost in the skipped count
        imaged = {r.parts[0] for r in rels}
        if all(len(r.parts) > 1 for r in rels):
            others = (p.relative_to(root) for p, r in passed.items() if r not in ("unreadable", "hidden"))
            failed += sorted(rel for rel in others if len(rel.parts) > 1 and rel.parts[0] not in imaged)
        folder_labels = _folder_labels(name, [*rels, *failed], root, notes)
        failed_labels = folder_labels[len(rels):]
        folder_labels = folder_labels[:len(rels)]
    headers, shared_id = _without_shared_patient_id(headers)
    with_id: set[int] = set()  # the files the labels file gives a patient id (linked with the header's grouping)
    matched: set[str] = set()
    labelled: dict[int, str] = {}  # file index: the labels file's key that labelled it
    for i, (h, rel) in enumerate(zip(headers, rels, strict=True)):
        groups = {"sex": h.sex, "age_band": age_group(h.age, bad)} if with_header_groups else {}
        also: list[str] = []
        if labels is not None:
            k = rel.as_posix() if key == "path" else h.keys[key]
            row = rows.get(k)
            if row is None:
                skipped["not in the labels file"] += 1
                continue
            matched.add(k)
            labelled[i] = k
            label = row["label"]
            groups |= _row_groups(row, extra, bad)
            also = _patient_ids(row, table.patients)
            if also:
                with_id.add(i)
        else:
            label = folder_labels[i]
        entries.add(i, range(h.frames), label, h.patient, groups, also=also)
    # Files without a usable PatientID (nor a patient id in the labels file): grouped by study or file.
    missing = Counter(h.patient_source for i, h in enumerate(headers)
                      if h.patient_source != "PatientID" and i not in with_id)
    label_notes = None
    if labels is not None:
        header_skips = {p.relative_to(root).as_posix(): r for p, r in passed.items()} if key == "path" else {}

        def label_notes(undecoded: set[int]) -> list[str]:
            # A row is skipped when every file it labels was: at the header scan, or unreadable in decoding.
            used = {k for f, k in labelled.items() if f not in undecoded}
            failed = {labelled[f] for f in undecoded if f in labelled} - used
            out: list[str] = []
            _note_unmatched_labels(rows, matched - failed, key, out,
                                   header_skips | dict.fromkeys(failed, "unreadable"))
            return out
    elif len(rels[0].parts) > 1:
        _check_class_folders(name, [*entries.label, *failed_labels],
                             [*entries.patient, *(f"failed:{j}" for j in range(len(failed_labels)))],
                             unit="study" if missing else "patient",
                             identifiers=_dicom_identifiers(headers, folder_labels),
                             fix="label the files with --labels FILE.csv (a label column and a key column: "
                                 f"{', '.join(LABEL_KEYS)})",
                             rename="rename the class folders to class names")
    if labels is not None:
        notes += _patient_columns_note(table.patients, "the labels file")
        notes += entries.link_note("DICOM file", len(with_id), [
            "a grouping from the header (PatientID, else StudyInstanceUID)",
            f"a patient id in the labels file ({', '.join(map(repr, table.patients))})"])
        _drop_identifiers(name, "the labels file", entries, extra, table.dropped, notes)
    notes += age_note(bad)
    if shared_id:
        notes.append(f"one PatientID for all {len(headers)} files (a de-identification placeholder, not a patient): "
                     "no patient grouping from it")
    if missing:
        notes.append("files without a usable PatientID (blank, a placeholder or shared by all) grouped by "
                     + ", ".join(f"{src} ({n})" for src, n in sorted(missing.items()))
                     + " (a patient with several studies counts as several); fix: give each file its patient in a "
                     "manifest (--dataset csv:FILE with path, label and patient_id columns), or state the "
                     "guarantees per image (--privacy-unit image, on train, attack, profile and federated train)")
    # Where the groups came from, for every line that states the privacy unit: PatientID, or StudyInstanceUID
    # (and the file) when no file has a usable one.
    no_patient = sum(missing.values()) == len(headers)
    if no_patient:
        SKIP_LOG.warning(f"no file has a usable PatientID (blank, a placeholder such as ANONYMOUS, or one value "
                         f"shared by every file): images are grouped by {' and '.join(sorted(missing))} instead, "
                         "which counts a patient with several studies as several. Fix: for patient-level DP give "
                         "each file its patient in a manifest (--dataset csv:FILE with a patient_id column); for "
                         "image-level DP (a patient's several images not protected together) pass --privacy-unit "
                         "image")
    unit = "study" if no_patient else "patient"
    used = sorted(set(entries.file))
    channels, _ = dataset_channels(sum(headers[f].colour for f in used), len(used))

    def value_notes(decoded: list[int]) -> list[str]:
        # The files converted, counted among those that decoded (a colour file skipped as unreadable was not).
        said = channels_note(channels, sum(headers[f].colour for f in decoded), len(decoded))
        return [*(n.replace("files", "DICOM files", 1) for n in said),
                *_dicom_value_notes([headers[f] for f in decoded], window, jointly)]
    jointly = _map_jointly((headers[f] for f in set(entries.file)), window)
    options = f"{image_size}|{channels}|{window}" + ("|joint" if jointly else "")

    def decode(p: Path) -> list[Pixels]:
        return cached(p, "dicom", options,
                      lambda: decode_dicom(p, image_size, channels, window, map_jointly=jointly))

    rng = np.random.default_rng([seed, 0xD1C0])
    return _assemble(name, [h.path for h in headers], [shown_path(h.path, root) for h in headers], entries, decode,
                     unit, rng, max_images, fractions,
                     skipped, notes, image_size=image_size, skip_unreadable=True,
                     label_source="the labels file's label column" if labels is not None else "the class folder names",
                     class_word="class" if labels is not None else "class folder",
                     remove_class="delete its rows from the labels file" if labels is not None else
                     "move the folder out of the dataset",
                     failed_before=Counter(failed_labels) if labels is None else None,
                     value_notes=value_notes, windowed=lambda f: True, window=window, label_notes=label_notes)


# ----------------------------------------------------------------------------------------------------------------
# NIfTI


def load_nifti_folder(root: Path, image_size: int, seed: int, max_images: int | None,
                      fractions: tuple[float, float], labels: str | Path | None, window: tuple[float, float] | None,
                      slice_axis: str) -> DatasetSplits:
    """``nifti:PATH``: every ``.nii``/``.nii.gz`` volume below ``root``, one image per slice along ``slice_axis``,
    grouped by the labels CSV's ``patient_id``, else by BIDS subject (``sub-<label>``), else each volume alone
    (with a warning)."""
    name = f"nifti:{root}"
    _need_folder(root, name, "nifti:PATH")
    skipped: Counter[str] = Counter()
    files = []
    passed: dict[str, str] = {}  # the files skipped (relative path and name), with the reason: for a labels file
    # Every file below root, hidden folders' too (their files are counted hidden); broken links and unreadable
    # folders counted by the walk.
    listed = [Path(d) / f for d, _, names in walk(root, skipped) for f in names]
    for p in sorted(listed):
        rel = p.relative_to(root)
        reason = None
        if any(part.startswith(".") for part in rel.parts):
            skipped["hidden"] += p.is_file()
            reason = "hidden" if p.is_file() else None
        elif p.is_file():
            if is_nifti(p):
                files.append(p)
            elif p.suffix.lower() != ".csv":
                skipped["not NIfTI"] += 1
                reason = "not NIfTI"
        if reason is not None:
            passed[rel.as_posix()] = passed[p.name] = reason
    if not files:
        raise DataError(f"{name}: no .nii or .nii.gz volumes found at any depth ({_describe_skipped(skipped)}). "
                        "Fix: pass the folder holding the volumes.")
    rels = [p.relative_to(root) for p in files]
    labels_path = Path(labels) if labels is not None else (root / "labels.csv" if (root / "labels.csv").is_file()
                                                          else None)
    entries = _Entries()
    bad: Counter[str] = Counter()  # subgroup values out of range, by kind
    notes: list[str] = []
    matched = set()
    labelled: dict[int, str] = {}  # file index: the labels file's row key that labelled it
    if labels_path is not None:
        table = _read_labels(labels_path, ("file", "path"), name, root)
        _refuse_ambiguous_names(name, labels_path, table, rels)
        key, rows, extra = table.key, table.rows, table.extra
        notes.extend(table.notes)
    else:
        folder_labels = _folder_labels(name, rels, root, notes)
    failed_labels: list[str] = []  # the classes of the volumes whose header did not read
    sources: Counter[str] = Counter()
    sub_folders = both = 0
    for i, (p, rel) in enumerate(zip(files, rels, strict=True)):
        patient_ids: list[str] = []
        groups: dict[str, str] = {}
        if labels_path is not None:
            hit = next((k for k in (rel.as_posix(), p.name) if k in rows), None)
            if hit is None:
                skipped["not in the labels file"] += 1
                continue
            row = rows[hit]
            matched.add(hit)
            label = row["label"]
            patient_ids = _patient_ids(row, table.patients)
            groups = _row_groups(row, extra, bad)
        else:
            label = folder_labels[i]
        try:
            n = slice_count(p, slice_axis)
        except UnreadableImageError as exc:
            skipped_unreadable(naming_file(exc, p, shown_path(p, root)))
            skipped["unreadable"] += 1
            failed_labels.append(label)
            if labels_path is not None:
                matched.discard(hit)
                passed[hit] = "unreadable"
            continue
        except DataError as exc:
            raise naming_file(exc, p, shown_path(p, root), f"{name}: ") from None
        if labels_path is not None:
            labelled[i] = hit
        patient, source, also = _patient_key(patient_ids, rel, rel.as_posix(), root)
        sources[source] += 1
        both += bool(also)
        sub_folders += source == "volume" and _in_sub_folder(rel)
        entries.add(i, range(n), label, patient, groups, also=also)
    label_notes = None
    if labels_path is not None:

        def label_notes(undecoded: set[int]) -> list[str]:
            failed = {labelled[f] for f in undecoded if f in labelled}
            out: list[str] = []
            _note_unmatched_labels(rows, matched - failed, key, out, passed | dict.fromkeys(failed, "unreadable"))
            return out
    elif len(rels[0].parts) > 1 and len(entries):
        ids = bool(sources["patient"] or sources["subject"])  # a patient_id column or BIDS subjects
        subjects: dict[str, set[str]] = {}
        for label, patient in zip(entries.label, entries.patient, strict=True):
            if patient.startswith("sub:"):
                subjects.setdefault(label, set()).add(patient.removeprefix("sub:"))
        _check_class_folders(name, [*entries.label, *failed_labels],
                             [*entries.patient, *(f"failed:{j}" for j in range(len(failed_labels)))],
                             unit="patient" if ids else "volume",
                             identifiers=subjects,
                             fix="label the volumes with --labels FILE.csv (columns file, label and patient_id)",
                             rename="rename the class folders to class names")
    unit = _grouping_unit(name, sources, notes, what="volume", sub_folders=sub_folders,
                          patient_columns=table.patients if labels_path is not None else (),
                          table="the labels file" if labels_path is not None else None,
                          add_column="label the volumes with --labels FILE.csv (columns file, label and patient_id)"
                          if labels_path is None else "add a patient_id column to the labels file with each "
                          "volume's patient") if sources else "patient"
    if labels_path is not None:
        notes += _patient_columns_note(table.patients, "the labels file")
        notes += entries.link_note("volume", both, _key_sources(table.patients, entries, dicom=False))
        _drop_identifiers(name, "the labels file", entries, extra, table.dropped, notes)
        if unit == "volume":
            notes += _repeating_columns_warning(name, "the labels file", (rows[k] for k in matched), table.dropped,
                                                "volume")
    notes += age_note(bad)
    options = f"{image_size}|1|{window}|{slice_axis}"

    def decode(p: Path) -> list[Pixels]:
        return cached(p, "nifti", options, lambda: decode_nifti(p, image_size, 1, window, slice_axis))

    rng = np.random.default_rng([seed, 0x1F71])
    return _assemble(name, files, [shown_path(p, root) for p in files], entries, decode, unit, rng, max_images,
                     fractions, skipped, notes, image_size=image_size, skip_unreadable=True, label_source="the labels file's label column"
                     if labels_path is not None else "the class folder names", label_notes=label_notes,
                     class_word="class" if labels_path is not None else "class folder",
                     remove_class="delete its rows from the labels file" if labels_path is not None else
                     "move the folder out of the dataset", failed_before=Counter(failed_labels))


# ----------------------------------------------------------------------------------------------------------------
# CSV manifests


@_pydicom_quiet
def load_csv_manifest(csv_path: Path, image_size: int, seed: int, max_images: int | None,
                      fractions: tuple[float, float], window: tuple[float, float] | None, slice_axis: str
                      ) -> DatasetSplits:
    """``csv:FILE``: columns ``path,label[,patient_id][,index][,subgroups...]``, paths relative to the CSV (the
    patient column in any spelling: ``PatientID``, ``Patient ID``, ``MRN``, ...; several are linked). Subgroups are
    the known subgroup attributes (sex, age, site, scanner, ...) and the columns marked ``subgroup_NAME``; every
    other column is dropped with a note (:func:`_group_columns`).

    ``path`` may name an image file, a DICOM file (every frame, or the frame in ``index``) or a NIfTI volume
    (every slice along ``slice_axis``, or the slice in ``index``). A row's patient ids, its DICOM file's PatientID
    (else StudyInstanceUID) and its BIDS subject (``sub-<label>`` in its path) are linked (:func:`_patient_key`);
    a row with none of them is its own unit: the privacy unit is then the image when every file gives one image,
    else the file (a volume; with a warning).
    """
    name = f"csv:{csv_path}"
    if not csv_path.is_file():
        raise DataError(f"{name}: {str(csv_path)!r} is not an existing file. Fix: pass --dataset csv:FILE with the "
                        "manifest (columns path,label[,patient_id]).")
    table = read_table(csv_path, name, [RowKey("path", base=csv_path.parent)])
    table.require(("path", "label"), name, "add the columns path and label (and optionally patient_id)")
    base = csv_path.parent
    patient_columns = patient_id_columns(table.columns)
    dropped: dict[str, str] = {}
    extra = _group_columns(table, ["path", "label", "index"], dropped, name, "the manifest")
    table.refuse_line_breaks((c for c in table.columns if c not in dropped), name)
    files: list[Path] = []
    shown: list[str] = []  # each file as the messages name it: its path as the CSV writes it, and its data row
    file_index: dict[Path, int] = {}
    kinds: list[str] = []
    rows: list[tuple[int, int | None, dict[str, str]]] = []
    seen: dict[Path, dict[int | None, int]] = {}
    _missing_labels([row["label"] for row in table.rows], name, "the manifest's label column")
    for i, row in enumerate(table.rows, start=1):
        if not row["path"]:
            raise DataError(f"{name}: data row {i} has an empty path. Fix: fill it in or delete the row.")
        given = base / row["path"].replace("\\", "/")
        if is_broken_link(given):
            raise DataError(f"{name}: data row {i} names {row['path']!r}, a symbolic link that leads nowhere: "
                            f"{broken_link_why(given)}. Fix: restore the file it points to, or give the row the "
                            "file's own path.")
        p = given.resolve()
        if not p.is_file():
            raise DataError(f"{name}: data row {i} names {row['path']!r}, which is not a file (looked in {base}). "
                            "Fix: give paths relative to the CSV file.")
        index = None
        if row.get("index"):
            try:
                index = int(row["index"])
            except ValueError:
                raise DataError(f"{name}: data row {i} has index {row['index']!r}; allowed: a frame or slice "
                                "number >= 0. Fix: correct the index column.") from None
            if index < 0:
                raise DataError(f"{name}: data row {i} has index {index}; allowed: >= 0. Fix: correct it.")
        listed = seen.setdefault(p, {})
        clash = listed.get(index, listed.get(None)) if index is not None else next(iter(listed.values()), None)
        if clash is not None:
            raise DataError(f"{name}: data rows {clash} and {i} list the same image ({row['path']}). Fix: list each "
                            "image once (a repeat inflates N and would put one image on both sides of the split).")
        listed[index] = i
        if p not in file_index:
            file_index[p] = len(files)
            files.append(p)
            shown.append(f"{row['path']!r} (data row {i})")
            kind = "nifti" if is_nifti(p) else "image" if p.suffix.lower() in IMAGE_EXTENSIONS else (
                "dicom" if p.suffix.lower() == ".dcm" or is_dicom(p) else "")
            if not kind:
                raise DataError(f"{name}: data row {i} names {row['path']!r}, which is neither an image "
                                f"({', '.join(IMAGE_EXTENSIONS)}), a DICOM file nor a NIfTI volume. Fix: list "
                                "supported files only.")
            kinds.append(kind)
        rows.append((file_index[p], index, row))
    # Parts per row (headers only), channels, patients.
    colour = 0
    counts: dict[int, int] = {}
    dicom_headers: dict[int, DicomHeader] = {}
    for f, (p, kind) in enumerate(zip(files, kinds, strict=True)):
        try:
            if kind == "image":
                colour += probe_channels(p) == 3
                counts[f] = 1
            elif kind == "dicom":
                h = read_header(p)
                if isinstance(h, NotAnImage):
                    raise DataError(f"{name}: {shown[f]} is a DICOM file that is {h.reason}. Fix: "
                                    f"{non_image_fix(h.reason)}.")
                colour += h.colour
                counts[f] = h.frames
                dicom_headers[f] = h
            else:
                counts[f] = slice_count(p, slice_axis)
        except DataError as exc:
            raise naming_file(exc, p, shown[f], f"{name}: ") from None
    # The DICOM header's patient (PatientID, else StudyInstanceUID) is linked with the row's, as dicom:PATH groups
    # by it; one PatientID shared by files of several studies is a placeholder, not a patient.
    fixed, shared_id = _without_shared_patient_id(list(dicom_headers.values()))
    dicom_headers = dict(zip(dicom_headers, fixed, strict=True))
    entries = _Entries()
    bad: Counter[str] = Counter()  # subgroup values out of range, by kind
    sources: Counter[str] = Counter()
    sub_folders = both = 0
    per_file: Counter[int] = Counter()
    firsts: list[tuple[int, Mapping[str, str]]] = []  # each row's first image and the row (units by row)
    for f, index, row in rows:
        parts = [index] if index is not None else list(range(counts[f]))
        rel = PurePath(row["path"].replace("\\", "/"))
        patient, source, also = _patient_key(_patient_ids(row, patient_columns), rel, str(files[f]), base,
                                             dicom_headers.get(f))
        sources[source] += 1
        both += bool(also)
        sub_folders += source == "volume" and _in_sub_folder(rel)
        per_file[f] += len(parts)
        if parts:
            firsts.append((len(entries), row))
        entries.add(f, parts, row["label"], patient, _row_groups(row, extra, bad), also=also)
    # "the manifest", not its file name: notes are written to metrics.json and profile.json (no dataset file names)
    notes = list(table.notes)
    channels, said = dataset_channels(colour, len(files))
    notes += said
    # Without patient ids or BIDS subjects each file is its own unit: the image when every file gives one image
    # (a statement per image, true as such), else the file (a volume, a multi-frame DICOM: its images together).
    multi = any(n > 1 for n in per_file.values())
    unit = _grouping_unit(name, sources, notes, what="file", sub_folders=sub_folders,
                          patient_columns=patient_columns, table="the manifest",
                          add_column="add a patient_id column to the manifest with each file's patient") \
        if multi or sources["volume"] < len(rows) \
        else "image"
    if shared_id:
        notes.append(f"one PatientID for all {len(dicom_headers)} DICOM files (a de-identification placeholder, not a "
                     "patient): no patient grouping from it")
    notes += _patient_columns_note(patient_columns, "the manifest")
    notes += entries.link_note("row", both, _key_sources(patient_columns, entries, dicom=bool(dicom_headers)))
    _drop_identifiers(name, "the manifest", entries, extra, dropped, notes)
    if unit in ("image", "volume"):
        notes += _repeating_columns_warning(name, "the manifest", (row for _, _, row in rows), dropped,
                                            "image" if unit == "image" else "file")
    else:
        roots = entries.patients()
        notes += _joining_columns_warning(name, "the manifest", [r for _, r in firsts], [roots[i] for i, _ in firsts],
                                          dropped)
    notes += age_note(bad)
    jointly = _map_jointly(dicom_headers.values(), window)
    options = f"{image_size}|{channels}|{window}|{slice_axis}"
    dicom_options = options + ("|joint" if jointly else "")
    kind_of = {p: k for p, k in zip(files, kinds, strict=True)}

    def decode(p: Path) -> list[Pixels]:
        kind = kind_of[p]
        if kind == "image":
            return [read_image(p, image_size, channels)]
        if kind == "dicom":
            return cached(p, "dicom", dicom_options,
                          lambda: decode_dicom(p, image_size, channels, window, map_jointly=jointly))
        return cached(p, "nifti", options, lambda: decode_nifti(p, image_size, channels, window, slice_axis))

    rng = np.random.default_rng([seed, 0xC5F])
    return _assemble(name, files, shown, entries, decode, unit, rng, max_images, fractions, Counter(), notes,
                     image_size=image_size, skip_unreadable=False, label_source="the manifest's label column",
                     remove_class="delete its rows from the manifest",
                     value_notes=lambda used: _dicom_value_notes(
                         [dicom_headers[f] for f in used if f in dicom_headers], window, jointly),
                     windowed=lambda f: f in dicom_headers, window=window)

