"""Read one DICOM image series (PET, CT or MR) from a folder into a :class:`~nmai.volume.Volume`.

What a physicist needs to know:

* **One series at a time.** Files are grouped by SeriesInstanceUID (the folder is searched recursively; files
  that are not DICOM are skipped). A folder with several series is an error that lists them, unless
  ``series_uid`` picks one; passing a single file reads that file's series from its folder.
* **PET (Modality PT)** is read slice by slice with pydicom, applying *each slice's own* RescaleSlope and
  RescaleIntercept (scanners scale every slice separately). The result is float32 activity concentration in
  **Bq/ml** with SUV factors in ``metadata`` (:mod:`nmai.suv`, QIBA rules). Units GML, and Philips CNTS
  carrying only the SUV Scale Factor, are loaded directly in **SUVbw**; then Bq/ml is unavailable and
  ``metadata["activity_unavailable_reason"]`` says why. When the Units tag (0054,1001) is missing the values
  are *assumed* to be Bq/ml (BQML): ``metadata["warnings"]`` says so and ``units_from_file`` is False, so a
  caller may declare other units.
* **Geometry** is LPS from ImagePositionPatient/ImageOrientationPatient/PixelSpacing: slices are sorted along
  the normal row×column, direction columns are (row, column, normal). The slice spacing is the mean
  distance between slice positions. When positions deviate from that uniform grid by more than 1 % of the
  spacing (GE whole-body data varies 3.19–3.29 mm where bed positions overlap), the stack is linearly
  interpolated along the slice axis onto the uniform grid from the first to the last slice, and
  ``metadata["slice_spacing_resampled"]`` records the original min/max spacing.
* **CT** is returned in HU, **MR** in arbitrary units, both float32 on the same geometry rules.
* Not supported, with a clear error: other modalities (RTSTRUCT, SR, SEG, ...), multi-frame (enhanced) images,
  several images at one position (dynamic or gated series), gantry-tilted or mixed-orientation stacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import NMAIError
from .suv import (GE_CREATOR, PHILIPS_CREATOR, compute_suv, header_from_datasets, parse_da, parse_tm, private_value,
                  to_float)
from .volume import Volume

PET_UNITS = ("BQML", "CNTS", "GML")
OTHER_UNITS = {"CT": "HU", "MR": "a.u."}
ENHANCED_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.130": "Enhanced PET", "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
                        "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR"}
SUV_KEYWORDS = ("Units", "DecayCorrection", "CorrectedImage", "PatientWeight", "PatientSize", "PatientSex",
                "PatientAge", "PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                "SeriesInstanceUID", "SeriesDate", "SeriesTime", "SeriesDescription", "SeriesNumber",
                "FrameOfReferenceUID", "Manufacturer", "ManufacturerModelName", "SeriesType", "CountsSource",
                "ReconstructionMethod", "AttenuationCorrectionMethod", "ScatterCorrectionMethod",
                "ActualFrameDuration", "ImageType")
RADIO_KEYWORDS = ("Radiopharmaceutical", "RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime",
                  "RadionuclideTotalDose", "RadionuclideHalfLife", "RadionuclidePositronFraction",
                  "RadiopharmaceuticalVolume")


class _File:
    """A DICOM file and its header (read without pixels)."""

    def __init__(self, path: Path, ds: Any):
        self.path, self.ds = path, ds


# ------------------------------------------------------------------------------------------ public API
def list_dicom_series(path) -> list[dict[str, Any]]:
    """The image series in a folder: uid, modality, description and number of files."""
    return [_summary(uid, files) for uid, files in _scan(_folder(Path(path))).items()]


def read_dicom_series(path, *, series_uid: str | None = None) -> Volume:
    """Read the DICOM series in folder ``path`` (or the series of file ``path``) as a Volume."""
    path = Path(path)
    if not path.exists():
        raise NMAIError(f"{path}: no such file or folder")
    folder = _folder(path)
    if path.is_file():
        ds = _read_header(path)
        if ds is None:
            raise NMAIError(f"{path}: not a DICOM file; pass a DICOM series folder")
        series_uid = series_uid or str(ds.get("SeriesInstanceUID", ""))
    groups = _scan(folder)
    if not groups:
        raise NMAIError(f"{folder}: no DICOM image files found; pass the folder that holds one series' files")
    if series_uid is not None:
        if series_uid not in groups:
            raise NMAIError(f"{folder}: no series with SeriesInstanceUID {series_uid}; it holds "
                            f"{'; '.join(_describe(_summary(u, f)) for u, f in groups.items())}")
        files = groups[series_uid]
    elif len(groups) > 1:
        raise NMAIError(f"{folder} holds {len(groups)} DICOM series ("
                        f"{'; '.join(_describe(_summary(u, f)) for u, f in groups.items())}); pass the folder "
                        "of one series, or choose one with series_uid=")
    else:
        files = next(iter(groups.values()))
    ds = files[0].ds
    modality = str(ds.get("Modality", "")).upper()
    sop = str(ds.get("SOPClassUID", ""))
    if sop in ENHANCED_SOP_CLASSES or any(int(f.ds.get("NumberOfFrames", 1) or 1) > 1 for f in files):
        raise NMAIError(f"{folder}: multi-frame ({ENHANCED_SOP_CLASSES.get(sop, 'enhanced')}) DICOM is not "
                        "supported; export the series as classic single-frame images")
    if modality == "PT":
        return _read_pet(folder, files)
    if modality in OTHER_UNITS:
        return _read_other(folder, files, modality)
    raise NMAIError(f"{folder}: the series is {modality or 'of unknown modality'} "
                    f"({str(ds.get('SeriesDescription', '')) or 'no description'}); NMAI reads PET (PT), CT or "
                    "MR image series — pass the folder of an image series")


# ------------------------------------------------------------------------------------------ folder scan
def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _read_header(path: Path):
    """Header of a DICOM file, None when it is not DICOM; NMAIError when DICOM but unreadable."""
    import pydicom

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise NMAIError(f"{path}: cannot read file ({exc.strerror}); check permissions") from None
    is_part10 = len(head) == 132 and head[128:132] == b"DICM"
    raw = head[:2] == b"\x08\x00" and not is_part10  # DICOM without preamble starts with group 0008
    if not (is_part10 or raw):
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=raw)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "unreadable"
        if not is_part10:
            return None
        raise NMAIError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {str(exc)[:120]}); remove or "
                        "re-export it") from None


def _scan(folder: Path) -> dict[str, list[_File]]:
    groups: dict[str, list[_File]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(path)
        if ds is None or _is_dicomdir(ds):
            continue
        if not str(ds.get("SeriesInstanceUID", "")).strip():
            raise NMAIError(f"{path}: DICOM file without SeriesInstanceUID (truncated or incomplete); remove or "
                            "re-export it")
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(_File(path, ds))
    return dict(sorted(groups.items()))


def _is_dicomdir(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10"


def _summary(uid: str, files: list[_File]) -> dict[str, Any]:
    ds = files[0].ds
    return {"series_instance_uid": uid, "modality": str(ds.get("Modality", "")),
            "series_description": str(ds.get("SeriesDescription", "")), "files": len(files)}


def _describe(s: dict[str, Any]) -> str:
    return f"{s['series_instance_uid']}: {s['modality']} '{s['series_description']}', {s['files']} files"


# ------------------------------------------------------------------------------------------ geometry
def _geometry(folder: Path, files: list[_File]):
    """Sort slices along the normal. Returns (sorted files, positions along normal, origin, direction, si, sj)."""
    try:
        iops = np.array([[float(v) for v in f.ds.ImageOrientationPatient] for f in files])
        ipps = np.array([[float(v) for v in f.ds.ImagePositionPatient] for f in files])
        pixel = np.array([[float(v) for v in f.ds.PixelSpacing] for f in files])
        sizes = {(int(f.ds.Rows), int(f.ds.Columns)) for f in files}
    except (AttributeError, ValueError, TypeError, KeyError):
        raise NMAIError(f"{folder}: a slice lacks ImageOrientationPatient, ImagePositionPatient, PixelSpacing "
                        "or Rows/Columns; the series cannot be placed in space") from None
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise NMAIError(f"{folder}: the slices have different orientations; pass a series with one orientation")
    if not np.allclose(pixel, pixel[0], atol=1e-4) or len(sizes) > 1:
        raise NMAIError(f"{folder}: the slices have different sizes or pixel spacings; pass one series")
    row, col = iops[0, :3], iops[0, 3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = ipps @ normal
    order = np.argsort(positions, kind="stable")
    positions, ipps = positions[order], ipps[order]
    if len(positions) > 1 and np.min(np.diff(positions)) < 1e-3:
        raise NMAIError(f"{folder}: several images share one slice position (dynamic, gated or duplicated "
                        "series); export a single static frame")
    inplane = (ipps - ipps[0]) @ np.stack([row, col], axis=1)
    if np.abs(inplane).max() > 0.05 * pixel[0].min():
        raise NMAIError(f"{folder}: the slices are not stacked along the slice normal (gantry tilt or sheared "
                        "stack); resample the series to an orthogonal grid on the scanner first")
    direction = np.stack([row, col, normal], axis=1)
    return [files[i] for i in order], positions, ipps[0], direction, float(pixel[0, 1]), float(pixel[0, 0])


def resample_to_uniform(stack: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, float, dict | None]:
    """Put slices at sorted ``positions`` (mm) onto a uniform grid from first to last.

    Returns (stack, spacing, info). When no position is off the uniform grid by more than 1 % of the mean
    spacing the stack is returned unchanged and info is None; otherwise each output slice is the linear
    interpolation of its two neighbours and info holds the original min/max spacing.
    """
    n = len(positions)
    spacing = float(positions[-1] - positions[0]) / (n - 1)
    target = positions[0] + spacing * np.arange(n)
    deviation = float(np.abs(positions - target).max())
    if deviation <= 0.01 * spacing:
        return stack, spacing, None
    hi = np.clip(np.searchsorted(positions, target, side="right"), 1, n - 1)
    lo = hi - 1
    weight = np.clip((target - positions[lo]) / (positions[hi] - positions[lo]), 0.0, 1.0)
    out = np.empty_like(stack)
    for k in range(n):
        out[k] = (1.0 - weight[k]) * stack[lo[k]] + weight[k] * stack[hi[k]]
    gaps = np.diff(positions)
    return out, spacing, {"min_mm": round(float(gaps.min()), 6), "max_mm": round(float(gaps.max()), 6),
                          "max_deviation_mm": round(deviation, 6), "uniform_mm": round(spacing, 6)}


def _pixels(path: Path) -> tuple[np.ndarray, Any]:
    """Stored pixel values (float64) and the full dataset; SimpleITK decodes what pydicom cannot."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)  # header already checked by _read_header
    except Exception as exc:  # noqa: BLE001
        raise NMAIError(f"{path}: unreadable DICOM file ({type(exc).__name__}); remove or re-export it") from None
    try:
        return np.asarray(ds.pixel_array, dtype=np.float64), ds
    except Exception as exc:  # noqa: BLE001 - compressed syntax without a pydicom handler, truncated data
        first = f"{type(exc).__name__}: {str(exc)[:100]}"
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetOutputPixelType(sitk.sitkFloat64)
        array = sitk.GetArrayFromImage(reader.Execute()).reshape(int(ds.Rows), int(ds.Columns))
        # GDCM applies the rescale itself: undo it so that the caller applies it exactly once
        slope, intercept = _rescale(ds)
        return (array - intercept) / slope, ds
    except Exception:  # noqa: BLE001
        raise NMAIError(f"{path}: cannot decode the pixel data ({first}); re-export the series uncompressed") \
            from None


