"""Write a PET Volume as a classic DICOM PET series (one file per slice) with the tags SUV needs.

What a physicist needs to know:

* Pixels are int16 with a **per-slice RescaleSlope** (intercept 0): each slice uses the full int16 range,
  so the quantisation error is below 1/32767 of that slice's maximum. Non-finite voxels are refused.
* Timing is written the QIBA-friendly way: SeriesDate/Time and AcquisitionDate/Time = scan start (unless
  given), DecayCorrection START, CorrectedImage with ATTN and DECY, FrameReferenceTime = the
  average-count-rate time of a frame of ``frame_duration_s`` (so scan-start back-computation gives the same
  scan start), and RadiopharmaceuticalStartTime *and* StartDateTime. A QIBA reader therefore computes
  ``SUVbw factor = weight·1000 / (dose · 2^(−Δt/T½))`` with Δt = scan − injection.
* Units: ``BQML`` (the volume must be in, or convertible to, Bq/ml), ``GML`` (SUVbw pixels), or ``CNTS``
  with ``vendor_style="philips"`` (Philips private SUV and activity-concentration scale factors).
  ``vendor_style="ge"`` adds GE's private scan date/time (0009,xx0D).
* Patient, study and frame-of-reference identity are taken from ``volume.metadata["dicom_suv_attributes"]``
  when the volume came from DICOM (the derived series then joins the original study), else invented.
  Every series gets new Series/SOP Instance UIDs.
* The series is written into a temporary folder beside ``folder`` and renamed into place at the end: a
  crash or cancel never leaves a half-written series.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import NMAIError
from .io import atomic_folder
from .suv import GE_CREATOR, PHILIPS_CREATOR, average_count_rate_time_s, decayed_dose_bq
from .volume import Volume

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
VENDOR_STYLES = ("siemens", "ge", "philips")


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _ds(value: float):
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def write_pet_dicom_series(volume: Volume, folder, *, patient_weight_kg: float | None,
                           injected_dose_bq: float | None, injection_datetime: datetime | None,
                           scan_datetime: datetime, half_life_s: float = 6586.2, manufacturer: str = "NMAI",
                           units: str = "BQML", vendor_style: str = "siemens",
                           patient_size_m: float | None = None, patient_sex: str | None = None,
                           patient_name: str | None = None, patient_id: str | None = None,
                           series_description: str = "NMAI PET", series_number: int = 901,
                           radiopharmaceutical: str = "Fluorodeoxyglucose", radionuclide: str = "18F",
                           frame_duration_s: float = 180.0, decay_correction: str = "START",
                           series_datetime: datetime | None = None, acquisition_datetime: datetime | None = None,
                           philips_activity_factor: float = 1.0, image_type=("DERIVED", "PRIMARY"),
                           overwrite: bool = False,
                           progress: Callable[[float, str], None] | None = None) -> Path:
    """Write ``volume`` as PET DICOM in ``folder`` (created; must not exist or be empty unless ``overwrite``).

    Returns the folder. Pixel values: Bq/ml for BQML, SUVbw for GML, Bq/ml ÷ ``philips_activity_factor`` for
    Philips CNTS. ``patient_weight_kg``/``injected_dose_bq``/``injection_datetime`` may be None to write a
    series without SUV information (the reader then loads Bq/ml and says why SUV is unavailable).
    """
    units = units.upper()
    if vendor_style not in VENDOR_STYLES:
        raise NMAIError(f"vendor_style {vendor_style!r} unknown; use one of {', '.join(VENDOR_STYLES)}")
    if units not in ("BQML", "GML", "CNTS") or (units == "CNTS") != (vendor_style == "philips"):
        raise NMAIError(f"cannot write Units {units} in {vendor_style} style; use BQML or GML, or CNTS with "
                        "vendor_style='philips'")
    data = volume.to_units("SUVbw" if units == "GML" else "Bq/ml").array.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise NMAIError("the volume has NaN or infinite voxels; fix them before writing DICOM")
    if units == "CNTS":
        data = data / philips_activity_factor
    row, col, axis = (volume.direction[:, i] / np.linalg.norm(volume.direction[:, i]) for i in range(3))
    if abs(abs(float(np.dot(np.cross(row, col), axis))) - 1.0) > 1e-4:
        raise NMAIError("the volume's slice axis is not perpendicular to its rows and columns; resample it to an "
                        "orthogonal grid before writing DICOM")
    folder = Path(folder)
    base = _base_dataset(volume, dict(locals()))  # the keyword arguments above, by name
    with atomic_folder(folder, replaceable=lambda f: overwrite) as tmp:
        nk = data.shape[0]
        for k in range(nk):
            _write_slice(base, data[k], k, volume, tmp / f"PT_{k + 1:04d}.dcm")
            if progress is not None:
                progress((k + 1) / nk, f"writing DICOM slice {k + 1}/{nk}")
    return folder


def _base_dataset(volume: Volume, a: dict[str, Any]):
    """Everything that is the same on every slice (a = the caller's arguments)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    attrs = volume.metadata.get("dicom_suv_attributes") or {}
    scan: datetime = a["scan_datetime"]
    series = a["series_datetime"] or scan
    acquisition = a["acquisition_datetime"] or scan
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(a["image_type"])
    ds.SOPClassUID = PET_STORAGE
    ds.Modality = "PT"
    ds.Manufacturer = a["manufacturer"]
    ds.PatientName = a["patient_name"] or attrs.get("PatientName") or "NMAI^Anonymous"
    ds.PatientID = a["patient_id"] or attrs.get("PatientID") or "NMAI"
    ds.PatientBirthDate = attrs.get("PatientBirthDate", "")
    ds.PatientSex = a["patient_sex"] or attrs.get("PatientSex", "")
    if a["patient_weight_kg"] is not None:
        ds.PatientWeight = _ds(a["patient_weight_kg"])
    if a["patient_size_m"] is not None:
        ds.PatientSize = _ds(a["patient_size_m"])
    ds.StudyInstanceUID = attrs.get("StudyInstanceUID") or generate_uid()
    ds.StudyDate = attrs.get("StudyDate") or _da(scan)
    ds.StudyTime = attrs.get("StudyTime") or _tm(scan)
    ds.StudyID = attrs.get("StudyID", "1")
    ds.AccessionNumber = attrs.get("AccessionNumber", "")
    ds.ReferringPhysicianName = attrs.get("ReferringPhysicianName", "")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = a["series_number"]
    ds.SeriesDescription = a["series_description"]
    ds.SeriesDate, ds.SeriesTime = _da(series), _tm(series)
    ds.AcquisitionDate, ds.AcquisitionTime = _da(acquisition), _tm(acquisition)
    ds.ContentDate, ds.ContentTime = _da(datetime.now()), _tm(datetime.now())
    ds.FrameOfReferenceUID = attrs.get("FrameOfReferenceUID") or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Units = a["units"]
    ds.DecayCorrection = a["decay_correction"]
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.NumberOfSlices = int(volume.shape[0])
    half_life = float(a["half_life_s"])
    frame_s = float(a["frame_duration_s"])
    reference_s = (acquisition - scan).total_seconds() + average_count_rate_time_s(frame_s, half_life)
    ds.ActualFrameDuration = int(round(frame_s * 1000))
    ds.FrameReferenceTime = _ds(reference_s * 1000.0)
    ds.DecayFactor = _ds(2.0 ** (reference_s / half_life))
    radio = Dataset()
    radio.Radiopharmaceutical = a["radiopharmaceutical"]
    if a["injection_datetime"] is not None:
        radio.RadiopharmaceuticalStartTime = _tm(a["injection_datetime"])
        radio.RadiopharmaceuticalStartDateTime = _dt(a["injection_datetime"])
    if a["injected_dose_bq"] is not None:
        radio.RadionuclideTotalDose = _ds(a["injected_dose_bq"])
    radio.RadionuclideHalfLife = _ds(half_life)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", f"^{a['radionuclide']}"
    if a["radionuclide"] == "18F":
        code.CodeMeaning = "^18^Fluorine"
    radio.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
    style = a["vendor_style"]
    if style == "ge":
        ds.private_block(0x0009, GE_CREATOR, create=True).add_new(0x0D, "DT", _dt(scan))
    if style == "philips":
        activity = float(a["philips_activity_factor"])
        block = ds.private_block(0x7053, PHILIPS_CREATOR, create=True)
        suv = None
        if None not in (a["patient_weight_kg"], a["injected_dose_bq"], a["injection_datetime"]):
            dose = decayed_dose_bq(a["injected_dose_bq"], half_life,
                                   (scan - a["injection_datetime"]).total_seconds())
            suv = a["patient_weight_kg"] * 1000.0 / dose * activity
        if suv is not None:
            block.add_new(0x00, "DS", _ds(suv))
        block.add_new(0x09, "DS", _ds(activity))
    return ds


def _write_slice(base, values: np.ndarray, k: int, volume: Volume, path: Path) -> None:
    import copy

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(base)
    peak = float(np.abs(values).max())
    slope = float(_ds(peak / 32767.0)) if peak > 0 else 1.0
    stored = np.clip(np.rint(values / slope), -32768, 32767).astype(np.int16)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImageIndex = k + 1
    si, sj, sk = volume.spacing
    position = volume.index_to_lps() @ np.array([0.0, 0.0, float(k), 1.0])
    ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([volume.direction[:, 0], volume.direction[:, 1]])]
    normal = np.cross(volume.direction[:, 0], volume.direction[:, 1])
    ds.SliceLocation = _ds(float(position[:3] @ normal))
    ds.PixelSpacing = [_ds(sj), _ds(si)]  # row spacing (between rows), column spacing
    ds.SliceThickness = _ds(sk)
    ds.SpacingBetweenSlices = _ds(sk)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = _ds(slope)
    ds.RescaleIntercept = "0"
    ds.PixelData = stored.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PET_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
