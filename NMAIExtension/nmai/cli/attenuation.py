"""``nmai attenuation``: PET attenuation map (μ at 511 keV, cm⁻¹) from CT or from Dixon MR."""

from __future__ import annotations

import numpy as np

from ..errors import NMAIError
from ..io import read_volume, write_volume
from ..mu import CARNEY, hu_to_mu, mu_to_hu
from ..resample import resample_like
from ..validate import check_mr, check_volume

METHODS = ["dixon4"]


def add_parser(sub):
    p = sub.add_parser(
        "attenuation", help="make a PET attenuation map (μ-map, cm⁻¹ at 511 keV) from CT or Dixon MR",
        description="CT -> μ-map by bilinear conversion (Carney et al. 2006), or Dixon water/fat MR -> μ-map "
                    "by the Dixon 4-class method (air, lung, fat, soft tissue; Martinez-Möller et al. 2009). "
                    "Inputs of different geometry are resampled to the first; the output keeps its geometry.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="CT volume in HU (NIfTI/NRRD or DICOM series folder)")
    src.add_argument("--water", help="Dixon water image (needs --fat)")
    p.add_argument("--fat", help="Dixon fat image, resampled to the water image's grid if needed")
    p.add_argument("--method", choices=METHODS, default="dixon4", help="MR method (default dixon4)")
    p.add_argument("--kvp", type=int, default=120, choices=sorted(CARNEY), help="CT tube voltage (default 120)")
    p.add_argument("--out", required=True, help="output μ-map (.nii.gz, .nrrd)")
    p.add_argument("--pseudo-ct", dest="pseudo_ct", help="also write the pseudo-CT (HU) the μ-map implies")
    p.set_defaults(func=run)


def _from_ct(args, progress):
    ct = read_volume(args.ct)
    if ct.modality == "OT" and ct.units == "1":  # a bare NIfTI: trust the user's --ct, say so
        ct.modality, ct.units = "CT", "HU"
        ct.metadata.setdefault("warnings", []).append("units not recorded in the file; assumed HU")
    if ct.modality != "CT" or ct.units != "HU":
        raise NMAIError(f"--ct: this is a {ct.modality} volume in {ct.units}, not a CT in HU; select the CT")
    check_volume(ct, "CT")
    if float(ct.array.min()) > -500:
        raise NMAIError("--ct: no voxel is near air (-1000 HU); values do not look like Hounsfield units")
    progress(0.5, "bilinear CT -> μ conversion")
    return ct.derive(hu_to_mu(ct.array, args.kvp), units="cm-1", modality="OT", method="ct",
                     parameters={"kvp": args.kvp})


def _from_dixon(args, progress):
    from ..attenuation.dixon import dixon4_mumap

    if not args.fat:
        raise NMAIError("--water needs --fat (the Dixon fat image); with only a T1 image, MR-based "
                        "attenuation needs the U-Net model")
    water = check_mr(read_volume(args.water), "water")
    fat = check_mr(read_volume(args.fat), "fat")
    if not fat.same_grid(water, tol=1e-3):
        progress(0.2, "resampling the fat image to the water image's grid")
        fat = resample_like(fat, water)
        covered = float(np.mean(fat.array[water.array > np.percentile(water.array, 90)] > 0))
        if covered < 0.9:
            raise NMAIError(f"the fat image covers only {covered:.0%} of the body seen in the water image; "
                            "use water and fat images of the same acquisition")
    progress(0.4, f"{args.method} μ-map")
    return dixon4_mumap(water, fat)


def run(args, progress):
    progress(0.0, "reading inputs")
    mu = _from_ct(args, progress) if args.ct else _from_dixon(args, progress)
    progress(0.8, f"writing {args.out}")
    outputs = {"mumap": str(write_volume(mu, args.out))}
    if args.pseudo_ct:
        pct = mu.derive(mu_to_hu(mu.array, args.kvp), units="HU", modality="CT")
        outputs["pseudo_ct"] = str(write_volume(pct, args.pseudo_ct))
    progress(1.0, "done")
    return {"message": f"wrote {', '.join(outputs.values())}", "outputs": outputs,
            "method": mu.metadata["method"], "parameters": mu.metadata.get("parameters", {}), "units": "cm-1"}