def _rescale(ds) -> tuple[float, float]:
    slope = to_float(ds.get("RescaleSlope"))
    intercept = to_float(ds.get("RescaleIntercept"))
    return (slope if slope else 1.0), (intercept or 0.0)


def _stack(files: list[_File], scale) -> np.ndarray:
    """Rescaled float32 slices: (stored × that slice's slope + intercept) × scale(slice)."""
    out = []
    for f in files:
        stored, ds = _pixels(f.path)
        if stored.ndim != 2:
            raise NMAIError(f"{f.path}: expected one 2-D grey-scale image per file, got shape {stored.shape}")
        slope, intercept = _rescale(ds)
        out.append(((stored * slope + intercept) * scale(ds)).astype(np.float32))
    return np.stack(out)


def _common_metadata(folder: Path, ds, modality: str) -> dict[str, Any]:
    text = (lambda key: str(ds.get(key, "")).strip() or None)
    return {"source": str(folder), "modality_from_file": True, "manufacturer": text("Manufacturer"),
            "manufacturer_model": text("ManufacturerModelName"), "series_description": text("SeriesDescription"),
            "study_instance_uid": text("StudyInstanceUID"), "series_instance_uid": text("SeriesInstanceUID"),
            "frame_of_reference_uid": text("FrameOfReferenceUID"), "dicom_modality": modality}


