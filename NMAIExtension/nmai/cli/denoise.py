"""``nmai denoise IN --method gaussian --fwhm MM --out OUT``: PET post-filtering."""

from __future__ import annotations

from ..filters import gaussian_filter
from ..io import read_volume, refuse_overwriting, write_volume
from ..validate import PET_UNITS, check_pet

METHODS = ["gaussian"]


def add_parser(sub):
    p = sub.add_parser("denoise", help="denoise a PET volume (Gaussian post-filter)",
                       description="Denoise a PET volume. The output keeps the input's units (Bq/ml or SUV) "
                                   "and geometry.")
    p.add_argument("input", help="PET volume: NIfTI/NRRD (with sidecar or --units) or DICOM series folder")
    p.add_argument("--method", choices=METHODS, default="gaussian", help="denoising method (default gaussian)")
    p.add_argument("--fwhm", type=float, default=6.0, help="Gaussian FWHM in mm (default 6)")
    p.add_argument("--units", choices=PET_UNITS, default=None,
                   help="units of the input when its file does not record them")
    p.add_argument("--out", required=True, help="output file (.nii.gz, .nrrd)")
    p.set_defaults(func=run)


def run(args, progress):
    refuse_overwriting(args.out, args.input)
    progress(0.0, f"reading {args.input}")
    volume = read_volume(args.input, units=args.units)
    if volume.modality == "OT" and volume.units in PET_UNITS:
        volume.modality = "PT"
    check_pet(volume, "input")
    out = gaussian_filter(volume, args.fwhm, progress=progress.sub(0.1, 0.9))
    progress(0.9, f"writing {args.out}")
    write_volume(out, args.out)
    progress(1.0, "done")
    return {"message": f"wrote {args.out}", "outputs": {"denoised": str(args.out)}, "method": args.method,
            "parameters": {"fwhm_mm": args.fwhm}, "units": out.units}
