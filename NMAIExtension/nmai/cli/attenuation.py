"""``nmai attenuation``: PET attenuation map (μ at 511 keV, cm⁻¹) from CT, or from MR (U-Net or Dixon 4-class).

Inputs of different geometry are resampled to the first (the CT, the water image or the T1 image); every
output keeps that geometry. The pseudo-CT is ``mu_to_hu`` of the μ-map (the inverse of the bilinear
CT -> μ conversion at ``--kvp``): a CT the μ-map implies, for display and for software that wants HU, not
a synthetic diagnostic CT. With ``--compare-ct`` the μ-map is compared with the μ-map of a CT of the same
patient (resampled onto the MR grid): ``--difference`` writes method − CT μ, and the result carries the
mean difference per CT-derived tissue class. Nothing is written when any check fails.
"""

from __future__ import annotations

from ..errors import NMAIError
from ..io import read_volume, refuse_overwriting, write_volume
from ..mu import CARNEY, hu_to_mu, mu_to_hu
from ..validate import check_volume

METHODS = ["unet", "dixon4"]


def add_parser(sub):
    p = sub.add_parser(
        "attenuation", help="make a PET attenuation map (μ-map, cm⁻¹ at 511 keV) from CT or MR (U-Net, Dixon)",
        description="CT -> μ-map by bilinear conversion (Carney et al. 2006); Dixon water + fat MR -> μ-map by "
                    "the MONAI U-Net (--method unet, the default when its model is installed) or the Dixon "
                    "4-class method (--method dixon4: air, lung, fat, soft tissue; Martinez-Möller et al. "
                    "2009); T1-weighted MR -> μ-map by the T1 U-Net. Inputs of different geometry are resampled "
                    "to the first; the outputs keep its geometry. Nothing is written when a check fails.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="CT volume in HU (NIfTI/NRRD or DICOM series folder)")
    src.add_argument("--water", help="Dixon water image (needs --fat)")
    src.add_argument("--t1", help="T1-weighted MR image (--method unet only: the T1 model)")
    p.add_argument("--fat", help="Dixon fat image, resampled to the water image's grid if needed")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="MR method: unet (default when its model is installed, or with --model) or dixon4")
    p.add_argument("--model", metavar="PATH|NAME",
                   help="U-Net model: a model folder (metadata.json + model.safetensors, e.g. made by "
                        "`nmai train attenuation`) or a built-in name (default attenuation-dixon-unet for "
                        "--water/--fat, attenuation-t1-unet for --t1)")
    p.add_argument("--no-soft-smoothing", dest="soft_smoothing", action="store_false",
                   help="U-Net: keep the network's raw soft tissue (by default soft tissue is smoothed with "
                        "soft tissue only, Gaussian σ 6 mm, which removes MR noise that reads as bone)")
    p.add_argument("--kvp", type=int, default=120, choices=sorted(CARNEY),
                   help="CT tube voltage for CT -> μ and for the pseudo-CT (default 120)")
    p.add_argument("--out", required=True, help="output μ-map (.nii.gz, .nrrd)")
    p.add_argument("--pseudo-ct", dest="pseudo_ct",
                   help="also write the pseudo-CT (HU) the μ-map implies: the inverse bilinear conversion of μ")
    p.add_argument("--compare-ct", dest="compare_ct", metavar="CT",
                   help="MR methods: a CT (HU) of the same patient to compare the μ-map with (regional table "
                        "in the result)")
    p.add_argument("--difference", metavar="OUT",
                   help="with --compare-ct: write the μ difference map (method − CT-derived μ, cm-1)")
    p.set_defaults(func=run)


def _read_ct(path, name="--ct"):
    ct = read_volume(path)
    if ct.modality == "OT" and ct.units == "1":  # a bare NIfTI: trust the user's --ct, say so
        ct.modality, ct.units = "CT", "HU"
        ct.metadata.setdefault("warnings", []).append("units not recorded in the file; assumed HU")
    if ct.modality != "CT" or ct.units != "HU":
        raise NMAIError(f"{name}: this is a {ct.modality} volume in {ct.units}, not a CT in HU; select the CT")
    check_volume(ct, "CT")
    if float(ct.array.min()) > -500:
        raise NMAIError(f"{name}: no voxel is near air (-1000 HU); values do not look like Hounsfield units")
    return ct


def _from_ct(args, progress):
    ct = _read_ct(args.ct)
    progress(0.5, "bilinear CT -> μ conversion")
    return ct.derive(hu_to_mu(ct.array, args.kvp), units="cm-1", modality="OT", method="ct",
                     parameters={"kvp": args.kvp})


