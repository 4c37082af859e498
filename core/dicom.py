"""DICOM files: finding them in a tree, reading their headers, and decoding their pixels to [0, 1].

Used by ``--dataset dicom:PATH`` and by CSV manifests that list DICOM files (:mod:`dpaudit.data`).

Discovery
---------
Every regular file at any depth is a candidate, with or without a ``.dcm`` extension; hidden files and folders
are skipped, and so are ``DICOMDIR`` files (media directories), files that are not DICOM (no ``DICM`` prefix),
DICOM files without pixel data (structured reports, presentation states), and objects with pixel data that are
not images of the patient (segmentations, RT dose grids, RT images, thickness maps, ...), each counted by reason.
The last is decided by an allow-list, :data:`IMAGE_STORAGE_CLASSES` (the image storage SOP classes); a SOP Class
dpaudit cannot name (private, missing) is an image only with an image Modality (:data:`IMAGE_MODALITIES`). Headers
are read first, stopping before the pixel data; the pixel data of each selected file are then read once.

Pixel values (in this order; DICOM PS3.3 section C.11)
------------------------------------------------------
1. **Decoding** by pydicom 3 and its pixel-data plugins: uncompressed little and big endian, deflated, RLE
   (pydicom itself), JPEG baseline, extended and lossless (pylibjpeg-libjpeg, Pillow), JPEG-LS (pyjpegls), JPEG
   2000 and HTJ2K (pylibjpeg-openjpeg). YBR colour is converted to RGB by pydicom.
2. **Modality LUT**: Rescale Slope and Intercept (or a Modality LUT Sequence; in enhanced multi-frame files the
   frame's Pixel Value Transformation functional group): stored values to modality units (Hounsfield units for
   CT).
3. **Window** (greyscale only), the first that applies: ``--window LOW,HIGH`` (modality units mapped to 0 and 1,
   e.g. ``-100,200`` for liver CT; applied to files of every modality, and the loader counts the non-CT ones by
   modality in a note, since their units are not Hounsfield units); the file's VOI LUT Sequence (its output divided by 2^bits - 1 of the LUT
   descriptor); the file's first Window Center / Window Width, or the frame's Frame VOI LUT functional group (the
   linear function of C.11.2.1.2.1); else the full range the stored bits can hold (Bits Stored, Pixel
   Representation) passed through the modality LUT, so that files of one series map alike. Where files declare
   a modality transform (Rescale Slope/Intercept, a Modality LUT: their values have a unit, such as Hounsfield
   units or Bq/ml) and that range differs between the files of a dataset or the frames of a file (a PET series
   with a Rescale Slope per slice, per-frame functional groups, two scanners' CT; :func:`stored_ranges_differ`),
   one stored range per file would map one modality value to different intensities: the loaders then map those
   files' modality values jointly, as float pixel data below (``map_jointly``), and say so in a note (an identity
   rescale counts only for CT, PET and NM, and MONOCHROME1 files keep their own stored range:
   :func:`_has_modality_transform`). Values outside the
   window clip to 0 or 1. **Float pixel data** (Float or Double Float Pixel Data: parametric maps, e.g. ADC) have
   no stored range: without a window they are mapped with every other float image of the dataset by one affine map
   from their joint minimum and maximum (kept when all lie in [0, 1]; the rule of float TIFFs and NIfTI volumes,
   :func:`dpaudit.images.to_unit_range`), and the loader says so in a note. The standard allows them in one-sample
   MONOCHROME2 images only; any other float file is unreadable (named on stderr).
4. **MONOCHROME1** (0 is white) is inverted: 1 - v.
5. **Colour**: RGB and converted YBR: value / (2^Bits Stored - 1); PALETTE COLOR: looked up in the palette,
   divided by 2^bits - 1 of the palette descriptor.
6. **Frames**: each frame of a multi-frame file is one image (of the same patient), resized on its own.

Identifiers
-----------
PatientID groups images into patients (a missing PatientID, a de-identification placeholder such as
``ANONYMOUS`` (:data:`PLACEHOLDER_PATIENT_IDS`), or one PatientID shared by every file falls back to
StudyInstanceUID, else to the file: counted in the loader's notes). The raw identifiers never leave this module's callers: :mod:`dpaudit.data`
replaces them by pseudonymous indices (``patient-00001``) before building the dataset, and no message prints
one. PatientSex and PatientAge become the ``sex`` and ``age_band`` subgroups. Copies of an image (another
PatientID, remapped UIDs, stored values shifted with the Rescale Intercept) are found by each frame's modality values
(:func:`_frame_id`), never by a UID.

Header numbers
--------------
Every number the decoder computes with (Rescale Slope and Intercept, Window Center and Width, top-level or per
frame) must be finite, and a Rescale Slope must not be 0 (no image): else the file is unreadable, named with the
element and its value (:func:`_check_header_numbers`); the tree loader skips it, a manifest that lists it stops.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpaudit.errors import DataError, library_reason
from dpaudit.identifiers import age_in_years
from dpaudit.images import Pixels, UnreadableImageError, content_id, match_channels, resize_float, walk
from dpaudit.memory import DecodeSize

__all__ = ["IMAGE_MODALITIES", "IMAGE_STORAGE_CLASSES", "NO_CLASS_NO_MODALITY", "NO_PIXEL_DATA",
           "UNKNOWN_CLASS_NO_MODALITY", "DicomHeader", "NotAnImage", "decode_dicom", "decode_size", "find_dicom", "is_dicom",
           "non_image_fix", "non_image_reason", "pydicom_warnings_quiet", "read_header", "stored_ranges_differ",
           "window_value"]

#: The pip package(s) that decode each compressed transfer syntax, for the "no decoder" message.
_JPEG = "pylibjpeg and pylibjpeg-libjpeg"
_J2K = "pylibjpeg and pylibjpeg-openjpeg"
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _JPEG, "1.2.840.10008.1.2.4.51": _JPEG, "1.2.840.10008.1.2.4.57": _JPEG,
    "1.2.840.10008.1.2.4.70": _JPEG, "1.2.840.10008.1.2.4.80": "pyjpegls", "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": _J2K, "1.2.840.10008.1.2.4.91": _J2K, "1.2.840.10008.1.2.4.201": _J2K,
    "1.2.840.10008.1.2.4.202": _J2K, "1.2.840.10008.1.2.4.203": _J2K, "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}
#: SOP Class UID of a media storage directory (DICOMDIR).
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"

#: The image storage SOP classes (PS3.4 Annex B, Table B.5-1, plus the retired image classes old archives still
#: hold), by their last components under 1.2.840.10008.5.1.4.1.1: the objects whose pixel data are an acquired (or
#: secondary-captured) image of the patient. An allow-list: every other standard object with pixel data is derived
#: from the images or from treatment (Segmentation, RT Dose, RT Image, thickness maps, ...) and would enter training
#: as a fake image, often only for one class (a segmentation exists where there is a finding): a label leak.
_IMAGE_CLASS_SUFFIXES = (
    "1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1",  # CR, DX, mammography, intra-oral
    "2", "2.1", "2.2",  # CT, enhanced CT, legacy converted enhanced CT
    "3", "3.1", "6", "6.1", "6.2", "6.3",  # ultrasound (multi-frame, enhanced volume), photoacoustic
    "4", "4.1", "4.3", "4.4",  # MR, enhanced MR (colour), legacy converted enhanced MR
    "5", "20",  # nuclear medicine
    "7", "7.1", "7.2", "7.3", "7.4",  # secondary capture
    "12.1", "12.1.1", "12.2", "12.2.1", "12.3",  # X-ray angiography, radiofluoroscopy
    "13.1.1", "13.1.2", "13.1.3", "13.1.4", "13.1.5",  # 3-D X-ray, breast tomosynthesis and projection
    "14.1", "14.2",  # intravascular OCT
    "30",  # parametric map (e.g. ADC; float pixel data)
    "77.1", "77.2", "77.1.1", "77.1.1.1", "77.1.2", "77.1.2.1", "77.1.3", "77.1.4", "77.1.4.1",  # visible light
    "77.1.5.1", "77.1.5.2", "77.1.5.4", "77.1.5.5", "77.1.5.6", "77.1.5.7",  # ophthalmic photography, OCT
    "77.1.6", "77.1.7", "77.1.8", "77.1.9",  # whole-slide, dermoscopic, confocal microscopy
    "128", "128.1", "130",  # PET, legacy converted and enhanced PET
)
IMAGE_STORAGE_CLASSES = frozenset(f"1.2.840.10008.5.1.4.1.1.{s}" for s in _IMAGE_CLASS_SUFFIXES)
#: Modalities (PS3.3 C.7.3.1.1.1) of acquired images: the test for a file whose SOP Class dpaudit does not know
#: (a private class, a missing UID, a class newer than pydicom). SEG, RTDOSE, RTIMAGE, KO, PR, SR, REG, ... are
#: not among them.
IMAGE_MODALITIES = frozenset({"CR", "CT", "DX", "MG", "IO", "PX", "MR", "US", "IVUS", "NM", "PT", "XA", "RF", "OT",
                              "ES", "GM", "SM", "XC", "OP", "OPT", "IVOCT", "BI", "DG", "RG", "TG", "BDUS"})


def non_image_reason(sop_class: str, modality: str) -> str | None:
    """None when a DICOM object with pixel data is an image to train on, else its skipped-files reason:
    ``not an image (<the SOP Class's name>)`` for a standard class outside :data:`IMAGE_STORAGE_CLASSES`; a class
    dpaudit cannot name is an image only when its Modality is one of :data:`IMAGE_MODALITIES`."""
    from pydicom.uid import UID

    if sop_class in IMAGE_STORAGE_CLASSES:
        return None
    name = UID(sop_class).name if sop_class else ""
    if name and name != sop_class:  # a standard class pydicom names, not an image storage class
        return f"not an image ({name})"
    if modality.strip().upper() in IMAGE_MODALITIES:
        return None
    return NO_CLASS_NO_MODALITY if not sop_class else UNKNOWN_CLASS_NO_MODALITY


#: The skipped-files reasons of objects with pixel data that name neither an image storage class nor an image
#: Modality: what is missing is said, since the files are there (:func:`non_image_fix`).
NO_CLASS_NO_MODALITY = "not an image (no SOP Class UID, no image Modality)"
UNKNOWN_CLASS_NO_MODALITY = "not an image (private or unknown SOP Class UID, no image Modality)"


def non_image_fix(reason: str) -> str:
    """The fix for a file skipped with ``reason`` (:func:`non_image_reason`): for an object that names neither an
    image class nor an image Modality, how to give it its Modality (if it is an image); else to list images only.

    >>> non_image_fix("not an image (Segmentation Storage)")
    'list image files only'
    """
    if reason in (NO_CLASS_NO_MODALITY, UNKNOWN_CLASS_NO_MODALITY):
        return ("if the files are images, set their Modality (0008,0060) to the modality they were acquired with, "
                "e.g. with DCMTK: dcmodify -i \"(0008,0060)=CT\" FILE, or with pydicom: ds = "
                "pydicom.dcmread(FILE, force=True); ds.Modality = \"CT\"; ds.save_as(FILE) (CT, MR, CR, DX, US, PT, "
                "NM, OT, ...; a SOP Class UID of an image storage class, e.g. CT Image Storage "
                "1.2.840.10008.5.1.4.1.1.2, serves too); files that are not images (masks, dose grids) stay skipped")
    return "list image files only"


@dataclass(frozen=True)
class NotAnImage:
    """A DICOM file that :func:`read_header` passes over; ``reason`` is its skipped-files reason."""

    reason: str


#: PatientID values that de-identification tools write in place of the identifier: no patient, like a blank one.
PLACEHOLDER_PATIENT_IDS = frozenset({"ANONYMOUS", "ANONYMIZED", "ANONYMISED", "ANON", "UNKNOWN", "NONE", "NULL",
                                     "N/A", "NA", "REMOVED", "DEIDENTIFIED", "DE-IDENTIFIED", "0"})


@dataclass(frozen=True)
class DicomHeader:
    """What dpaudit reads from a DICOM header before any pixel data. ``patient`` is the raw PatientID (or its
    fallback) and must not be printed, logged or written anywhere."""

    path: Path
    frames: int
    colour: bool
    patient: str
    patient_source: str  # "PatientID", "StudyInstanceUID" or "file"
    sex: str
    age: float | None
    keys: dict[str, str]  # PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID (for a labels CSV)
    sop: str
    float_pixels: bool = False  # Float or Double Float Pixel Data: real values, no stored range
    has_window: bool = False  # a VOI LUT, Window Center/Width, or (enhanced files) a Frame VOI LUT
    modality: str = ""  # Modality (CT, MR, ...), upper case
    #: The distinct (lowest, highest) modality values the stored range can hold, over the greyscale integer
    #: frames that have no window of their own and declare a modality transform (Rescale Slope/Intercept, a
    #: Modality LUT): the ranges those frames would be mapped by (:func:`stored_ranges_differ`); empty for
    #: colour, float and windowed files and for files whose stored values carry no unit.
    stored_ranges: tuple[tuple[float, float], ...] = ()
    #: Number of Frames holds a value the standard does not allow (0, not a number): read as 1 frame.
    frames_invalid: bool = False


def is_dicom(path: Path) -> bool:
    """True when the file carries the DICOM ``DICM`` prefix after its 128-byte preamble, or (older files written
    without the preamble) starts with a little-endian tag of group 0x0002 or 0x0008 followed by a plausible
    explicit VR or implicit length."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    vr = head[4:6]
    return (vr.isalpha() and vr.isupper()) or int.from_bytes(head[4:8], "little") < 2 ** 16


def find_dicom(root: Path, skipped: Counter[str], passed: dict[Path, str] | None = None) -> list[Path]:
    """DICOM files at any depth below ``root`` (sorted), counting what was skipped and why; ``passed`` (when given)
    receives each file skipped with its reason (so that a labels file naming one can be told why)."""
    found = []
    for dirpath, dirnames, filenames in walk(root, skipped):
        skipped["hidden"] += sum(d.startswith(".") for d in dirnames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            p = Path(dirpath) / f
            reason = ("hidden" if f.startswith(".") else "DICOMDIR" if f.upper() == "DICOMDIR" else
                      "not DICOM" if not is_dicom(p) else None)
            if reason is None:
                found.append(p)
                continue
            skipped[reason] += 1
            if passed is not None:
                passed[p] = reason
    return sorted(found)


#: The elements that hold an image (PS3.5 section 8: Pixel Data, Float Pixel Data, Double Float Pixel Data).
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: The skipped-files reason of a DICOM file that holds no image (its own reason, not "unreadable").
NO_PIXEL_DATA = "not an image (no pixel data)"


def _cut_short(ds: object, path: Path) -> str | None:
    """Where a DICOM file that pydicom read to its end stops short: inside the value of its last element (its
    length reaches past the end), or after it, in the first bytes of another element; None when the last element
    ends with the file. Only an element pydicom kept raw (not yet converted, so its length and position are those
    in the file) can be checked; a converted one (a sequence) is taken as complete."""
    size = path.stat().st_size
    for part in (ds, getattr(ds, "file_meta", None)):  # the file's last element: the body's, else the meta's
        tags = sorted(part.keys()) if part is not None else []
        if not tags:
            continue
        last = part.get_item(tags[-1])
        length, tell = getattr(last, "length", None), getattr(last, "value_tell", None)
        if not isinstance(length, int) or not isinstance(tell, int) or length == 0xFFFFFFFF:
            return None
        end = tell + length
        if end > size:
            return f"inside element {last.tag}: {size - tell} of its {length} bytes"
        if end < size:
            return f"{size - end} byte(s) after element {last.tag}: the next element cut short"
        return None
    return None


#: What reading a header element that a file lacks or holds malformed raises (pydicom's attribute access, int()
#: and float() of a string, an empty multi-value, a LUT that does not fit): the file is then unreadable, named
#: with the error, never a traceback.
_HEADER_ERRORS = (AttributeError, KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError)


def _unreadable_header(path: Path, exc: Exception) -> UnreadableImageError:
    return UnreadableImageError(f"DICOM file {str(path)!r}: a header element it needs is missing or malformed "
                                f"({library_reason(exc, path)}). Fix: replace or remove the file.")


@contextmanager
def pydicom_warnings_quiet() -> Iterator[None]:
    """pydicom warns (a UserWarning printed with its own site-packages path) on header values the standard does not
    allow (Number of Frames 0, a DS that is not a number); dpaudit reads those values itself and says so, in a
    loader note or by naming the file as unreadable. Entered by the loaders' main thread around the header scan
    and the decoding (whose worker threads see the same filters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        yield


def read_header(path: Path) -> DicomHeader | NotAnImage:
    """:func:`_read_header`, with a header element that is missing or malformed (a string where a number belongs,
    an empty multi-value) an unreadable file named with the error, never a traceback."""
    try:
        return _read_header(path)
    except DataError:
        raise
    except _HEADER_ERRORS as exc:
        raise _unreadable_header(path, exc) from None


def _read_header(path: Path) -> DicomHeader | NotAnImage:
    """The header of one DICOM file, or why it is not an image: no pixel data element (a structured report, an RT
    structure set, a presentation state, a key object selection), no image size, a DICOMDIR, or pixel data in an
    object that is not an image (a segmentation, an RT dose grid: :func:`non_image_reason`).

    The pixel data are not read: pydicom stops reading *at* the pixel data element, leaving the file positioned on
    its tag, so the next four bytes say whether there is one (its group, 7FE0, in either byte order; the end of the
    file when there is none). A deflated file is read from an inflated copy, so there the structure is read with
    large values deferred instead (pydicom records where they are without keeping them)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)  # force: files without a preamble
            next_tag = fp.read(4)
        cut = _cut_short(ds, path)  # before any element is read (converted, an element forgets its file position)
        meta = getattr(ds, "file_meta", None)
        deflated = meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        if deflated:
            full = pydicom.dcmread(path, defer_size=1024, force=True)
            present = [k for k in PIXEL_DATA_KEYWORDS if k in full]
        else:
            # (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data
            element = {b"\xe0\x7f": next_tag[2:4][::-1], b"\x7f\xe0": next_tag[2:4]}.get(next_tag[:2])
            present = [] if element is None else [{b"\x00\x08": "FloatPixelData",
                                                   b"\x00\x09": "DoubleFloatPixelData"}.get(element, "PixelData")]
        has_pixels = bool(present)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise UnreadableImageError(f"DICOM file {str(path)!r} has an unreadable header ({type(exc).__name__}). "
                                   "Fix: replace or remove the file.") from None
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None
                                                  else "") or "").strip()
    if sop_class == _MEDIA_DIRECTORY:
        return NotAnImage("DICOMDIR")
    if "Rows" not in ds or "Columns" not in ds or not has_pixels:
        # Every DICOM object (a structured report, an RT structure set, a presentation state, ...) names its SOP
        # Class (PS3.3 C.12.1, type 1). Bytes that parse to no SOP Class are a damaged file, not a non-image object.
        if not sop_class:
            raise UnreadableImageError(f"DICOM file {str(path)!r} holds no recognisable DICOM object (no SOP Class "
                                       "UID, no image): damaged or not DICOM. Fix: replace or remove the file.")
        # pydicom (force=True) stops quietly at the end of a file cut short, even inside an element: such a file
        # is damaged ("unreadable"), not a DICOM object without pixel data (a header exported without its image
        # ends with its last element and stays "not an image").
        if cut and not (deflated or has_pixels):  # deflated: the positions are the inflated copy's
            raise UnreadableImageError(f"DICOM file {str(path)!r} is cut short ({cut}). Fix: replace or remove the "
                                       "file.")
        return NotAnImage(NO_PIXEL_DATA)
    reason = non_image_reason(sop_class, str(ds.get("Modality", "") or ""))
    if reason is not None:
        return NotAnImage(reason)
    keys = {k: str(ds.get(k, "") or "").strip()
            for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    if keys["PatientID"] and keys["PatientID"].upper() not in PLACEHOLDER_PATIENT_IDS:
        patient, source = keys["PatientID"], "PatientID"
    elif keys["StudyInstanceUID"]:
        patient, source = "study:" + keys["StudyInstanceUID"], "StudyInstanceUID"
    else:
        patient, source = "file:" + str(path), "file"
    sex = {"M": "male", "F": "female", "O": "other"}.get(str(ds.get("PatientSex", "") or "").strip().upper(),
                                                         "unknown")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    colour = int(ds.get("SamplesPerPixel", 1) or 1) >= 3 or photometric == "PALETTE COLOR"
    frames, frames_invalid = _frame_count(ds)
    try:
        has_window = "VOILUTSequence" in ds or _frame_window(ds, 0) is not None
    except (TypeError, ValueError, IndexError):  # a Window Center/Width that is not a number: decoding names it
        has_window = True
    floating = present[0] != "PixelData"
    return DicomHeader(path, frames, colour, patient, source, sex, age_in_years(str(ds.get("PatientAge", "") or "")),
                       keys, keys["SOPInstanceUID"], float_pixels=floating, has_window=has_window,
                       modality=str(ds.get("Modality", "") or "").strip().upper(),
                       stored_ranges=() if colour or floating else _unwindowed_stored_ranges(ds, frames),
                       frames_invalid=frames_invalid)


def _frame_count(ds: object) -> tuple[int, bool]:
    """(Number of Frames, whether the file's value is invalid): the standard requires an integer >= 1 (PS3.3
    C.7.6.6); pydicom reads a 0 (or a missing value) as one frame, and so does dpaudit, saying so in a note."""
    raw = ds.get("NumberOfFrames")  # type: ignore[attr-defined]
    if raw is None or raw == "":
        return 1, False
    try:
        n = int(raw)
    except (TypeError, ValueError):
        return 1, True
    return max(1, n), n < 1


#: What pydicom raises on a malformed LUT (a descriptor or data that do not fit).
_LUT_ERRORS = (IndexError, TypeError, ValueError, AttributeError, KeyError)


def _stored_range(ds: object, frame: int) -> tuple[float, float]:
    """The lowest and highest modality values the stored bits of ``frame`` can hold: the range Bits Stored and
    Pixel Representation allow, as signed 64-bit integers (never the pixel array's dtype, which may be unsigned or
    narrower than the range Bits Stored claims), through the frame's modality LUT."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)  # type: ignore[attr-defined]
    if not 1 <= bits <= 63:  # integer pixel data hold at most 32 bits; 64 and more would overflow int64 below
        raise ValueError(f"Bits Stored {bits} is not a valid integer pixel depth")
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1  # type: ignore[attr-defined]
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2 ** bits - 1], dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN or infinite rescale: refused below
        ends = _frame_modality(ds, frame)(stored)
    if not np.isfinite(ends).all():  # a NaN or infinite rescale: decode_dicom names the file as unreadable
        raise ValueError("the stored range's modality values are not finite")
    return float(np.min(ends)), float(np.max(ends))


def _unwindowed_stored_ranges(ds: object, frames: int) -> tuple[tuple[float, float], ...]:
    """:attr:`DicomHeader.stored_ranges` of a greyscale integer file: the distinct stored ranges, in modality
    values, of its frames without a window (a VOI LUT, Window Center/Width, a Frame VOI LUT) and with a modality
    transform (:func:`_has_modality_transform`). Frames differ only
    where an enhanced file gives them their own functional groups. Empty when the modality LUT is malformed
    (:func:`decode_dicom` names the file as unreadable)."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):  # type: ignore[operator, attr-defined]
        return ()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")  # type: ignore[attr-defined]
    ranges = set()
    try:
        for f in range(frames if per_frame else 1):
            if _frame_window(ds, f) is None and _has_modality_transform(ds, f):
                ranges.add(_stored_range(ds, f))
    except _LUT_ERRORS:
        return ()
    return tuple(sorted(ranges))


def stored_ranges_differ(headers: Iterable[DicomHeader]) -> bool:
    """True when the greyscale integer frames without a window and with a modality transform (the frames whose
    values have a unit) of these files do not all hold one stored range in modality values (Rescale
    Slope/Intercept, a Modality LUT, Bits Stored or Pixel Representation differ between files, or between the
    frames of an enhanced file: a PET series scaled slice by slice, a tree of two scanners' CT). Each mapped by
    its own stored range, one modality value would then give different intensities in different files; the
    loaders decode such files with ``map_jointly`` instead (:func:`decode_dicom`)."""
    return len({r for h in headers for r in h.stored_ranges}) > 1


def window_value(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM linear VOI windowing to [0, 1] (PS3.3 section C.11.2.1.2.1, "linear" function, y_min 0, y_max 1)."""
    w = max(float(width), 1.0)  # the standard requires width >= 1
    c = float(centre)
    y = (x - (c - 0.5)) / (w - 1.0) + 0.5 if w > 1 else np.where(x > c - 0.5, 1.0, 0.0)
    return np.clip(y, 0.0, 1.0)


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element (Window Center / Width may hold several)."""
    if isinstance(value, list | tuple) or (hasattr(value, "__getitem__") and not isinstance(value, str | bytes)):
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _functional_groups(ds: object, frame: int) -> list:
    """The functional-group items that describe ``frame`` of an enhanced multi-frame file: its per-frame item
    first, then the shared one (PS3.3 C.7.6.16)."""
    items = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")  # type: ignore[attr-defined]
    if per_frame is not None and frame < len(per_frame):
        items.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")  # type: ignore[attr-defined]
    if shared:
        items.append(shared[0])
    return items


def _group_value(ds: object, frame: int, sequence: str, keyword: str) -> object | None:
    for item in _functional_groups(ds, frame):
        seq = item.get(sequence)
        if seq and keyword in seq[0]:
            return seq[0][keyword].value
    return None


def _frame_modality(ds: object, frame: int):  # -> Callable[[np.ndarray], np.ndarray]
    """Stored values of ``frame`` to modality units: the top-level Rescale Slope/Intercept or Modality LUT, else
    the frame's Pixel Value Transformation (enhanced multi-frame files keep it in functional groups)."""
    from pydicom.pixels import apply_modality_lut

    slope = _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds or slope is None:  # type: ignore[operator]
        return lambda a: apply_modality_lut(a, ds).astype(np.float64)
    intercept = _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept") or 0.0
    return lambda a: a.astype(np.float64) * float(slope) + float(intercept)  # type: ignore[arg-type]


#: Modalities whose modality values carry a physical unit even under an identity rescale (slope 1, intercept 0):
#: Hounsfield units, Bq/ml, counts.
CALIBRATED_MODALITIES = frozenset({"CT", "PT", "NM"})


def _has_modality_transform(ds: object, frame: int) -> bool:
    """Whether ``frame``'s modality values carry a unit to agree on between files, so that files of one dataset
    are mapped jointly when their stored ranges differ: it declares how its stored values become modality values
    (a Modality LUT, a Pixel Value Transformation functional group, or Rescale Slope and Intercept: CT and PET
    always do, their values are Hounsfield units and Bq/ml), an identity rescale (slope 1, intercept 0) counting
    only for CT, PET and NM (an X-ray's identity rescale declares no unit). MONOCHROME1 frames (0 is white) never:
    negated into one joint map with MONOCHROME2 frames they would share a band of it, not the whole range. Without
    a unit the stored values have none to agree on between files (a secondary capture, classic MR, an X-ray), and
    each file keeps the map from its stored range, as it always did."""
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":  # type: ignore[attr-defined]
        return False
    if "ModalityLUTSequence" in ds:  # type: ignore[operator]
        return True
    if _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope") is not None:
        return True
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:  # type: ignore[operator]
        try:
            identity = (_first(ds.RescaleSlope) == 1.0  # type: ignore[attr-defined]
                        and _first(ds.RescaleIntercept) == 0.0)  # type: ignore[attr-defined]
        except (TypeError, ValueError, IndexError):  # malformed: decoding names the file as unreadable
            identity = False
        modality = str(ds.get("Modality", "")).strip().upper()  # type: ignore[attr-defined]
        return not identity or modality in CALIBRATED_MODALITIES
    return False


def _given(value: object) -> bool:
    """Whether an element's value holds something (not None, not an empty string or multi-value)."""
    if value is None:
        return False
    if isinstance(value, str | bytes):
        return bool(value.strip())
    try:
        return len(value) > 0  # type: ignore[arg-type]  # a multi-value
    except TypeError:
        return True  # a number


def _frame_window(ds: object, frame: int) -> tuple[float, float] | None:
    """The window (centre, width) of ``frame``: the top-level one, else the frame's Frame VOI LUT item. An element
    present without a value (type 1C left empty) is no window."""
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")  # type: ignore[attr-defined]
    if not (_given(c) and _given(w)):
        c = _group_value(ds, frame, "FrameVOILUTSequence", "WindowCenter")
        w = _group_value(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    return (_first(c), _first(w)) if _given(c) and _given(w) else None


def _no_decoder(path: Path, syntax: object) -> DataError:
    package = DECODER_PACKAGES.get(str(syntax))
    fix = (f"pip install {package.replace(' and ', ' ')}" if package else
           "export the images uncompressed (Explicit VR Little Endian), e.g. with dcmdjpeg or gdcmconv")
    return DataError(f"DICOM file {str(path)!r} uses the transfer syntax {getattr(syntax, 'name', syntax)} "
                     f"({syntax}), which no installed package decodes. Fix: {fix}.")


def decode_dicom(path: Path, image_size: int, channels: int, window: tuple[float, float] | None, *,
                 map_jointly: bool = False) -> list[Pixels]:
    """:func:`_decode_dicom`, with a header element that is missing or malformed (a PALETTE COLOR file without
    its lookup tables, a string where a number belongs) an unreadable file named with the error, never a
    traceback."""
    try:
        return _decode_dicom(path, image_size, channels, window, map_jointly=map_jointly)
    except DataError:
        raise
    except _HEADER_ERRORS as exc:
        raise _unreadable_header(path, exc) from None


#: The palette lookup-table elements a PALETTE COLOR image needs (PS3.3 C.7.6.3.1.5 and C.7.6.3.1.6).
_PALETTE_ELEMENTS = tuple(f"{c}PaletteColorLookupTable{e}" for c in ("Red", "Green", "Blue")
                          for e in ("Descriptor", "Data"))


def _decode_dicom(path: Path, image_size: int, channels: int, window: tuple[float, float] | None, *,
                  map_jointly: bool = False) -> list[Pixels]:
    """Every frame of one DICOM file, mapped to [0, 1] by the module's rule, resized; one :class:`Pixels` each.

    ``map_jointly``: greyscale integer frames without a window and with a modality transform (Rescale
    Slope/Intercept, a Modality LUT: :attr:`DicomHeader.stored_ranges`) are given as their modality values (kind
    ``"float"``, negated for MONOCHROME1), to be mapped with the dataset's other such images by one affine map
    from their joint minimum and maximum (:func:`dpaudit.images.to_unit_range`), instead of each by its own stored
    range: for datasets whose files map their stored values differently (:func:`stored_ranges_differ`)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_voi, get_decoder

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types on a damaged file
        raise UnreadableImageError(f"DICOM file {str(path)!r} does not read ({library_reason(exc, path)}). Fix: "
                                   "replace or remove the file.") from None
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None
                                                  else "") or "").strip()
    reason = non_image_reason(sop_class, str(ds.get("Modality", "") or ""))
    if reason is not None:
        raise DataError(f"DICOM file {str(path)!r}: {reason}; only image storage objects are images to train on. "
                        f"Fix: {non_image_fix(reason)}.")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise _no_decoder(path, syntax)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if syntax is not None and syntax.is_compressed and "decod" in str(exc).lower():
            raise _no_decoder(path, syntax) from None
        raise UnreadableImageError(f"DICOM file {str(path)!r}: its pixel data do not decode ({library_reason(exc, path)}). Fix: replace "
                                   "or remove the file.") from None
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise UnreadableImageError(f"DICOM file {str(path)!r}: its pixel data do not decode ({library_reason(exc, path)}). Fix: replace "
                                   "or remove the file.") from None
    frames = _frame_count(ds)[0]
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if frames == 1:
        arr = arr[None]
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    # Float Pixel Data and Double Float Pixel Data (Floating Point and Double Floating Point Image Pixel modules,
    # PS3.3 C.7.6.24 and C.7.6.25) hold real values, such as the apparent diffusion coefficients of a parametric
    # map: no stored bits, no stored range. The standard allows them in one-sample MONOCHROME2 images only.
    floating = arr.dtype.kind == "f"
    if floating and (samples != 1 or photometric != "MONOCHROME2"):
        raise UnreadableImageError(f"DICOM file {str(path)!r} holds float pixel data as {photometric} with "
                                   f"{samples} sample(s) per pixel; the standard allows float pixels in one-sample "
                                   "MONOCHROME2 images only. Fix: replace or remove the file.")
    kinds: list[tuple[str, float, float]] = []  # per frame: the Pixels kind and the extremes before resizing
    ids: list[str] = []  # per frame: what identifies its content (_frame_id)
    if photometric not in ("PALETTE COLOR",) and samples < 3:
        _check_header_numbers(ds, path, frames,
                              windows=window is None and not ("VOILUTSequence" in ds and len(ds.VOILUTSequence)))
    if photometric == "PALETTE COLOR":
        lacking = [k for k in _PALETTE_ELEMENTS
                   if k not in ds and not (k.endswith("Data") and f"Segmented{k}" in ds)]
        if lacking:
            raise UnreadableImageError(f"DICOM file {str(path)!r} is PALETTE COLOR without its palette lookup table "
                                       f"({', '.join(lacking)} missing). Fix: replace or remove the file.")
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        unit = apply_color_lut(arr, ds).astype(np.float64) / (2 ** lut_bits - 1)
        ids = [content_id(u, "dicom colour") for u in unit]  # the colours, not the indices (palettes differ)
    elif samples >= 3:
        unit = arr.astype(np.float64) / (2 ** bits - 1)
        # The values in [0, 1] after YBR -> RGB and / (2^Bits Stored - 1), not the stored bytes: the same bytes as
        # RGB and as YBR_FULL are other colours.
        ids = [content_id(u, "dicom colour") for u in unit]
    else:
        planes = []
        if floating and "ModalityLUTSequence" in ds:  # a LUT is indexed by integer stored values
            raise UnreadableImageError(f"DICOM file {str(path)!r} holds float pixel data with a Modality LUT "
                                       "Sequence, which maps integer stored values only. Fix: replace or remove the "
                                       "file.")
        for f in range(arr.shape[0]):
            modality = _frame_modality(ds, f)
            try:
                values = modality(arr[f])
            except _LUT_ERRORS as exc:
                raise UnreadableImageError(f"DICOM file {str(path)!r}: its modality LUT does not apply "
                                           f"({library_reason(exc, path)}). Fix: replace or remove the file.") from None
            if not np.isfinite(values).all():
                r, c = (int(v) for v in np.argwhere(~np.isfinite(values))[0])
                # The header's numbers are finite (_check_header_numbers): a float pixel, or a rescale whose
                # product leaves the float range.
                what = ("holds a non-finite pixel value" if floating and not np.isfinite(arr[f][r, c]) else
                        "has modality values beyond the float range (Rescale Slope/Intercept)")
                raise UnreadableImageError(f"DICOM file {str(path)!r} {what} (frame {f}, row {r}, column {c}). Fix: "
                                           "replace or remove the file.")
            ids.append(_frame_id(values))
            centre_width = _frame_window(ds, f)
            if window is not None:
                lo, hi = window
                plane = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
            elif "VOILUTSequence" in ds and len(ds.VOILUTSequence):
                # The LUT is indexed by integer modality values; round non-integral ones (a fractional slope).
                # Values beyond its ends take its end entries (PS3.3 C.11.2.1.1): clipped here, before the cast,
                # because pydicom subtracts the first mapped value in the LUT's own 8/16-bit type, where a value
                # beyond the range would wrap, and a float beyond int64 would wrap in the cast.
                try:
                    entries, first, lut_bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
                    index = np.round(np.clip(values, first, first + (entries or 2 ** 16) - 1)).astype(np.int64)
                    voi = apply_voi(index, ds, index=0).astype(np.float64)
                except _LUT_ERRORS as exc:
                    raise UnreadableImageError(f"DICOM file {str(path)!r}: its VOI LUT does not apply "
                                               f"({library_reason(exc, path)}). Fix: replace or remove the file, or "
                                               "pass --window LOW,HIGH.") from None
                plane = np.clip(voi / (2 ** lut_bits - 1), 0.0, 1.0)
            elif centre_width is not None:
                if not centre_width[1] >= 1:
                    # PS3.3 C.11.2.1.2: "Window Width (0028,1051) shall always be greater than or equal to 1".
                    raise UnreadableImageError(f"DICOM file {str(path)!r} holds Window Width {centre_width[1]:g} "
                                               "(frame " f"{f}); the standard requires 1 or more (PS3.3 "
                                               "C.11.2.1.2). Fix: pass --window LOW,HIGH (in modality units, e.g. "
                                               "-100,200 for liver CT) to map every file by one window, or correct "
                                               "or remove the file.")
                plane = window_value(values, *centre_width)
            elif floating:
                # No stored range to map: the raw values, mapped with every other float image of the dataset by
                # one affine map from their joint minimum and maximum (dpaudit.images.to_unit_range, the rule of
                # float TIFFs and NIfTI volumes), so that the images of a series keep their relative values.
                planes.append(values)
                kinds.append(("float", float(values.min()), float(values.max())))
                continue
            elif map_jointly and _has_modality_transform(ds, f):
                # The files of this dataset hold different stored ranges (stored_ranges_differ): the modality
                # values, mapped with the dataset's other such images by one affine map (as float pixel data), so
                # that one modality value gives one intensity in every file. MONOCHROME1 (0 is white) negated: the
                # joint map then runs from white at its highest value to black at its lowest.
                plane = -values if photometric == "MONOCHROME1" else values
                planes.append(plane)
                kinds.append(("float", float(plane.min()), float(plane.max())))
                continue
            else:
                try:
                    lo, hi = _stored_range(ds, f)
                except _LUT_ERRORS as exc:
                    raise UnreadableImageError(f"DICOM file {str(path)!r}: its stored range does not apply "
                                               f"({library_reason(exc, path)}). Fix: replace or remove the "
                                               "file.") from None
                plane = np.clip((values - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
            planes.append(1.0 - plane if photometric == "MONOCHROME1" else plane)
            kinds.append(("unit", 0.0, 1.0))
        unit = np.stack(planes)[..., None]
    if not kinds:
        kinds = [("unit", 0.0, 1.0)] * unit.shape[0]
    out = []
    for f, (kind, low, high) in enumerate(kinds):
        frame = match_channels(unit[f].astype(np.float32), channels)
        out.append(Pixels(resize_float(frame, image_size), kind, low, high, ids[f]))
    return out


def _frame_id(values: np.ndarray) -> str:
    """What identifies a greyscale frame (:attr:`Pixels.digest`, :func:`dpaudit.images.content_id`): its modality
    values (stored values through Rescale Slope and Intercept), so that a copy is found whatever de-identification
    or re-export did to its header (another PatientID, remapped UIDs, another transfer syntax, or stored values
    shifted with the intercept to match: the same Hounsfield units), never a UID. Sound: with a finite non-zero
    slope (:func:`_check_header_numbers`) the rescale is one-to-one, so equal modality values are one image in the
    unit the modality measures. A Modality LUT Sequence is applied too: two files with the same stored values and
    other LUTs (x -> 10 x, x -> 63 - x) are other images, and a LUT mapping several stored values to one gives one
    image from them. Empty (unknown: counted as distinct) for a constant frame."""
    return content_id(values, "dicom modality")


#: The header numbers the decoder computes with, by keyword, as the messages name them.
_NUMBER_NAMES = {"RescaleSlope": "Rescale Slope", "RescaleIntercept": "Rescale Intercept",
                 "WindowCenter": "Window Center", "WindowWidth": "Window Width"}


def _check_header_numbers(ds: object, path: Path, frames: int, *, windows: bool) -> None:
    """Every header number a greyscale frame is computed with is a finite number (Rescale Slope and Intercept,
    top-level or in the frame's Pixel Value Transformation; with ``windows``, the Window Center and Width the
    frame is mapped by), and the slope is not 0 (every modality value would be the intercept: no image): else the
    file is unreadable, named with the element and its value (never 'a non-finite pixel value': the pixels are not
    to blame)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")  # type: ignore[attr-defined]
    lut = "ModalityLUTSequence" in ds  # type: ignore[operator]
    for f in range(frames if per_frame else 1):
        found: list[tuple[str, object]] = []
        if not lut:
            for kw in ("RescaleSlope", "RescaleIntercept"):
                if kw in ds:  # type: ignore[operator]
                    found.append((kw, ds.get(kw)))  # type: ignore[attr-defined]
                elif "RescaleSlope" not in ds:  # type: ignore[operator]  # the frame's functional group
                    value = _group_value(ds, f, "PixelValueTransformationSequence", kw)
                    if value is not None:
                        found.append((kw, value))
        if windows:
            c, w = ds.get("WindowCenter"), ds.get("WindowWidth")  # type: ignore[attr-defined]
            if not (_given(c) and _given(w)):
                c = _group_value(ds, f, "FrameVOILUTSequence", "WindowCenter")
                w = _group_value(ds, f, "FrameVOILUTSequence", "WindowWidth")
            if _given(c) and _given(w):
                found += [("WindowCenter", c), ("WindowWidth", w)]
        for kw, raw in found:
            if not _given(raw):
                continue
            try:
                number = _first(raw)
            except (TypeError, ValueError, IndexError):
                number = None
            where = f" (frame {f})" if per_frame else ""
            shown = raw[0] if isinstance(raw, list | tuple) else raw
            if number is None or not np.isfinite(number):
                raise UnreadableImageError(f"DICOM file {str(path)!r} holds {_NUMBER_NAMES[kw]} {str(shown)!r}"
                                           f"{where}, which is not a finite number. Fix: replace or remove the file.")
            if kw == "RescaleSlope" and number == 0:
                raise UnreadableImageError(f"DICOM file {str(path)!r} holds Rescale Slope 0{where}: every modality "
                                           "value is its Rescale Intercept, so the file holds no image. Fix: replace "
                                           "or remove the file.")




def decode_size(path: Path) -> DecodeSize | None:
    """The pixel dimensions :func:`decode_dicom` decodes ``path`` at (Rows, Columns, Samples per Pixel, Number of
    Frames), from its header (the pixel data not read); None when they do not read (the decode reports it). Every
    DICOM file decodes through float64 (modality and VOI transforms)."""
    import pydicom

    try:
        with pydicom_warnings_quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            frames, _ = _frame_count(ds)
            return DecodeSize(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1), max(1, frames),
                              deep=True)
    except Exception:  # any header that does not read: the decode names the file and why
        return None
