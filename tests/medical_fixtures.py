"""DICOM and NIfTI files built for the tests, as scanners and PACS exports write them (no downloads).

DICOM files are written with pydicom; compressed ones are encoded with pydicom's own encoders where it has one
(RLE Lossless: pydicom; JPEG-LS: pyjpegls; JPEG 2000: pylibjpeg-openjpeg, through ``Dataset.compress``). pydicom
cannot encode JPEG, so: JPEG baseline frames are encoded with Pillow (libjpeg) and encapsulated with
``pydicom.encaps.encapsulate``; JPEG lossless (process 14, selection value 1) frames are encoded by
:func:`jpeg_lossless_sv1` below, a plain implementation of ITU-T T.81 annex H (predictor 1, one Huffman table),
and decoded by pylibjpeg-libjpeg in the loader, so the test checks one implementation against another.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)


def dicom_file(path: Path, pixels: np.ndarray, *, patient: str | None = "PAT-0001", bits_stored: int = 12,
               photometric: str = "MONOCHROME2", signed: bool = False, big_endian: bool = False,
               preamble: bool = True, sex: str | None = "F", age: str | None = "045Y", **elements: object
               ) -> Dataset:
    """Write ``pixels`` (rows x cols, frames x rows x cols, or ... x 3 for colour) as an uncompressed DICOM file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    if patient is not None:
        ds.PatientID = patient
        ds.PatientName = f"Doe^{patient}"
    if sex is not None:
        ds.PatientSex = sex
    if age is not None:
        ds.PatientAge = age
    colour = photometric in ("RGB", "YBR_FULL")
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    allocated = 8 if bits_stored <= 8 else 16 if bits_stored <= 16 else 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = {(8, False): "u1", (8, True): "i1", (16, False): "u2", (16, True): "i2", (32, False): "u4",
             (32, True): "i4"}[(allocated, signed)]
    ds.PixelData = pixels.astype((">" if big_endian else "<") + dtype).tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    if big_endian:
        ds.save_as(path, enforce_file_format=True, little_endian=False, implicit_vr=False)
    else:
        ds.save_as(path, enforce_file_format=preamble)
    return ds


def float_dicom_file(path: Path, values: np.ndarray, *, double: bool = False, patient: str = "PAT-0001",
                     sop_class: str = "1.2.840.10008.5.1.4.1.1.30", photometric: str = "MONOCHROME2",
                     **elements: object) -> Dataset:
    """Write ``values`` (rows x cols or frames x rows x cols) as Float Pixel Data (32-bit) or Double Float Pixel
    Data (64-bit), as a Parametric Map (PS3.3 A.75, e.g. an ADC map of an MR study) stores them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.PatientID = patient
    if values.ndim == 3:
        ds.NumberOfFrames = values.shape[0]
    ds.Rows, ds.Columns = values.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 64 if double else 32
    data = values.astype("<f8" if double else "<f4").tobytes()
    if double:
        ds.DoubleFloatPixelData = data
    else:
        ds.FloatPixelData = data
    for key, value in elements.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def jpeg_lossless_sv1(arr: np.ndarray, precision: int) -> bytes:
    """Encode a 2-D unsigned array as a lossless JPEG (ITU-T T.81 annex H, process 14, predictor 1, Pt 0)."""
    rows, cols = arr.shape
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)  # H.1.2.1: first sample of the first line
    pred[0, 1:] = x[0, :-1]  # first line: Ra
    pred[1:, 0] = x[:-1, 0]  # first column: Rb
    pred[1:, 1:] = x[1:, :-1]  # selection value 1: Ra
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)
    # One DC table: categories 0..16 all coded on 5 bits (canonical codes 0..16; no all-ones code).
    bits = [0, 0, 0, 0, 17] + [0] * 11
    out = bytearray()
    acc, n = 0, 0

    def put(value: int, length: int) -> None:
        nonlocal acc, n
        acc = (acc << length) | (value & ((1 << length) - 1))
        n += length
        while n >= 8:
            n -= 8
            byte = (acc >> n) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << n) - 1

    for d in diff.ravel().tolist():
        ssss = 0 if d == 0 else abs(d).bit_length()
        put(ssss, 5)
        if 0 < ssss < 16:
            put(d if d > 0 else d + (1 << ssss) - 1, ssss)
    if n:
        put((1 << (8 - n)) - 1, 8 - n)  # pad with 1 bits

    def seg(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    return (b"\xff\xd8"
            + seg(0xFFC3, struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0]))
            + seg(0xFFC4, bytes([0x00]) + bytes(bits) + bytes(range(17)))
            + seg(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0]))
            + bytes(out) + b"\xff\xd9")


def encapsulated(path: Path, pixels: np.ndarray, syntax: str, **kw: object) -> Dataset:
    """A DICOM file whose single frame is JPEG baseline (Pillow) or JPEG lossless SV1 (:func:`jpeg_lossless_sv1`)."""
    ds = dicom_file(path, pixels, **kw)
    if syntax == JPEGBaseline8Bit:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=92)
        frame = buf.getvalue()
    elif syntax == JPEGLosslessSV1:
        frame = jpeg_lossless_sv1(pixels, int(ds.BitsStored))
    else:
        raise ValueError(syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return ds


def nifti_file(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), str(path))