def _build(folder, files, modality, units, scale, metadata) -> Volume:
    ordered, positions, origin, direction, si, sj = _geometry(folder, files)
    stack = _stack(ordered, scale)
    if len(positions) > 1:
        stack, sk, resampled = resample_to_uniform(stack, positions)
        if resampled:
            metadata["slice_spacing_resampled"] = resampled
    else:
        sk = to_float(ordered[0].ds.get("SpacingBetweenSlices")) or to_float(ordered[0].ds.get("SliceThickness")) \
            or 1.0
        metadata.setdefault("warnings", []).append("single-slice series: slice spacing taken from the header")
    metadata["n_dicom_files"] = len(files)
    return Volume(stack, (si, sj, sk), tuple(origin), direction, modality, units, metadata)


# ------------------------------------------------------------------------------------------ modalities
def _read_other(folder: Path, files: list[_File], modality: str) -> Volume:
    ds = files[0].ds
    meta = _common_metadata(folder, ds, modality)
    meta["units_from_file"] = modality == "CT"  # CT numbers are HU by definition; MR intensities are arbitrary
    if modality == "CT" and to_float(ds.get("KVP")):
        meta["kvp"] = to_float(ds.get("KVP"))
    return _build(folder, files, modality, OTHER_UNITS[modality], lambda _ds: 1.0, meta)


