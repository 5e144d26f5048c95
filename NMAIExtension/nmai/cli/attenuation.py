"""``nmai attenuation --ct CT --out MU``: PET attenuation map (μ at 511 keV, cm⁻¹)."""

from __future__ import annotations

from ..io import read_volume, write_volume
from ..mu import CARNEY, hu_to_mu
from ..validate import check_volume
from ..errors import NMAIError


def add_parser(sub):
    p = sub.add_parser("attenuation", help="make a PET attenuation map (μ-map, cm⁻¹ at 511 keV) from CT",
                       description="CT -> μ-map at 511 keV by bilinear conversion (Carney et al. 2006). "
                                   "The output keeps the CT's geometry.")
    p.add_argument("--ct", required=True, help="CT volume in HU (NIfTI/NRRD or DICOM series folder)")
    p.add_argument("--kvp", type=int, default=120, choices=sorted(CARNEY), help="CT tube voltage (default 120)")
    p.add_argument("--out", required=True, help="output μ-map (.nii.gz, .nrrd)")
    p.set_defaults(func=run)


def run(args, progress):
    progress(0.0, f"reading {args.ct}")
    ct = read_volume(args.ct)
    if ct.modality == "OT" and ct.units == "1":  # a bare NIfTI: trust the user's --ct, say so
        ct.modality, ct.units = "CT", "HU"
        ct.metadata.setdefault("warnings", []).append("units not recorded in the file; assumed HU")
    if ct.modality != "CT" or ct.units != "HU":
        raise NMAIError(f"--ct: this is a {ct.modality} volume in {ct.units}, not a CT in HU; select the CT")
    check_volume(ct, "CT")
    if float(ct.array.min()) > -500:
        raise NMAIError("--ct: no voxel is near air (-1000 HU); values do not look like Hounsfield units")
    mu = ct.derive(hu_to_mu(ct.array, args.kvp), units="cm-1", modality="OT", method="ct",
                   parameters={"kvp": args.kvp})
    progress(0.8, f"writing {args.out}")
    write_volume(mu, args.out)
    progress(1.0, "done")
    return {"message": f"wrote {args.out}", "outputs": {"mumap": str(args.out)}, "method": "ct",
            "parameters": {"kvp": args.kvp}, "units": "cm-1"}
