"""``nmai convert PATH --out FILE [--suv]``: DICOM/NIfTI/NRRD to NIfTI/NRRD, in Bq/ml or SUV."""

from __future__ import annotations

from ..io import read_volume, refuse_overwriting, write_volume
from ..validate import check_volume


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a DICOM series or image to NIfTI/NRRD (PET in Bq/ml or SUV)",
                       description="Write a volume as NIfTI (.nii.gz) or NRRD (.nrrd) with a JSON sidecar that "
                                   "records modality, units and SUV factors. Geometry is kept exactly.")
    p.add_argument("path", help="DICOM series folder or NIfTI/NRRD file")
    p.add_argument("--out", required=True, help="output file (.nii.gz, .nii, .nrrd)")
    p.add_argument("--suv", nargs="?", const="bw", choices=["bw", "lbm"], default=None,
                   help="write PET in SUV (body weight by default, or lean body mass) instead of Bq/ml")
    p.set_defaults(func=run)


def run(args, progress):
    refuse_overwriting(args.out, args.path)
    progress(0.0, f"reading {args.path}")
    volume = check_volume(read_volume(args.path), "input")
    if args.suv:
        volume = volume.to_units("SUV" + args.suv)
    elif volume.modality == "PT" and volume.units != "Bq/ml" and volume.suv_factor("bw") is not None:
        volume = volume.to_units("Bq/ml")
    progress(0.5, f"writing {args.out}")
    write_volume(volume, args.out)
    progress(1.0, "done")
    return {"message": f"wrote {args.out} ({volume.modality}, {volume.units})",
            "outputs": {"volume": str(args.out)}, "units": volume.units}