def _read_pet(folder: Path, files: list[_File]) -> Volume:
    datasets = [f.ds for f in files]
    header = header_from_datasets(datasets)
    warnings: list[str] = []
    units_from_file = header.units is not None
    if header.units is None:
        header.units = "BQML"
        warnings.append("Units (0054,1001) missing: pixel values assumed to be activity concentration in Bq/ml")
    if header.units not in PET_UNITS:
        raise NMAIError(f"{folder}: PET Units (0054,1001) is {header.units}; NMAI reads BQML, CNTS (Philips) and "
                        "GML — re-export the series in Bq/ml")
    if header.units == "CNTS" and not (header.philips_activity_factor or header.philips_suv_factor):
        raise NMAIError(f"{folder}: Units CNTS without the Philips scale factors (7053,xx00)/(7053,xx09); "
                        "counts cannot be converted — re-export the series in Bq/ml or SUV")
    if header.corrected_image is None:
        warnings.append("CorrectedImage (0028,0051) missing: decay and attenuation correction assumed")
    result = compute_suv(header)
    meta = _common_metadata(folder, datasets[0], "PT")
    meta["units_from_file"] = units_from_file
    meta.update(result.metadata())
    scale = _philips_scale(result.output_units) if header.units == "CNTS" else (lambda _ds: 1.0)
    if header.units == "CNTS":
        meta["philips_suv_scale_factor"] = header.philips_suv_factor
        meta["philips_activity_concentration_scale_factor"] = header.philips_activity_factor
    if header.units == "GML" or (header.units == "CNTS" and result.output_units == "SUVbw"):
        meta["suv_scale_factor_applied"] = 1.0 if header.units == "GML" else header.philips_suv_factor
    ds0 = datasets[0]
    radio = ds0.RadiopharmaceuticalInformationSequence[0] if ds0.get("RadiopharmaceuticalInformationSequence") \
        else None
    meta.update({
        "patient_weight_kg": header.patient_weight_kg, "patient_size_m": header.patient_size_m,
        "patient_sex": header.patient_sex, "injected_dose_bq": header.injected_dose_bq,
        "half_life_s": header.half_life_s, "decay_correction": header.decay_correction,
        "dicom_units": header.units if units_from_file else None,
        "corrected_image": list(header.corrected_image or []) or None,
        "radiopharmaceutical": _radiopharmaceutical(radio),
        "dicom_suv_attributes": dicom_suv_attributes(datasets),
    })
    if header.units == "CNTS" and result.suv_bw_factor is not None:
        ratios = {round(_philips(d, 0x00) / _philips(d, 0x09), 12) for d in datasets
                  if _philips(d, 0x00) and _philips(d, 0x09)}
        if len(ratios) > 1:
            warnings.append("Philips SUV/activity scale factor ratio differs between slices; the first is used")
    warnings += result.warnings
    if warnings:
        meta["warnings"] = warnings
    return _build(folder, files, "PT", result.output_units, scale, meta)


