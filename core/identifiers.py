"""Which columns of a user's table name the patient, and which identify people (never subgroups, never sites).

Every reader of a user table (a DICOM or NIfTI labels CSV, a ``csv:`` manifest) asks this module two questions:

* :func:`patient_id_column`: the one column that names the patient, in the field's spellings (``patient_id``,
  ``PatientID``, ``Patient ID``, ``patientid``, ...: compared ignoring case and punctuation, :func:`column_key`).
  Two such columns in one table are refused: which one groups the images is the user's call.
* :func:`identifier_reason`: whether a column identifies people by its name: the identifying attributes of DICOM
  PS3.15 Annex E, Table E.1-1 that plausibly appear as table columns (Patient's Name, Patient ID, Other Patient
  IDs, Patient's Birth Date, Patient's Address, Patient's Telephone Numbers, Accession Number, Study ID, the
  Study/Series/SOP Instance UIDs, dates of the study), a medical record number, e-mail, social security or national
  id, a BIDS subject or participant id, an image id or file name. :func:`identifier_like` adds the content rule:
  a column most of whose distinct values belong to one patient each (free text, ids) identifies its patients
  whatever its name.

Such a column is never a subgroup (a subgroup row is labelled with the column's value, which would publish it in
the console, every JSON and the report) and never a federated site. Callers name the column and the reason, never
its values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from dpaudit.errors import DataError

__all__ = ["column_key", "identifier_like", "identifier_reason", "is_patient_id_column", "patient_id_column"]

#: Normalised spellings (:func:`column_key`) of a column that names the patient. A subject or participant id (BIDS
#: participants.tsv), a bare ``patient`` column or a case id names the unit of a person too: read as the patient,
#: it can only join images into one unit (k is never understated), where dropped it would leave them apart.
PATIENT_ID_KEYS = frozenset({"patientid", "patientidentifier", "patid", "patient", "patientnumber", "patientno",
                             "subject", "subjectid", "subjectlabel", "participant", "participantid", "caseid"})

#: Normalised column names (:func:`column_key`) that identify a person, with the reason given in notes.
_BY_NAME: dict[str, tuple[str, ...]] = {
    "a name (DICOM PS3.15 Annex E: Patient's Name)": (
        "patientname", "patientsname", "name", "fullname", "firstname", "lastname", "surname", "givenname",
        "familyname", "middlename", "maidenname", "initials", "othernames", "otherpatientnames",
        "patientbirthname", "patientmothersbirthname", "mothersmaidenname"),
    "a patient identifier (DICOM PS3.15 Annex E: Patient ID, Other Patient IDs)": (
        "otherpatientids", "otherpatientid", "issuerofpatientid", "mrn", "medicalrecordnumber", "medicalrecordno",
        "recordnumber", "hospitalnumber", "nhsnumber", "insurancenumber", "insuranceid", "healthcarenumber",
        "ssn", "socialsecuritynumber", "nationalid", "nationalidnumber", "passportnumber", "personnummer"),
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
    "a subject or participant id (BIDS)": ("sub",),
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
    """Whether a column's name says it holds the patient (:data:`PATIENT_ID_KEYS`)."""
    return column_key(name) in PATIENT_ID_KEYS


def patient_id_column(columns: Iterable[str], what: str) -> str | None:
    """The column of ``columns`` that names the patient, or None; two are a :class:`DataError` (``what`` names the
    table in it, e.g. ``"dicom:PATH: labels.csv"``).

    >>> patient_id_column(["path", "label", "Patient ID"], "m.csv")
    'Patient ID'
    """
    found = [c for c in columns if is_patient_id_column(c)]
    if len(found) > 1:
        raise DataError(f"{what} has {len(found)} columns that name the patient ({', '.join(map(repr, found))}). "
                        "Fix: keep one of them (rename or delete the others).")
    return found[0] if found else None


def identifier_reason(name: str) -> str | None:
    """Why a column identifies people by its name (:data:`_BY_NAME`, :data:`_BY_PART`), else None. The patient
    column itself is one too (it is read as the patient, never as a subgroup).

    >>> identifier_reason("PatientName") is not None, identifier_reason("sex"), identifier_reason("site")
    (True, None, None)
    """
    key = column_key(name)
    if key in PATIENT_ID_KEYS:
        return "the patient identifier (read as the patient, not a subgroup)"
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