def _choose_method(args, kind: str) -> tuple[str, list]:
    from ..attenuation.unet import DEFAULT_MODELS, missing_model_message, model_installed

    warnings = []
    method = args.method
    if method is None:
        if args.model or model_installed(kind):
            method = "unet"
        elif kind == "t1":
            raise NMAIError(missing_model_message(DEFAULT_MODELS["t1"], "t1"))
        else:
            method = "dixon4"
            warnings.append(f"the U-Net model '{DEFAULT_MODELS['dixon']}' is not installed; used the Dixon "
                            "4-class method (no bone: PET in and near bone is underestimated)")
    if method == "dixon4":
        if kind == "t1":
            raise NMAIError("--method dixon4 needs Dixon water and fat images (--water W --fat F); with a T1 "
                            "image use --method unet (the T1 model)")
        if args.model or not args.soft_smoothing:
            raise NMAIError("--model and --no-soft-smoothing apply to --method unet only")
    return method, warnings


def _from_mr(args, progress):
    from ..attenuation.dixon import dixon4_mumap
    from ..attenuation.unet import prepare_inputs, unet_mumap

    if args.water and not args.fat:
        raise NMAIError("--water needs --fat (the Dixon fat image); with only a T1-weighted image, give it "
                        "with --t1 and use the T1 U-Net model")
    if args.t1 and args.fat:
        raise NMAIError("--fat goes with --water (Dixon); --t1 takes a single T1-weighted image")
    kind = "t1" if args.t1 else "dixon"
    method, warnings = _choose_method(args, kind)
    inputs = {"t1": read_volume(args.t1)} if args.t1 else {"water": read_volume(args.water),
                                                            "fat": read_volume(args.fat)}
    if method == "dixon4":
        _, (water, fat) = prepare_inputs(inputs, progress.sub(0.0, 0.2))
        progress(0.3, "Dixon 4-class μ-map")
        mu = dixon4_mumap(water, fat)
    else:
        mu = unet_mumap(inputs, model=args.model, soft_smoothing=args.soft_smoothing,
                        progress=progress.sub(0.0, 0.75))
    if warnings:
        mu.metadata.setdefault("warnings", []).extend(warnings)
    return mu


def _comparison(args, mu, progress):
    from ..evaluate.attenuation import compare_to_ct

    if not args.compare_ct:
        if args.difference:
            raise NMAIError("--difference needs --compare-ct (the CT to compare with)")
        return None, None
    if args.ct:
        raise NMAIError("--compare-ct compares an MR-derived μ-map with a CT; it does not apply to --ct")
    ct = _read_ct(args.compare_ct, "--compare-ct")
    progress(0.8, "comparing with the CT-derived μ-map")
    return compare_to_ct(mu, ct, kvp=args.kvp)


def run(args, progress):
    inputs = (args.ct, args.water, args.fat, args.t1, getattr(args, "compare_ct", None))
    for out in (args.out, args.pseudo_ct, getattr(args, "difference", None)):
        if out:
            refuse_overwriting(out, *inputs)
    progress(0.0, "reading inputs")
    if args.ct and (args.method or args.model or args.fat or not args.soft_smoothing):
        raise NMAIError("--method, --model, --fat and --no-soft-smoothing apply to MR inputs (--water/--fat or "
                        "--t1), not to --ct")
    mu = _from_ct(args, progress) if args.ct else _from_mr(args, progress)
    difference, rows = _comparison(args, mu, progress)
    pct = mu.derive(mu_to_hu(mu.array, args.kvp), units="HU", modality="CT",
                    pseudo_ct={"from": "mu_to_hu (inverse bilinear, Carney et al. 2006)", "kvp": args.kvp}) \
        if args.pseudo_ct else None
    progress(0.9, f"writing {args.out}")
    outputs = {"mumap": str(write_volume(mu, args.out))}
    if pct is not None:
        outputs["pseudo_ct"] = str(write_volume(pct, args.pseudo_ct))
    if difference is not None and args.difference:
        outputs["difference"] = str(write_volume(difference, args.difference))
    progress(1.0, "done")
    result = {"message": f"wrote {', '.join(outputs.values())}", "outputs": outputs,
              "method": mu.metadata["method"], "parameters": mu.metadata.get("parameters", {}), "units": "cm-1"}
    if mu.metadata.get("model_name"):
        result["model"] = {"name": mu.metadata["model_name"], "version": mu.metadata["model_version"],
                           "sha256": mu.metadata["model_sha256"]}
    if mu.metadata.get("warnings"):
        result["warnings"] = list(mu.metadata["warnings"])
    if rows is not None:
        result["comparison"] = {"reference": "CT", "kvp": args.kvp, "classes": rows}
    return result