def _philips(ds, offset: int) -> float | None:
    return to_float(private_value(ds, 0x7053, PHILIPS_CREATOR, offset))


def _philips_scale(output_units: str):
    """Per-slice multiplier for Philips CNTS: activity factor (Bq/ml) or, when absent, SUV factor (SUVbw)."""
    offset = 0x00 if output_units == "SUVbw" else 0x09

    def scale(ds) -> float:
        value = _philips(ds, offset)
        if not value:
            raise NMAIError(f"{getattr(ds, 'filename', 'a slice')}: Philips scale factor (7053,xx{offset:02X}) "
                            "missing on this slice; re-export the series")
        return value
    return scale


def _radiopharmaceutical(radio) -> str | None:
    if radio is None:
        return None
    name = str(radio.get("Radiopharmaceutical", "")).strip()
    if not name and radio.get("RadiopharmaceuticalCodeSequence"):
        name = str(radio.RadiopharmaceuticalCodeSequence[0].get("CodeMeaning", "")).strip()
    return name or None


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1", errors="ignore").strip("\x00 ")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return str(value)


def dicom_suv_attributes(datasets: Sequence[Any]) -> dict[str, Any]:
    """Raw header values (strings, as stored) needed to write a derived PET series of the same study.

    Holds patient identifiers (name, ID, birth date) because a derived series must carry them; treat the JSON
    sidecar like the DICOM it came from.
    """
    ds = datasets[0]
    out: dict[str, Any] = {k: _json_value(ds.get(k)) for k in SUV_KEYWORDS if ds.get(k) not in (None, "")}
    acquisitions = []
    for d in datasets:
        key = (parse_da(d.get("AcquisitionDate")), parse_tm(d.get("AcquisitionTime")))
        if key[0] and key[1]:
            acquisitions.append((key, d))
    if acquisitions:
        first = min(acquisitions, key=lambda a: a[0])[1]
        for k in ("AcquisitionDate", "AcquisitionTime", "FrameReferenceTime", "DecayFactor"):
            if first.get(k) not in (None, ""):
                out[k] = _json_value(first.get(k))
    if ds.get("RadiopharmaceuticalInformationSequence"):
        radio = ds.RadiopharmaceuticalInformationSequence[0]
        item = {k: _json_value(radio.get(k)) for k in RADIO_KEYWORDS if radio.get(k) not in (None, "")}
        for seq in ("RadionuclideCodeSequence", "RadiopharmaceuticalCodeSequence"):
            if radio.get(seq):
                code = radio.get(seq)[0]
                item[seq] = {k: _json_value(code.get(k)) for k in ("CodeValue", "CodingSchemeDesignator",
                                                                  "CodeMeaning") if code.get(k) is not None}
        out["RadiopharmaceuticalInformationSequence"] = [item]
    for name, offset in (("PhilipsSUVScaleFactor", 0x00), ("PhilipsActivityConcentrationScaleFactor", 0x09)):
        if _philips(ds, offset):
            out[name] = _philips(ds, offset)
    ge_scan = private_value(ds, 0x0009, GE_CREATOR, 0x0D)
    if ge_scan:
        out["GEPrivateScanDateTime"] = _json_value(ge_scan)
    json.dumps(out)  # fail here, not when the sidecar is written
    return out
