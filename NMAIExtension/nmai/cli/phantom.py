"""``nmai phantom``: write a procedural phantom (activity, μ-map, CT, labels, MR) without an acquisition."""

from __future__ import annotations

from pathlib import Path

from .simulate import add_phantom_arguments, phantom_from_args


def add_parser(sub):
    p = sub.add_parser("phantom", help="write a procedural phantom (activity, μ-map, CT, labels, MR images)",
                       description="Write a wholebody, brain or NEMA phantom as NIfTI volumes with JSON "
                                   "sidecars (activity Bq/ml, mumap cm-1, ct HU, labels, mr_*) and phantom.json.")
    add_phantom_arguments(p)
    p.add_argument("--no-mr", action="store_true", help="skip the MR images")
    p.add_argument("--out", metavar="DIR", help="output folder (default nmai-phantom-<phantom>-seed<S>)")
    p.set_defaults(func=run)


def run(args, progress):
    from ..errors import NMAIError
    from ..sim import make_phantom, write_phantom

    if not args.phantom:
        raise NMAIError("give --phantom wholebody, brain or nema")
    if args.no_mr:
        phantom = make_phantom(args.phantom, seed=args.seed, voxel_mm=args.voxel, supersample=args.supersample,
                               arms=args.arms, lesions=args.lesions, lesion_sites=args.lesion_sites,
                               lesion_contrast=args.lesion_contrast, sphere_ratio=args.sphere_ratio,
                               weight_kg=args.weight, dose_mbq=args.dose, uptake_s=args.uptake * 60.0, mr=False,
                               progress=progress.sub(0.0, 0.8))
    else:
        phantom = phantom_from_args(args, progress.sub(0.0, 0.8))
    out = Path(args.out or f"nmai-phantom-{args.phantom}-seed{args.seed}")
    progress(0.85, "writing")
    paths = write_phantom(phantom, out)
    shape = list(phantom.activity.shape)
    return {"message": f"{args.phantom} phantom (seed {args.seed}, {shape[2]}x{shape[1]}x{shape[0]} voxels) -> {out}",
            "out": str(out), "files": paths, "labels": phantom.label_table,
            "suv_bw_factor": phantom.info.get("suv_bw_factor")}
