"""Which columns of a user's table name the patient, which are subgroups, and which identify people (never
subgroups, never sites).

Every reader of a user table (a DICOM or NIfTI labels CSV, a ``csv:`` manifest) asks this module three questions:

* :func:`patient_id_columns`: the columns that name the patient, in the field's spellings (``patient_id``,
  ``PatientID``, ``Patient ID``, ``MRN``, ``nhs_number``, BIDS ``sub``, ...: compared ignoring case and punctuation,
  :func:`column_key`), and any name holding ``patient_id`` or ``medical_record`` but an issuer's. Each is read as
  the patient; several are linked (images sharing a value of any one of them are one unit), so that k is never
  understated.
* :func:`subgroup_name`: whether a column is a subgroup: only a known subgroup attribute (sex, age, site, scanner,
  ...: :data:`SUBGROUP_KEYS`) or a column the user marks ``subgroup_NAME``. Every other column is dropped, named in a
  note with the fix: whether a column of ids named ``pt_id`` or ``remark`` identifies patients cannot be told from
  its values when the patient grouping is unknown (each image its own unit), so it is never published unasked.
* :func:`identifier_reason`: whether a column identifies people by its name: the identifying attributes of DICOM
  PS3.15 Annex E, Table E.1-1 that plausibly appear as table columns (Patient's Name, Patient ID, Other Patient
  IDs, Patient's Birth Date, Patient's Address, Patient's Telephone Numbers, Accession Number, Study ID, the
  Study/Series/SOP Instance UIDs, dates of the study), a medical record number, e-mail, social security or national
  id, a BIDS subject or participant id, an image id or file name. :func:`identifier_like` adds the content rule:
  a column most of whose distinct values belong to one patient each (free text, ids) identifies its patients
  whatever its name. Both apply to the columns :func:`subgroup_name` allows too.

:func:`small_cells` is the last rule on what a subgroup publishes: a value held by fewer than
:data:`MIN_SUBGROUP_UNITS` privacy units is reported as :data:`OTHER`.

Such a column is never a subgroup (a subgroup row is labelled with the column's value, which would publish it in
the console, every JSON and the report) and never a federated site. Callers name the column and the reason, never
its values.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from dpaudit.errors import DataError
from dpaudit.tables import MISSING_VALUES

__all__ = [
    "AGE_RANGE",
    "MIN_SUBGROUP_UNITS",
    "OTHER",
    "age_band",
    "age_group",
    "age_in_years",
    "age_note",
    "check_site_complements",
    "check_site_test",
    "column_key",
    "complement_cells",
    "complement_sites",
    "histogram_cells",
    "histogram_note",
    "histogram_reasons",
    "identifier_like",
    "identifier_reason",
    "is_age_column",
    "is_patient_id_column",
    "joins_units",
    "patient_id_columns",
    "repeats_across",
    "site_null_reasons",
    "site_test_note",
    "site_test_reasons",
    "small_cell_reason",
    "small_cells",
    "subgroup_name",
    "units_word",
    "unlisted_fix",
    "upgrade_histogram",
    "withhold_histogram",
]

#: Normalised spellings (:func:`column_key`) of a column that names the patient. A subject or participant id (BIDS
#: participants.tsv), a bare ``patient`` column, a case or record id or a pseudonym names the unit of a person too:
#: read as the patient, it can only join images into one unit (k is never understated), where dropped it would leave
#: them apart. A medical record, hospital, insurance or national number (``NHS No``, German
#: ``Krankenversicherungsnummer``, Swedish ``personnummer``), Other Patient IDs (DICOM) and BIDS' ``sub`` name a
#: person as well: read as the patient too (a table with several such columns links them all,
#: :func:`patient_id_columns`). So is every column whose name holds one of :data:`PATIENT_ID_PARTS`
#: (``PatientID_1``, ``patient_id_hash``) or that is marked as a subgroup under such a name (``subgroup_patient_id``);
#: an issuer (``IssuerOfPatientID``) is not: it is shared by every patient.
PATIENT_ID_KEYS = frozenset({"patientid", "patientidentifier", "patid", "pid", "patient", "patientnumber", "patientno",
                             "patientnr", "patientennummer", "patientenid", "patientennr", "subject", "subjectid",
                             "subjectlabel", "participant", "participantid", "caseid", "sub", "subid", "recordid",
                             "recordnumber", "pseudonym", "pseudonymid", "patientpseudonym",
                             "patientname", "patientsname", "otherpatientids", "otherpatientid", "mrn",
                             "medicalrecordnumber", "medicalrecordno", "hospitalnumber", "nhsnumber", "nhsno",
                             "insurancenumber", "insuranceid", "healthcarenumber", "krankenversicherungsnummer",
                             "versichertennummer", "ssn", "socialsecuritynumber", "nationalid", "nationalidnumber",
                             "passportnumber", "personnummer"})

#: Parts of a normalised name that make a column the patient's wherever they occur (``PatientID_1``,
#: ``patient_id_hash``, ``medical_record_no_2``), unless :data:`ISSUER_PART` occurs too.
PATIENT_ID_PARTS = ("patientid", "medicalrecord")

#: The part of a normalised name that makes it an issuer of ids (``IssuerOfPatientID``): one value for every patient,
#: never read as the patient.
ISSUER_PART = "issuerof"

#: Normalised column names (:func:`column_key`) that identify a person, with the reason given in notes.
_BY_NAME: dict[str, tuple[str, ...]] = {
    "a name (DICOM PS3.15 Annex E: Patient's Name)": (
        "patientname", "patientsname", "name", "fullname", "firstname", "lastname", "surname", "givenname",
        "familyname", "middlename", "maidenname", "initials", "othernames", "otherpatientnames",
        "patientbirthname", "patientmothersbirthname", "mothersmaidenname"),
    "a patient identifier (DICOM PS3.15 Annex E: Patient ID, Other Patient IDs)": (
        "issuerofpatientid",),
    "a birth date or study date (DICOM PS3.15 Annex E)": (
        "patientbirthdate", "birthdate", "dateofbirth", "dob", "birthday", "patientbirthtime", "studydate",
        "seriesdate", "acquisitiondate", "contentdate", "scandate", "admissiondate", "dischargedate"),
    "contact details (DICOM PS3.15 Annex E: Patient's Address, Telephone Numbers)": (
        "address", "patientaddress", "streetaddress", "street", "postcode", "zipcode", "zip", "phone",
        "phonenumber", "telephone", "telephonenumber", "patienttelephonenumbers", "mobile", "email",
        "emailaddress"),
    "a study or image identifier (DICOM PS3.15 Annex E: Accession Number, Study ID, UIDs)": (
        "accessionnumber", "accession", "accessionno", "studyid", "studyinstanceuid", "seriesinstanceuid",
        "sopinstanceuid", "imageid", "image", "filename", "file", "path", "filepath", "lesionid"),
}
_NAME_REASON = {key: why for why, keys in _BY_NAME.items() for key in keys}

#: Parts of a normalised name that make it an identifier wherever they occur ('StudyInstanceUID_note',
#: 'patient_id_old', 'patient_birth_date'), with the reason.
_BY_PART = (
    ("instanceuid", "a study or image identifier (DICOM PS3.15 Annex E: Accession Number, Study ID, UIDs)"),
    ("accessionn", "a study or image identifier (DICOM PS3.15 Annex E: Accession Number, Study ID, UIDs)"),
    ("patientid", "a patient identifier (DICOM PS3.15 Annex E: Patient ID, Other Patient IDs)"),
    ("patientname", "a name (DICOM PS3.15 Annex E: Patient's Name)"),
    ("medicalrecord", "a patient identifier (DICOM PS3.15 Annex E: Patient ID, Other Patient IDs)"),
    ("birthdate", "a birth date or study date (DICOM PS3.15 Annex E)"),
    ("dateofbirth", "a birth date or study date (DICOM PS3.15 Annex E)"),
    ("email", "contact details (DICOM PS3.15 Annex E: Patient's Address, Telephone Numbers)"),
    ("phone", "contact details (DICOM PS3.15 Annex E: Patient's Address, Telephone Numbers)"),
)

#: Why a column is dropped by :func:`identifier_like`, for notes.
CONTENT_REASON = ("most of its values belong to a single patient each (an identifier or free text): a subgroup "
                  "would publish that patient's values and results")


def column_key(name: str) -> str:
    """A column name compared ignoring case and punctuation.

    >>> column_key("Patient ID"), column_key("patient_id"), column_key("PatientID")
    ('patientid', 'patientid', 'patientid')
    """
    return re.sub(r"[\W_]+", "", name.casefold())


def is_patient_id_column(name: str) -> bool:
    """Whether a column's name says it holds the patient: one of :data:`PATIENT_ID_KEYS` (marked as a subgroup or
    not), or a name holding one of :data:`PATIENT_ID_PARTS`, but an issuer (:data:`ISSUER_PART`).

    >>> [is_patient_id_column(c) for c in ("PID", "PatientID_1", "subgroup_patient_id", "IssuerOfPatientID")]
    [True, True, True, False]
    """
    key = column_key(name)
    if not key or ISSUER_PART in key:
        return False
    return (key in PATIENT_ID_KEYS or column_key(_marked(name)) in PATIENT_ID_KEYS
            or any(part in key for part in PATIENT_ID_PARTS))


def patient_id_columns(columns: Iterable[str]) -> list[str]:
    """The columns of ``columns`` that name the patient (:data:`PATIENT_ID_KEYS`), in table order. Several are all
    read: images that share a value of any one of them are one privacy unit (linked; k is never understated).

    >>> patient_id_columns(["path", "label", "Patient ID", "MRN", "site"])
    ['Patient ID', 'MRN']
    """
    return [c for c in columns if is_patient_id_column(c)]


#: Normalised names (:func:`column_key`) of the attributes a table column is reported as a subgroup under without
#: being asked (:func:`subgroup_name`): demographics, where and how the image was taken, and what it shows. Any
#: other column is a subgroup only when the user marks it (``subgroup_NAME``): a column of ids or free text named
#: like none of these would otherwise publish its values as subgroup labels.
SUBGROUP_KEYS = frozenset({
    "sex", "gender", "patientsex", "ageband", "agegroup", "agerange", "agebin", "agecategory",
    "site", "sitename", "siteid", "center", "centre", "centername", "centrename", "centerid", "centreid",
    "hospital", "hospitalname", "institution", "institutionname", "clinic", "cohort",
    "scanner", "scannermodel", "scannertype", "manufacturer", "manufacturermodelname", "model", "vendor", "device",
    "devicemodel", "modality", "fieldstrength", "magneticfieldstrength", "sequence", "sequencename",
    "sequencetype", "protocol", "protocolname", "contrast", "ethnicity", "ethnicgroup", "race", "skintype",
    "fitzpatrick", "fitzpatrickskintype", "fitzpatrickscale", "localization", "localisation", "anatomsite",
    "anatomicsite", "anatomicalsite", "bodypart", "bodypartexamined", "view", "viewposition", "projection",
    "laterality", "imagelaterality", "dataset", "source", "dxtype"})

#: Normalised names of an age in years: reported banded (:func:`age_band`) as subgroup ``age_band``.
AGE_KEYS = frozenset({"age", "patientage", "ageyears", "ageatscan", "ageatimaging", "ageatdiagnosis"})

#: A column the user marks as a subgroup: ``subgroup_NAME``, ``subgroup:NAME``, ``Subgroup Name`` (any case, any
#: punctuation or spaces between the marker and the name) is subgroup NAME.
_MARKED = re.compile(r"subgroup[\W_]+(\w.*)", re.IGNORECASE)

#: What a note says about a column that is neither a known subgroup attribute nor marked, after naming it.
UNLISTED_FIX = ("rename it subgroup_{column} to report it as a subgroup; if it names the patient, rename it "
                "patient_id")


def unlisted_fix(column: str) -> str:
    """The fix for a column that is neither a known subgroup attribute nor marked (:data:`UNLISTED_FIX`); a column
    that is a marker without a name (``subgroup_``, ``subgroup:``) is told to add one.

    >>> unlisted_fix("pt_group")
    'rename it subgroup_pt_group to report it as a subgroup; if it names the patient, rename it patient_id'
    >>> unlisted_fix("subgroup:").split(";")[0]
    'name the subgroup after the marker (e.g. subgroup_site) to report it as a subgroup'
    """
    if column_key(column).startswith("subgroup"):
        return ("name the subgroup after the marker (e.g. subgroup_site) to report it as a subgroup; if it names "
                "the patient, rename it patient_id")
    return UNLISTED_FIX.format(column=column)


def _marked(name: str) -> str:
    """NAME of a marked column (``subgroup_NAME``), else the name itself."""
    m = _MARKED.fullmatch(name.strip())
    return m.group(1).strip() if m else name


def is_age_column(name: str) -> bool:
    """Whether a column holds an age in years (:data:`AGE_KEYS`; marked or not): banded, never reported raw."""
    return column_key(_marked(name)) in AGE_KEYS


#: Ages in years a subgroup takes (both ends included): a human age. An age outside (a typo such as 420, a
#: placeholder such as 999 or -1), one that is not finite ('inf', '1e400') and a text that is no age ('forty', '45
#: years') are 'unknown', counted in a note (:func:`age_note`), never banded as 60+ or <40. The one rule of every
#: loader that reads ages: HAM10000's age column, a table's age column, DICOM PatientAge.
AGE_RANGE = (0.0, 130.0)


def age_band(age: float | None) -> str:
    """Coarse age band used for subgroup metrics ("<40", "40-59", "60+", or "unknown" for a missing age).

    Three bands keep each subgroup large enough for a meaningful MCC on HAM10000-sized test sets. A reader of
    ages a user wrote goes through :func:`age_group`, which checks the age first.
    """
    if age is None or not math.isfinite(age):
        return "unknown"
    if age < 40:
        return "<40"
    if age < 60:
        return "40-59"
    return "60+"


def age_in_years(text: str) -> float | None:
    """An age as a table cell or DICOM PatientAge writes it, in years: None when it is missing (empty, or a
    spelling of :data:`dpaudit.tables.MISSING_VALUES` such as 'NA' or pandas' 'nan'); the number for a decimal
    number or a DICOM Age String (AS, PS3.5 Table 6.2-1: nnnD, nnnW, nnnM or nnnY); NaN for any other text (not an
    age: :func:`age_group` counts it).

    >>> age_in_years("45"), age_in_years("030Y"), age_in_years("006M"), age_in_years("NA"), age_in_years("forty")
    (45.0, 30.0, 0.5, None, nan)
    """
    text = text.strip()
    if text in MISSING_VALUES:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    unit = text[-1:].upper()
    if len(text) == 4 and text[:3].isdigit() and unit in "DWMY":
        return int(text[:3]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[unit]
    return math.nan


def age_group(years: float | None, bad: Counter[str]) -> str:
    """An age in years (:func:`age_in_years`) banded (:func:`age_band`); 'unknown' for a missing one (None), and
    for one that is not finite (NaN: not a number) or outside :data:`AGE_RANGE`, counted in ``bad["age"]``.

    >>> bad = Counter(); [age_group(a, bad) for a in (45.0, None, 420.0, -1.0, math.nan, math.inf)], bad["age"]
    (['40-59', 'unknown', 'unknown', 'unknown', 'unknown', 'unknown'], 4)
    """
    if years is not None and not (math.isfinite(years) and AGE_RANGE[0] <= years <= AGE_RANGE[1]):
        bad["age"] += 1
        return "unknown"
    return age_band(years)


def age_note(bad: Counter[str]) -> list[str]:
    """The note on the ages :func:`age_group` read as 'unknown' for want of a usable value (a count, never the
    values)."""
    if not bad["age"]:
        return []
    return [f"{bad['age']} age value(s) outside [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}] years (or not finite, or not a "
            "number) read as 'unknown'"]


def subgroup_name(name: str) -> str | None:
    """The subgroup a table column is reported as, or None when it is none: a known subgroup attribute
    (:data:`SUBGROUP_KEYS`, compared by :func:`column_key`) keeps its name, an age is ``age_band``, and a column
    marked ``subgroup:NAME`` or ``subgroup_NAME`` is NAME (an age again ``age_band``). The identifier rules
    (:func:`identifier_reason` on the name, :func:`identifier_like` on the values) still apply to what this allows.

    >>> subgroup_name("Site"), subgroup_name("Age"), subgroup_name("subgroup_pt_group"), subgroup_name("pt_id")
    ('Site', 'age_band', 'pt_group', None)
    """
    m = _MARKED.fullmatch(name.strip())
    bare = m.group(1).strip() if m else name
    if not bare:
        return None
    if column_key(bare) in AGE_KEYS:
        return "age_band"
    if m or column_key(bare) in SUBGROUP_KEYS:
        return bare
    return None


def identifier_reason(name: str) -> str | None:
    """Why a column identifies people by its name (:data:`_BY_NAME`, :data:`_BY_PART`), else None. The patient
    column itself is one too (it is read as the patient, never as a subgroup).

    >>> identifier_reason("PatientName") is not None, identifier_reason("sex"), identifier_reason("site")
    (True, None, None)
    """
    if is_patient_id_column(name):
        return "the patient identifier (read as the patient, not a subgroup)"
    key = column_key(_marked(name))
    if key in _NAME_REASON:
        return _NAME_REASON[key]
    return next((why for part, why in _BY_PART if part in key), None)


#: A column with fewer distinct values is never identifier-like by content: two values (sex) say little.
MIN_DISTINCT = 3


def identifier_like(values: Sequence[str], patients: Sequence[str], missing: str = "unknown") -> bool:
    """Whether a column identifies its patients by content: it has at least :data:`MIN_DISTINCT` distinct values
    (``missing`` is none) and more than half of them are held by exactly one patient (``patients[i]`` is the
    patient of ``values[i]``), as an id, a name, a date or free text is; a subgroup (sex, site, scanner) gathers
    several patients per value.

    >>> identifier_like(["a", "b", "c", "a"], ["p1", "p2", "p3", "p1"])
    True
    >>> identifier_like(["F", "M", "F", "M"], ["p1", "p2", "p3", "p4"])
    False
    """
    holders: dict[str, set[str]] = {}
    for v, p in zip(values, patients, strict=True):
        if v != missing:
            holders.setdefault(v, set()).add(p)
    if len(holders) < MIN_DISTINCT:
        return False
    single = sum(len(h) == 1 for h in holders.values())
    return 2 * single > len(holders)


#: Small-cell suppression: a subgroup value held by fewer privacy units (patients; images when the data carry no
#: patient ids) in the whole data is reported as :data:`OTHER`. A minimum cell size of statistical disclosure
#: control: thresholds of 5 to 11 are in common use, 5 is the smallest of them; a value held by fewer names a
#: handful of people (a family name, a rare device, a one-patient site) and its row's results are theirs.
MIN_SUBGROUP_UNITS = 5

#: The value small cells are merged into (:func:`small_cells`): a label no category of the data spells, so that a
#: real value 'other' (DICOM PatientSex O, a site named so) is never mixed with the suppressed ones.
OTHER = "other (small groups)"


def units_word(unit: str) -> str:
    """The plural a message counts privacy units of kind ``unit`` in (``"patient"`` -> ``"patients"``; a unit
    without a plain plural, such as ``"lesion"`` ids that stand in for patients, -> ``"privacy units"``).

    >>> units_word("patient"), units_word("image"), units_word("lesion")
    ('patients', 'images', 'privacy units')
    """
    return f"{unit}s" if unit in ("patient", "subject", "image", "volume", "study") else "privacy units"


def small_cell_reason(units: Iterable[object], unit: str, where: str) -> tuple[int, str | None]:
    """(distinct privacy units among ``units``, why a figure of them is withheld or None): a published per-group
    figure (a subgroup's MCC in a split, a site's test MCC, a subgroup's attack success) held by 1 to
    :data:`MIN_SUBGROUP_UNITS` - 1 distinct units is those few patients' results. ``unit`` is their kind
    (:attr:`dpaudit.data.DatasetSplits.unit`), ``where`` names the cell's images for the reason. An empty cell
    (0 units) holds no one's result and is not withheld.

    >>> small_cell_reason(["p1", "p1", "p2"], "patient", "the test split")
    (2, 'fewer than 5 patients in the test split')
    >>> small_cell_reason([f"p{i}" for i in range(5)], "patient", "the test split")
    (5, None)
    """
    held = len({str(u) for u in units})
    return held, _small_reason(held, unit, where)


def _small_reason(held: int, unit: str, where: str) -> str | None:
    """The small-cell rule on a count of distinct units: its reason, or None when the cell is published."""
    return f"fewer than {MIN_SUBGROUP_UNITS} {units_word(unit)} in {where}" if 0 < held < MIN_SUBGROUP_UNITS else None


#: Why a histogram cell that is not small is withheld (:func:`withhold_histogram`).
COMPLEMENT_REASON = ("withheld as a complement: with the total and the other cells published, a small cell would "
                     "follow by subtraction")


def withhold_histogram(counts: Sequence[int], held: Sequence[int], unit: str,
                       where: str) -> tuple[tuple[int | None, ...], tuple[str | None, ...]]:
    """(the histogram as published, each cell's reason for being withheld or None): a count per category (a site's
    training images per label; a subgroup column's images in a split, whose total and overall metric are published)
    whose total is published too.

    ``held[i]`` is the number of distinct privacy units (patients, by their ids) holding cell ``i``'s records. A
    cell held by 1 to :data:`MIN_SUBGROUP_UNITS` - 1 units is withheld (:func:`small_cell_reason`): "1 image of
    label X" at a small site is one patient's diagnosis. An empty cell (0) discloses no one and is published.

    Complementary suppression, the standard rule of statistical disclosure control (Hundepool et al., *Statistical
    Disclosure Control*, Wiley 2012, section 5.2 "secondary cell suppression"): since the total is published, one
    withheld cell would follow as the total less the published cells. So while a single cell is withheld, or the
    withheld cells' total leaves each of them no other value than 1 (the total equals their number, each holding at
    least one record), the smallest published non-empty cell is withheld too (:data:`COMPLEMENT_REASON`; an empty
    cell only when no non-empty one is left). This prevents exact recovery by subtraction; the withheld cells' sum
    stays known, as it must with the total published.

    >>> values, reasons = withhold_histogram([120, 3, 40], [60, 2, 20], "patient", "the site's training split")
    >>> values, reasons[1], reasons[2] == COMPLEMENT_REASON
    ((120, None, None), "fewer than 5 patients in the site's training split", True)
    >>> withhold_histogram([50, 0, 30], [25, 0, 15], "patient", "x")  # no small cell: all published, 0 stays 0
    ((50, 0, 30), (None, None, None))
    """
    if len(counts) != len(held):
        raise ValueError(f"withhold_histogram: {len(counts)} counts but {len(held)} unit counts")
    reasons = complement_cells(counts, [_small_reason(int(h), unit, where) for h in held])
    return tuple(None if r is not None else int(c) for c, r in zip(counts, reasons, strict=True)), reasons


def complement_cells(counts: Sequence[int | None], reasons: Sequence[str | None]) -> tuple[str | None, ...]:
    """``reasons`` (each cell's reason for being withheld, None where published) with the complementary cells
    added (:data:`COMPLEMENT_REASON`) that keep each withheld count from following by subtraction from the
    published total: the rule of :func:`withhold_histogram`, which has it for a histogram, and of the sites of a
    federated run (a site's ``n_test``, with the pooled test split's n published).

    A withheld cell whose count is unknown (None: a file that kept no count of it) is taken as 1, the smallest it
    can hold, so that the rule errs on the side of withholding.

    >>> reasons = complement_cells([12, None, 9, 30], [None, "small", None, None])
    >>> reasons[:2], reasons[2] == COMPLEMENT_REASON, reasons[3]  # the next smallest published cell goes too
    ((None, 'small'), True, None)
    """
    reasons = list(reasons)
    if len(counts) != len(reasons):
        raise ValueError(f"complement_cells: {len(counts)} counts but {len(reasons)} reasons")
    size = [1 if c is None else int(c) for c in counts]
    while True:
        hidden = [i for i, r in enumerate(reasons) if r is not None]
        shown = [i for i, r in enumerate(reasons) if r is None]
        if not hidden or not shown or (len(hidden) > 1 and sum(size[i] for i in hidden) > len(hidden)):
            break
        # the next smallest published cell, a non-empty one first (an empty one discloses no one)
        reasons[min(shown, key=lambda i: (size[i] == 0, size[i], i))] = COMPLEMENT_REASON
    return tuple(reasons)


def small_cells(values: Sequence[str], units: Sequence[str], missing: str = "unknown") -> set[str]:
    """The values held by fewer than :data:`MIN_SUBGROUP_UNITS` distinct units (``units[i]`` holds ``values[i]``),
    to be reported as :data:`OTHER`; ``missing`` and :data:`OTHER` itself are never among them.

    >>> sorted(small_cells(["a"] * 5 + ["b", "b", "unknown"], ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]))
    ['b']
    >>> small_cells(["a"] * 6, ["p1", "p1", "p2", "p3", "p4", "p4"])  # 4 patients, however many images
    {'a'}
    """
    holders: dict[str, set[str]] = {}
    for v, u in zip(values, units, strict=True):
        holders.setdefault(v, set()).add(u)
    return {v for v, h in holders.items() if v not in (missing, OTHER) and len(h) < MIN_SUBGROUP_UNITS}


#: Where a site's label histogram cell's records are, in its reasons (:func:`withhold_histogram`).
SITE_LABEL_CELL = "the site's training images of this label"


#: How a histogram cell withheld as a complement is shown (the "x" of statistical agencies' tables); a small cell
#: shows as "< 5".
COMPLEMENT_MARK = "x"


def withheld_mark(reason: str | None) -> str:
    """How a withheld cell's count is shown: ``"< 5"`` for a small cell, :data:`COMPLEMENT_MARK` for a complement.

    >>> withheld_mark("fewer than 5 patients in the test split"), withheld_mark(COMPLEMENT_REASON)
    ('< 5', 'x')
    """
    return COMPLEMENT_MARK if reason == COMPLEMENT_REASON else f"< {MIN_SUBGROUP_UNITS}"


def histogram_cells(values: Sequence[int | None], reasons: Sequence[str | None]) -> list[str]:
    """Each cell of a histogram as shown (console, report): its count, ``"< 5"`` when withheld as small,
    :data:`COMPLEMENT_MARK` when withheld as a complement (:func:`withhold_histogram`).

    >>> histogram_cells([120, None, None], [None, "fewer than 5 patients in x", COMPLEMENT_REASON])
    ['120', '< 5', 'x']
    """
    return [str(v) if v is not None else withheld_mark(r) for v, r in zip(values, reasons, strict=True)]


def histogram_note(reasons: Sequence[str | None]) -> str:
    """The one line under a table that explains its withheld histogram cells ("" when none is withheld)."""
    small = next((r for r in reasons if r is not None and r != COMPLEMENT_REASON), None)
    if small is None:
        return ""
    note = f"labels '< {MIN_SUBGROUP_UNITS}': {small}"
    if COMPLEMENT_REASON in reasons:
        note += (f"; '{COMPLEMENT_MARK}': withheld as the complement, since n_train less the published cells would "
                 "give the small cell")
    return note


def upgrade_histogram(data: dict) -> dict:
    """A site of an earlier layout (``label_histogram`` published whatever its counts, no
    ``label_histogram_withheld``): its cells withheld by :func:`withhold_histogram` with images counted as the
    units, since a cell's patients are no more than its images.

    >>> upgrade_histogram({"label_histogram": [30, 2]})["label_histogram"]
    [None, None]
    """
    hist = data.get("label_histogram")
    if "label_histogram_withheld" in data or not isinstance(hist, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in hist):
        return data
    values, reasons = withhold_histogram(hist, hist, "image", SITE_LABEL_CELL)
    reasons = tuple(r if r is None or r == COMPLEMENT_REASON else f"{r} (the profile predates counting patients)"
                    for r in reasons)
    return {**data, "label_histogram": list(values), "label_histogram_withheld": list(reasons)}


def histogram_reasons(client: int | str, histogram: Sequence[int | None],
                      reasons: Sequence[str | None]) -> Sequence[str | None]:
    """A site's per-label reasons, checked against its label histogram (a cell is None exactly where it has a
    reason); () reads as none withheld and comes back as one None per label. For the ``__post_init__`` of the
    classes that carry a site's histogram (ClientSummary, FederatedSite)."""
    if (reasons and len(reasons) != len(histogram)) or any(
            (v is None) != (r is not None) for v, r in zip(histogram, reasons or (None,) * len(histogram),
                                                          strict=True)):
        raise DataError(f"site {client}: label_histogram {list(histogram)} and label_histogram_withheld "
                        f"{list(reasons)} disagree: a withheld cell is None with its reason, a published one a "
                        "count without one. Fix: build them with dpaudit.identifiers.withhold_histogram")
    return reasons or (None,) * len(histogram)


def check_site_test(client: int | str, withheld: bool, reason: str | None, n_test: int | None,
                    test_mcc: float | None, n_test_withheld: str | None) -> None:
    """A site's test split as published, checked (for the ``__post_init__`` of ClientSummary and FederatedSite):
    a withheld site has a reason and neither ``n_test`` nor ``test_mcc``; a published one has its MCC (NaN where
    undefined) and its ``n_test``, unless that count alone is withheld as a complement (``n_test_withheld``)."""
    if withheld != (reason is not None) or (withheld and (n_test is not None or test_mcc is not None)):
        raise DataError(f"site {client}: a withheld site's test split holds no count and no MCC and says "
                        "why; a published one has no reason. Fix: pass n_test=None, test_mcc=None, reason=...")
    if n_test_withheld is not None and (withheld or n_test is not None):
        raise DataError(f"site {client}: n_test_withheld is the reason a published site's n_test is null (the "
                        "complement of a withheld site's); a withheld site gives its reason in reason. Fix: pass "
                        "n_test=None with n_test_withheld, or build the sites with "
                        "dpaudit.identifiers.site_test_reasons")
    if not withheld and (test_mcc is None or (n_test is None and n_test_withheld is None)):
        raise DataError(f"site {client}: a published site needs n_test and test_mcc (NaN where undefined), or "
                        "n_test_withheld saying why n_test is null. Fix: pass them, or withhold the site with a "
                        "reason.")


def site_null_reasons(withheld: bool, reason: str | None, histogram: Sequence[int | None],
                      n_test_withheld: str | None = None) -> dict[str, str]:
    """Why a site's fields are null in JSON, for a class's ``null_reasons`` (dpaudit.codec): ``n_test`` and
    ``test_mcc`` when the site is withheld, ``n_test`` alone when it is withheld as the complement of another
    site's (``n_test_withheld``), ``label_histogram`` when it holds a withheld cell."""
    out = dict.fromkeys(("n_test", "test_mcc"), f"withheld: {reason}") if withheld else {}
    if n_test_withheld is not None:
        out["n_test"] = n_test_withheld
    if any(v is None for v in histogram):
        out["label_histogram"] = (f"a null cell is withheld: fewer than {MIN_SUBGROUP_UNITS} privacy units at the "
                                  "site hold its label, or it is the complement that would give such a cell by "
                                  "subtraction from n_train (label_histogram_withheld says which)")
    return out


#: The most rows (images) one patient id is taken to span in :func:`repeats_across`: a column with fewer distinct
#: values than rows / this is a category, not an id (a view column of 3 values on 1,000 images).
ROWS_PER_ID_MAX = 50


def repeats_across(values: Sequence[str], missing: Iterable[str] = ("",)) -> bool:
    """Whether a column's values repeat across rows as a patient id's do: at least :data:`MIN_DISTINCT` distinct
    values (``missing`` ones are none), more than half of them held by two rows or more.

    >>> repeats_across(["a", "a", "b", "b", "c", "c"]), repeats_across(["a", "b", "c", "c"])
    (True, False)
    >>> repeats_across(["PA", "AP", "LAT"] * 100)  # a category: 3 values on 300 rows
    False
    """
    skip = set(missing)
    counts: dict[str, int] = {}
    for v in values:
        if v not in skip:
            counts[v] = counts.get(v, 0) + 1
    # an id has many values (one per patient); a category (a view: PA, AP, LAT) has few for many rows
    many = len(counts) >= max(MIN_DISTINCT, sum(counts.values()) / ROWS_PER_ID_MAX)
    return many and 2 * sum(n >= 2 for n in counts.values()) > len(counts)


def joins_units(values: Sequence[str], units: Sequence[str], missing: Iterable[str] = ("",)) -> bool:
    """Whether a column's values each join a few privacy units, as a second id of one person does where the patient
    column splits that person (one pseudonym per image): most units hold one row (``units[i]`` is row i's), at
    least :data:`MIN_DISTINCT` distinct values (``missing`` ones are none), more than half of them held by two
    units or more, and the median value by fewer than :data:`MIN_SUBGROUP_UNITS` (a category such as a scanner
    gathers many units per value).

    >>> joins_units(["x1", "x1", "x2", "x2", "x3", "x3"], ["p1", "p2", "p3", "p4", "p5", "p6"])
    True
    >>> joins_units(["A"] * 6 + ["B"] * 6 + ["C"] * 6, [f"p{i}" for i in range(18)])
    False
    >>> joins_units(["70", "70", "70", "70", "82", "82", "82", "82", "64", "64", "64", "64"],  # weights
    ...             ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4", "p5", "p5", "p6", "p6"])
    False
    """
    skip = set(missing)
    holders: dict[str, set[str]] = {}
    for v, u in zip(values, units, strict=True):
        if v not in skip:
            holders.setdefault(v, set()).add(u)
    if len(holders) < MIN_DISTINCT:
        return False
    # the case it is for: a patient column that gives (nearly) every image its own id; where patients hold several
    # images, a value shared by a few of them is a measurement or a date (a weight, a scan day), not a second id
    rows_of: dict[str, int] = {}
    for u in units:
        rows_of[u] = rows_of.get(u, 0) + 1
    if 2 * sum(n == 1 for n in rows_of.values()) <= len(rows_of):
        return False
    sizes = sorted(len(h) for h in holders.values())
    return 2 * sum(n >= 2 for n in sizes) > len(sizes) and sizes[len(sizes) // 2] < MIN_SUBGROUP_UNITS


#: Where a site's test split cell's records are, in its reason (a site whose test split is a small cell).
SITE_TEST_CELL = "the site's test split"


def site_test_reasons(n_test: Sequence[int], held: Sequence[int], unit: str) -> tuple[str | None, ...]:
    """Each site's reason for withholding its ``n_test`` (None where published): a test split held by 1 to
    :data:`MIN_SUBGROUP_UNITS` - 1 privacy units is a small cell (no count, no MCC), and since the pooled test
    split's n is published, the complement that keeps it from following by subtraction goes too
    (:data:`COMPLEMENT_REASON`: that site's count only; its MCC, of 5 or more units, stays). ``held[k]``: the
    distinct units of site k's test split.

    >>> reasons = site_test_reasons([40, 3, 12, 25], [20, 2, 6, 12], "patient")
    >>> reasons[:2], reasons[2] == COMPLEMENT_REASON, reasons[3]
    ((None, "fewer than 5 patients in the site's test split"), True, None)
    """
    return withhold_histogram(n_test, held, unit, SITE_TEST_CELL)[1]


def site_test_note(reasons: Sequence[str | None]) -> str:
    """The one line under a table of sites that says how many sites' ``n_test`` are withheld and why ("" when
    none is): ``reasons`` holds each site's reason (its small-cell ``reason``, or :data:`COMPLEMENT_REASON` for a
    count withheld as the complement; None where published).

    The small sites' reason is stated once beside the table, with their test MCC; this line does not repeat it.

    >>> site_test_note(["fewer than 5 patients in the site's test split", None, COMPLEMENT_REASON])
    "N_test withheld at 2 of 3 sites: 1 as a small cell ('< 5', its test MCC too), 1 as the complement ('x', its test MCC published), since the pooled test split's n less the published sites' N_test would give a lone withheld one"
    """
    small = [r for r in reasons if r is not None and r != COMPLEMENT_REASON]
    if not small:
        return ""
    n_complement = sum(r == COMPLEMENT_REASON for r in reasons)
    note = (f"N_test withheld at {len(small) + n_complement} of {len(reasons)} sites: {len(small)} as a small cell "
            f"('< {MIN_SUBGROUP_UNITS}', its test MCC too)")
    if n_complement:
        note += (f", {n_complement} as the complement ('{COMPLEMENT_MARK}', its test MCC published), since the "
                 "pooled test split's n less the published sites' N_test would give a lone withheld one")
    return note


def check_site_complements(reasons: Sequence[str | None]) -> None:
    """Refuse sites of which exactly one withholds its ``n_test`` while others publish theirs: that one would
    follow from the pooled test split's n by subtraction (:func:`site_test_reasons` was not applied). ``reasons``:
    each site's ``n_test_reason``. (Several withheld counts whose sum pins each to 1 cannot be told here, where
    the withheld counts are unknown; :func:`complement_cells` rules them out where the sites are built.)"""
    hidden = [k for k, r in enumerate(reasons) if r is not None]
    if len(hidden) == 1 and len(reasons) > 1:
        raise DataError(f"site {hidden[0]}: its n_test alone is withheld while the other sites' are published, so it "
                        "would follow from the pooled test split's n by subtraction. Fix: build the sites with "
                        "dpaudit.identifiers.site_test_reasons (the complement's n_test is None with "
                        "n_test_withheld)")


def complement_sites(raw: Sequence[dict], upgraded: Sequence[dict]) -> list[dict]:
    """Sites of a file written before complementary suppression of ``n_test`` (no site has ``n_test_withheld``):
    the sites as :func:`site_test_reasons` would have published them. ``raw`` are the sites as read (an earlier
    layout may still hold a small site's ``n_test``), ``upgraded`` the same after each site's own upgrade (which
    marks small sites ``withheld``). A site withheld without a count is taken as holding one image
    (:func:`complement_cells`). Returns ``upgraded`` itself when no site changes.

    >>> old = [{"n_test": 12, "withheld": False}, {"n_test": None, "withheld": True}, {"n_test": 30, "withheld": False}]
    >>> [s["n_test"] for s in complement_sites(old, old)], complement_sites(old, old)[0]["n_test_withheld"][:27]
    ([None, None, 30], 'withheld as a complement: w')
    """
    if any("n_test_withheld" in s for s in (*raw, *upgraded)):
        return list(upgraded)
    counts = [s.get("n_test") if isinstance(s.get("n_test"), int) else None for s in raw]
    reasons = complement_cells(counts, ["withheld" if s.get("withheld") else None for s in upgraded])
    if all(r is None or s.get("withheld") for r, s in zip(reasons, upgraded, strict=True)):
        return list(upgraded)
    return [{**s, "n_test": None, "n_test_withheld": COMPLEMENT_REASON}
            if r == COMPLEMENT_REASON and not s.get("withheld") else s
            for r, s in zip(reasons, upgraded, strict=True)]
