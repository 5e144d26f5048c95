"""``nmai simulate``: simulate a PET/MR acquisition of a phantom or of a user activity + μ-map, and reconstruct it."""

from __future__ import annotations

from pathlib import Path


def add_scanner_arguments(p) -> None:
    g = p.add_argument_group("scanner")
    g.add_argument("--crystal-group", type=int, default=1, metavar="G",
                   help="read G adjacent crystals out as one (large-crystal scanner: 1, 2 or 4; default 1)")
    g.add_argument("--failed-blocks", type=int, nargs="*", default=[], metavar="B",
                   help="detector blocks (0-55) that are dead")


def add_phantom_arguments(p) -> None:
    g = p.add_argument_group("phantom")
    g.add_argument("--phantom", choices=("wholebody", "brain", "nema"), help="procedural phantom")
    g.add_argument("--seed", type=int, default=0, help="anatomy, tissue values, lesions and noise (default 0)")
    g.add_argument("--voxel", type=float, default=None, metavar="MM",
                   help="isotropic voxel size (default 4 mm; brain 2 mm)")
    g.add_argument("--supersample", type=int, default=2, metavar="N",
                   help="paint at voxel/N and average (partial volume; default 2)")
    g.add_argument("--arms", action="store_true", help="wholebody: add arms (down, beside the body)")
    g.add_argument("--lesions", type=int, default=None, metavar="N",
                   help="number of lesions (default: 3 for wholebody, 0 otherwise)")
    g.add_argument("--lesion-sites", nargs="+", default=None,
                   choices=("liver", "lung", "spleen", "kidney", "brain", "bone", "node"),
                   help="where lesions may go (default wholebody: liver lung bone node; brain: brain)")
    g.add_argument("--lesion-contrast", type=float, default=None, metavar="C",
                   help="lesion:reference uptake ratio (default random 2-6)")
    g.add_argument("--sphere-ratio", type=float, default=4.0, metavar="R", help="nema: sphere:background (default 4)")
    g.add_argument("--weight", type=float, default=None, metavar="KG",
                   help="patient weight (default: from the phantom's body size; 75 kg for --activity)")
    g.add_argument("--dose", type=float, default=None, metavar="MBQ",
                   help="injected FDG dose (default 3.5 MBq/kg)")
    g.add_argument("--uptake", type=float, default=60.0, metavar="MIN", help="injection to scan start (default 60)")


def add_parser(sub):
    p = sub.add_parser("simulate",
                       help="simulate a PET/MR acquisition (phantom or activity + μ-map) and reconstruct it",
                       description="Simulate a clinical PET/MR acquisition (per-slice 2-D ring model with "
                                   "attenuation, normalisation, PSF, scatter, randoms and Poisson counts) of a "
                                   "procedural phantom or of a user activity (Bq/ml) + μ-map (cm-1), and "
                                   "reconstruct it with OSEM. Writes NIfTI volumes with JSON sidecars, the "
                                   "acquisition (acquisition.npz/.json) and simulation.json.")
    add_phantom_arguments(p)
    g = p.add_argument_group("user volumes")
    g.add_argument("--activity", metavar="A", help="activity concentration volume (NIfTI/NRRD, Bq/ml)")
    g.add_argument("--mumap", metavar="M", help="μ-map at 511 keV (NIfTI/NRRD, cm-1) on the activity's grid")
    g = p.add_argument_group("acquisition")
    g.add_argument("--duration", type=float, default=None, metavar="S",
                   help="seconds per bed position (default: wholebody 180, brain 600, nema 300, user 180)")
    g.add_argument("--count-fraction", type=float, default=1.0, metavar="F",
                   help="keep each prompt with probability F (low-count version of the same acquisition)")
    g.add_argument("--frames", type=int, default=1, metavar="N", help="equal time frames (default 1)")
    g.add_argument("--motion", action="append", metavar="X,Y,Z[,DEG]", default=None,
                   help="rigid patient position in one frame: shift in mm (x, y, z) and optional rotation about "
                        "the scanner axis; give it once per frame, in frame order")
    g.add_argument("--noise-free", action="store_true", help="store expected counts instead of Poisson counts")
    add_scanner_arguments(p)
    g = p.add_argument_group("reconstruction")
    g.add_argument("--iterations", type=int, default=3, metavar="I", help="OSEM iterations (default 3)")
    g.add_argument("--subsets", type=int, default=14, metavar="K", help="OSEM subsets (default 14)")
    g.add_argument("--no-psf", action="store_true", help="reconstruct without resolution modelling")
    g.add_argument("--no-recon", action="store_true", help="only simulate the acquisition")
    p.add_argument("--out", metavar="DIR", help="output folder (default nmai-sim-<phantom>-seed<S>)")
    p.set_defaults(func=run)


