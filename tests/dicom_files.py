"""Small DICOM files written with pydicom for the tests: a DX data set around given pixels, natively encoded
(:func:`dicom_dataset`), as bytes (:func:`dicom_bytes`) or a file (:func:`write_dicom`). The identifiers in
:data:`IDENTIFIERS` are what the tests make sure never reach an output, a log or an answer."""

from __future__ import annotations

import io

import numpy as np

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"  # fixed: the fuzzer's seeds must be the same bytes every run
IDENTIFIERS = {"PatientName": "Doe^Jane", "PatientID": "PID-8675309", "PatientBirthDate": "19450704",
               "StudyDate": "20240229", "AccessionNumber": "ACC-99182"}


def dicom_dataset(pixels: np.ndarray, bits_stored: int = 12, photometric: str = "MONOCHROME2",
                  syntax: str = "1.2.840.10008.1.2.1", identifiers: dict | None = None, **attrs):
    """A DX data set holding ``pixels`` natively (one frame, or frames x rows x cols), with ``identifiers``
    (default :data:`IDENTIFIERS`) and ``attrs`` as data elements. Its UIDs are fixed: the same bytes every run."""
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SOP_CLASS, SOP_INSTANCE
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS, SOP_INSTANCE
    ds.Modality = "DX"
    for key, value in (IDENTIFIERS if identifiers is None else identifiers).items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def dicom_bytes(ds, **save) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, **{"enforce_file_format": True, **save})
    return buf.getvalue()


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, **attrs):
    """Write a minimal valid DICOM file (explicit VR little endian) of ``pixels`` to ``path``: no patient
    identifiers unless given in ``attrs``. Returns ``path``."""
    ds = dicom_dataset(pixels, bits_stored, photometric, identifiers={}, **attrs)
    ds.save_as(path, enforce_file_format=True)
    return path
