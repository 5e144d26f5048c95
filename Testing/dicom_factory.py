"""Build small Siemens-, GE- and Philips-style PET (and CT/MR/RTSTRUCT) DICOM series for tests.

Tests give the *stored* integers and the per-slice RescaleSlope/Intercept, so the expected Bq/ml is a hand
formula (stored × slope + intercept) and never comes from the code under test.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

SOP_CLASSES = {"PT": "1.2.840.10008.5.1.4.1.1.128", "CT": "1.2.840.10008.5.1.4.1.1.2",
               "MR": "1.2.840.10008.5.1.4.1.1.4", "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3"}

# Siemens-like defaults: FDG, 70 kg, 370 MBq at 09:00:00, scan 10:00:00 on 2024-01-01
PET_HEADER: dict[str, Any] = {
    "PatientName": "Test^Factory", "PatientID": "FACTORY1", "PatientSex": "M", "PatientWeight": "70",
    "PatientSize": "1.75", "StudyDate": "20240101", "StudyTime": "095500", "SeriesDate": "20240101",
    "SeriesTime": "100000", "AcquisitionDate": "20240101", "AcquisitionTime": "100000",
    "Manufacturer": "SIEMENS", "SeriesDescription": "PET AC", "Units": "BQML", "DecayCorrection": "START",
    "CorrectedImage": ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"], "SeriesType": ["WHOLE BODY", "IMAGE"],
    "ActualFrameDuration": "180000", "FrameReferenceTime": "90000",
}
RADIO: dict[str, Any] = {"Radiopharmaceutical": "Fluorodeoxyglucose", "RadiopharmaceuticalStartTime": "090000",
                         "RadionuclideTotalDose": "370000000", "RadionuclideHalfLife": "6586.2"}


def _apply(ds: Dataset, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)


def write_series(folder, stored: np.ndarray, *, modality: str = "PT", slopes: Sequence[float] | None = None,
                 intercepts: Sequence[float] | None = None, positions: Sequence[float] | None = None,
                 row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0), origin=(-10.0, -20.0, 30.0),
                 pixel_spacing=(2.0, 2.0), header: dict[str, Any] | None = None,
                 radio: dict[str, Any] | None = None, vendor: str = "siemens",
                 ge_scan_datetime: str | None = None, philips_suv: float | None = None,
                 philips_activity: float | None = None, philips_block: int | None = 0x10,
                 implicit_vr: bool = False, per_slice: Callable[[int, Dataset], None] | None = None,
                 series_uid: str | None = None, seed: int = 0) -> list[Path]:
    """Write ``stored`` ([k, j, i] int16) as one series; slice k sits at origin + positions[k]·(row×col).

    ``pixel_spacing`` is DICOM order (row spacing, column spacing). ``header``/``radio`` override the
    defaults (None deletes a tag). Philips factors go into the block of ``philips_block`` (None: raw elements
    without a private creator). Files get shuffled names so that the reader must sort.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nk = stored.shape[0]
    slopes = list(slopes) if slopes is not None else [1.0] * nk
    intercepts = list(intercepts) if intercepts is not None else [0.0] * nk
    positions = list(positions) if positions is not None else [2.0 * k for k in range(nk)]
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    names = [f"{random.Random(seed + k).getrandbits(40):012x}.dcm" for k in range(nk)]
    paths = []
    for k in range(nk):
        ds = Dataset()
        ds.SOPClassUID = SOP_CLASSES[modality]
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        if modality == "PT":
            _apply(ds, PET_HEADER)
            item = Dataset()
            _apply(item, RADIO)
            _apply(item, radio or {})
            ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        if vendor == "ge":
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
            if ge_scan_datetime:
                block.add_new(0x0D, "DT", ge_scan_datetime)
        if vendor == "philips":
            ds.Manufacturer = "Philips Medical Systems"
            ds.Units = "CNTS"
            _philips(ds, philips_block, philips_suv, philips_activity)
        _apply(ds, header or {})
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in np.asarray(origin) + positions[k] * normal]
        ds.PixelSpacing = [f"{v:.10g}" for v in pixel_spacing]
        ds.SliceThickness = "2"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[k]:.10g}", f"{intercepts[k]:.10g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(stored[k], dtype=np.int16).tobytes()
        if per_slice:
            per_slice(k, ds)
        paths.append(save(ds, folder / names[k], implicit_vr=implicit_vr))
    return paths


def _philips(ds: Dataset, block: int | None, suv: float | None, activity: float | None) -> None:
    if block is None:  # raw elements, no creator (as after some anonymisers)
        if suv is not None:
            ds.add_new((0x7053, 0x1000), "DS", f"{suv:.10g}")
        if activity is not None:
            ds.add_new((0x7053, 0x1009), "DS", f"{activity:.10g}")
        return
    if block != 0x10:  # another vendor's block first, holding a decoy at (7053,1000)
        ds.add_new((0x7053, 0x0010), "LO", "SOME OTHER CREATOR")
        ds.add_new((0x7053, 0x1000), "DS", "999")
    ds.add_new((0x7053, block), "LO", "Philips PET Private Group ")
    if suv is not None:
        ds.add_new((0x7053, (block << 8) | 0x00), "DS", f"{suv:.10g}")
    if activity is not None:
        ds.add_new((0x7053, (block << 8) | 0x09), "DS", f"{activity:.10g}")


def save(ds: Dataset, path: Path, *, implicit_vr: bool = False) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rtstruct(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES["RTSTRUCT"], generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "RTSTRUCT", generate_uid(), generate_uid()
    ds.SeriesDescription = "contours"
    return save(ds, folder / "rs.dcm")


def ramp(nk: int = 4, nj: int = 3, ni: int = 5) -> np.ndarray:
    """Distinct stored integers: value = 1000·k + 10·j + i (so any axis mix-up shows)."""
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    return (1000 * k + 10 * j + i + 1).astype(np.int16)