def scanner_from_args(args):
    from ..sim import DEFAULT_SCANNER

    return DEFAULT_SCANNER.with_(crystal_group=args.crystal_group, failed_blocks=tuple(args.failed_blocks or ()))


def phantom_from_args(args, progress):
    from ..sim import make_phantom

    return make_phantom(args.phantom, seed=args.seed, voxel_mm=args.voxel, supersample=args.supersample,
                        arms=args.arms, lesions=args.lesions, lesion_sites=args.lesion_sites,
                        lesion_contrast=args.lesion_contrast, sphere_ratio=args.sphere_ratio,
                        weight_kg=args.weight, dose_mbq=args.dose, uptake_s=args.uptake * 60.0, progress=progress)


def parse_motion(values, frames: int):
    """``--motion`` values -> the simulator's per-frame motion list (None when not given)."""
    from ..errors import NMAIError

    if not values:
        return None
    if len(values) != frames:
        raise NMAIError(f"--motion must be given once per frame: {frames} frame(s), {len(values)} --motion")
    motion = []
    for text in values:
        try:
            numbers = [float(v) for v in text.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) not in (3, 4):
            raise NMAIError(f"--motion {text!r}: expected X,Y,Z in mm and optionally a rotation in degrees")
        motion.append({"translation_mm": numbers[:3], "rotation_deg": numbers[3] if len(numbers) == 4 else 0.0})
    return motion


def run(args, progress):
    from ..errors import NMAIError
    from ..io import read_volume
    from ..sim import simulate, write_simulation

    if bool(args.phantom) == bool(args.activity):
        raise NMAIError("give either --phantom NAME or --activity A --mumap M")
    if args.activity and not args.mumap:
        raise NMAIError("--activity needs --mumap (μ-map at 511 keV in cm-1 on the same grid)")
    scanner = scanner_from_args(args)
    common = dict(scanner=scanner, duration_s=args.duration, count_fraction=args.count_fraction, seed=args.seed,
                  frames=args.frames, motion=parse_motion(args.motion, args.frames), iterations=args.iterations, subsets=args.subsets, psf=not args.no_psf,
                  reconstruct_image=not args.no_recon, noise=not args.noise_free)
    if args.phantom:
        phantom = phantom_from_args(args, progress.sub(0.0, 0.2))
        sim = simulate(phantom, progress=progress.sub(0.2, 0.9), **common)
        default_out = f"nmai-sim-{args.phantom}-seed{args.seed}"
    else:
        activity = read_volume(args.activity, units="Bq/ml")
        mumap = read_volume(args.mumap, units="cm-1")
        sim = simulate(activity=activity, mumap=mumap, weight_kg=args.weight, dose_mbq=args.dose,
                       uptake_s=args.uptake * 60.0, progress=progress.sub(0.0, 0.9), **common)
        default_out = f"nmai-sim-user-seed{args.seed}"
    out = Path(args.out or default_out)
    paths = write_simulation(sim, out, progress.sub(0.9, 1.0))
    acq = sim.summary["acquisition"]
    return {"message": f"simulated {acq['prompts']:.4g} prompts ({acq['prompts_per_bed']:.3g} per bed) -> {out}",
            "out": str(out), "files": paths, "prompts": acq["prompts"], "prompts_per_bed": acq["prompts_per_bed"],
            "trues_expected": acq["expected_full_count"]["trues"], "count_fraction": args.count_fraction,
            "suv_bw_factor": sim.summary["suv_bw_factor"], "labels": sim.label_table}
