"""``nmai evaluate TASK``: measure a method against exact ground truth on simulated phantoms."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="measure methods on simulated phantoms never used in training (attenuation, ...)",
        description="attenuation: on whole-body phantoms from seeds the training never used, simulate one "
                    "acquisition with the true μ-map, reconstruct it with the true, Dixon 4-class and U-Net "
                    "μ-maps, and report the PET error each μ-map causes per region (bone, soft tissue, lung, "
                    "fat, liver, brain, lesions in bone and in soft tissue), bone Dice and μ MAE, with pass/fail "
                    "against the targets; optionally a joint-histogram / Bland-Altman figure.")
    p.add_argument("task", choices=["attenuation"], help="what to evaluate")
    p.add_argument("--cases", type=int, default=10, metavar="N", help="number of phantoms (default 10)")
    p.add_argument("--seed-start", type=int, default=100, metavar="S",
                   help="first phantom seed (default 100; must stay below 10000, where the training seeds start)")
    p.add_argument("--methods", default="unet,dixon4", metavar="M,M",
                   help="comma-separated: unet (Dixon U-Net), dixon4, unet-t1 (T1 U-Net); default unet,dixon4")
    p.add_argument("--model", metavar="PATH|NAME", help="Dixon U-Net model (default attenuation-dixon-unet)")
    p.add_argument("--t1-model", dest="t1_model", metavar="PATH|NAME",
                   help="T1 U-Net model for unet-t1 (default attenuation-t1-unet)")
    p.add_argument("--noise", action="store_true",
                   help="Poisson counts instead of the default noise-free acquisition (which isolates the μ-map bias)")
    p.add_argument("--iterations", type=int, default=None, metavar="I", help="OSEM iterations (default 3)")
    p.add_argument("--subsets", type=int, default=None, metavar="K", help="OSEM subsets (default 14)")
    p.add_argument("--quick", action="store_true",
                   help="for tests only: 8 mm phantoms cropped to thorax/abdomen, 1 iteration x 7 subsets; "
                        "the numbers are not the evaluation's")
    p.add_argument("--keep", metavar="DIR",
                   help="also write each case's simulation folder and μ-maps to DIR/case_<seed> "
                        "(to re-run `nmai reconstruct DIR/case_<seed> --mumap mumap_<method>.nii.gz`)")
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file (atomically)")
    p.add_argument("--figure", metavar="PNG", help="write the joint-histogram / Bland-Altman figure (PNG)")
    p.set_defaults(func=run)


def run(args, progress):
    from ..errors import NMAIError
    from ..evaluate.attenuation import evaluate_attenuation
    from ..io import write_json

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.figure and not str(args.figure).lower().endswith(".png"):
        raise NMAIError("--figure must end in .png")
    result = evaluate_attenuation(cases=args.cases, seed_start=args.seed_start, methods=methods, model=args.model,
                                  t1_model=args.t1_model, noise=args.noise, iterations=args.iterations,
                                  subsets=args.subsets, quick=args.quick, keep_dir=args.keep, figure=args.figure,
                                  progress=progress)
    outputs = {}
    if args.figure:
        outputs["figure"] = str(args.figure)
    if args.json:
        write_json(args.json, result)
        outputs["json"] = str(args.json)
    passed = [k for k, t in result["targets"].items() if t["pass"]]
    failed = [k for k, t in result["targets"].items() if t["pass"] is False]
    lines = []
    for method, m in result["methods"].items():
        regions = ", ".join(f"{r} {v['mean_pct']:+.1f}%" for r, v in m["regions"].items() if v["mean_pct"] is not None)
        lines.append(f"{method}: {regions}; bone Dice {m['bone_dice']:.2f}; μ MAE {m['mu_mae_cm-1']:.4f} cm-1")
    message = (f"evaluated {result['cases']} case(s) in {result['duration_s']:.0f} s\n" + "\n".join(lines)
               + f"\ntargets passed: {', '.join(passed) or 'none'}; failed: {', '.join(failed) or 'none'}")
    return {**result, "message": message, "outputs": outputs}
