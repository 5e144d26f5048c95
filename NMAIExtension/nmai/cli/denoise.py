"""``nmai denoise IN --method cnn|gan|sr|gaussian [--fwhm MM] --out OUT``: PET denoising / super-resolution."""

from __future__ import annotations

import argparse

from ..denoise.apply import METHODS
from ..io import read_volume, refuse_overwriting, write_volume
from ..validate import PET_UNITS


def add_parser(sub):
    p = sub.add_parser("denoise", help="denoise a PET volume (cnn, gan, sr super-resolution, gaussian)",
                       description="Denoise a PET volume. cnn: residual U-Net trained on low-count -> full-count "
                                   "pairs (5-50 %% counts); gan: the same network trained adversarially to keep "
                                   "noise texture and lesion contrast; sr: large-crystal -> small-crystal "
                                   "resolution (network, local fit, then Richardson-Lucy deconvolution of the "
                                   "input scanner's resolution); gaussian: post-filter of --fwhm mm (the "
                                   "baseline). The output keeps the input's units (Bq/ml or SUV) and geometry; "
                                   "the learned methods are unit-invariant.")
    p.add_argument("input", help="PET volume: NIfTI/NRRD (with sidecar or --units) or DICOM series folder")
    p.add_argument("--method", choices=METHODS, default="cnn", help="denoising method (default cnn)")
    p.add_argument("--fwhm", type=float, default=None, metavar="MM",
                   help="gaussian: filter FWHM in mm (default 6); sr: FWHM of the resolution to recover, the blur "
                        "the input's reconstruction left in (default: the model card's, 5.91 mm for denoise-sr, "
                        "the large-crystal scanner's; 0: no deconvolution)")
    p.add_argument("--model", metavar="PATH|NAME", default=None,
                   help="cnn/gan/sr: model folder or registry name (default denoise-<method>)")
    p.add_argument("--local-fit", dest="local_fit", action=argparse.BooleanOptionalAction, default=None,
                   help="cnn/gan/sr: fit the network output to the input in 3x3x3-voxel windows (the input's "
                        "local level, the network's noise) or not; default: the model card's (on for the shipped "
                        "models). Without it: the raw network output (sr: no resolution recovery either); not "
                        "recommended for quantitation")
    p.add_argument("--fit-significance", dest="fit_significance", type=float, default=None, metavar="Z",
                   help="cnn/gan/sr: keep the local fit's corrections of the network output only as far as they "
                        "exceed Z noise standard errors (0: the plain fit, the input's level everywhere; larger: "
                        "closer to the network's output, less noise, small lesions read lower); default: the model "
                        "card's (denoise-cnn 4, denoise-gan and denoise-sr 0; see the README)")
    p.add_argument("--hot-spots", dest="hot_spots", action=argparse.BooleanOptionalAction, default=None,
                   help="cnn/gan: with Z > 0, hot spots of the network output (over 1.5-2.5 x the mean of the 9^3 "
                        "voxels around them in the shipped cards) take the plain fit, the input's level, and the "
                        "rest the Z fit; default: on where the model card has a hot-spot fit (denoise-cnn; "
                        "denoise-gan when given a Z > 0)")
    p.add_argument("--units", choices=PET_UNITS, default=None,
                   help="units of the input when its file does not record them")
    p.add_argument("--out", required=True, help="output file (.nii.gz, .nrrd)")
    p.set_defaults(func=run)


def run(args, progress):
    from ..denoise.apply import denoise_volume
    from ..errors import NMAIError

    if args.method == "gaussian" and args.model:
        raise NMAIError("--model applies to cnn, gan and sr, not to gaussian")
    if args.local_fit is not None and args.method == "gaussian":
        raise NMAIError("--local-fit/--no-local-fit apply to cnn, gan and sr, not to gaussian")
    for given, flag in ((args.fit_significance, "--fit-significance"), (args.hot_spots, "--hot-spots/--no-hot-spots")):
        if given is not None and args.method == "gaussian":
            raise NMAIError(f"{flag} applies to cnn, gan and sr, not to gaussian")
    refuse_overwriting(args.out, args.input)
    progress(0.0, f"reading {args.input}")
    volume = read_volume(args.input, units=args.units)
    if volume.modality == "OT" and volume.units in PET_UNITS:
        volume.modality = "PT"
    out, info = denoise_volume(volume, args.method, fwhm_mm=args.fwhm, model=args.model, local_fit=args.local_fit,
                               fit_significance=args.fit_significance, hot_spots=args.hot_spots,
                               progress=progress.sub(0.1, 0.9))
    progress(0.9, f"writing {args.out}")
    write_volume(out, args.out)
    progress(1.0, "done")
    message = f"wrote {args.out}" + (f" (note: {info['note']})" if info.get("note") else "")
    parameters = ({"fwhm_mm": info["fwhm_mm"]} if args.method == "gaussian" else
                  {"model": info["model"], "local_fit_voxels": info["local_fit_voxels"],
                   "local_fit_significance": info["local_fit_significance"], "hot_spot_fit": info["hot_spot_fit"],
                   "resolution_recovery": info["resolution_recovery"]})
    return {"message": message, "outputs": {"denoised": str(args.out)}, "method": args.method,
            "parameters": parameters, "units": out.units, "note": info.get("note"),
            "model_sha256": info.get("model_sha256")}
