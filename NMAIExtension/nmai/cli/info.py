"""``nmai info PATH``: what a file or DICOM folder holds (modality, units, geometry, SUV)."""

from __future__ import annotations

import json

import numpy as np

from ..io import read_volume

# metadata keys worth showing a physicist, in this order
_DETAIL_KEYS = ("manufacturer", "series_description", "radiopharmaceutical", "dicom_units", "decay_correction",
                "patient_weight_kg", "patient_size_m", "patient_sex", "injected_dose_bq", "half_life_s",
                "injection_datetime", "scan_datetime", "slice_spacing_resampled", "warnings")


def add_parser(sub):
    p = sub.add_parser("info", help="describe a PET/CT/MR volume or DICOM series (units, geometry, SUV factors)",
                       description="Describe a NIfTI/NRRD file or a DICOM series folder. With --json the "
                                   "output is the JSON object documented in the README (nmai info schema).")
    p.add_argument("path", help="NIfTI/NRRD file or folder of one DICOM series")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def describe(volume) -> dict:
    data = volume.array
    info = volume.describe()
    for kind in ("bw", "lbm"):
        factor = volume.metadata.get(f"suv_{kind}_factor")
        info[f"suv_{kind}_factor"] = None if factor is None else float(factor)
        if factor is None:
            info[f"suv_{kind}_unavailable_reason"] = volume.metadata.get(
                f"suv_{kind}_unavailable_reason",
                volume.metadata.get("suv_unavailable_reason", "not a PET volume" if volume.modality != "PT"
                                    else "no SUV information recorded for this volume"))
    if volume.units in ("SUVbw", "SUVlbm"):  # already SUV: the factor from SUV to SUV is 1
        info[f"suv_{volume.units[3:].lower()}_factor"] = 1.0
        info.pop(f"suv_{volume.units[3:].lower()}_unavailable_reason", None)
    if info["suv_bw_factor"] is None:  # the name issue #2 and scripts ask for
        info["suv_unavailable_reason"] = info["suv_bw_unavailable_reason"]
    finite = data[np.isfinite(data)] if data.size else data
    info["statistics"] = {
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "non_finite_voxels": int(data.size - finite.size),
    }
    info["details"] = {k: volume.metadata[k] for k in _DETAIL_KEYS if volume.metadata.get(k) is not None}
    return info


def _text(path, info) -> str:
    lines = [f"{path}",
             f"  modality   {info['modality']}   units {info['units']} ({info['quantity']})",
             f"  shape      {' x '.join(map(str, info['shape']))} voxels",
             f"  spacing    {' x '.join(f'{s:g}' for s in info['spacing'])} mm",
             f"  origin     {', '.join(f'{o:g}' for o in info['origin_lps'])} mm (LPS)"]
    if info["modality"] == "PT":
        for kind in ("bw", "lbm"):
            f = info[f"suv_{kind}_factor"]
            lines.append(f"  SUV{kind:<4}    " + (f"{f:.6g} g/Bq·ml (multiply Bq/ml by this)" if f is not None
                                                   else f"unavailable: {info[f'suv_{kind}_unavailable_reason']}"))
    for k, v in info["details"].items():
        lines.append(f"  {k:<22} {v}")
    return "\n".join(lines)


def run(args, progress):
    progress(0.0, f"reading {args.path}")
    volume = read_volume(args.path)
    info = describe(volume)
    info["path"] = str(args.path)
    progress(1.0, "done")
    if args.jsonl:  # the result line carries it; never break the JSON-lines stream
        return info
    if args.json:
        print(json.dumps(info, indent=2))
        return None
    return {**info, "message": _text(args.path, info)}
