"""``nmai evaluate TASK``: measure a method against exact ground truth on simulated phantoms."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="measure methods on simulated phantoms never used in training (attenuation, denoise, "
                         "triage)",
        description="attenuation: on whole-body phantoms from seeds the training never used, simulate one "
                    "acquisition with the true μ-map, reconstruct it with the true, Dixon 4-class and U-Net "
                    "μ-maps, and report the PET error each μ-map causes per region (bone, soft tissue, lung, "
                    "fat, liver, brain, lesions in bone and in soft tissue), bone Dice and μ MAE, with pass/fail "
                    "against the targets; optionally a joint-histogram / Bland-Altman figure. "
                    "denoise: on unseen whole-body phantoms, one full-count acquisition thinned to each count "
                    "fraction, OSEM, then each method (cnn, gan, CNN-prior reconstruction, Gaussian at matched "
                    "liver noise): PSNR/SSIM/NRMSE in the body, lesion SUVmean/max/peak bias and liver CoV vs "
                    "the full-count OSEM; NEMA IEC contrast recovery vs background variability (with the "
                    "Gaussian curve); super-resolution (sr) of a large-crystal scanner on a point source and the "
                    "NEMA phantom; pass/fail against the targets; optionally a CRC-BV figure. "
                    "triage: on unseen phantoms, each artifact at moderate severity vs clean scans (ROC AUC of "
                    "the artifact classifier + μ-map rules, alarms on clean scans) and lesion candidates "
                    "(FROC, sensitivity at <= 1 false positive per scan for lesions >= 10 mm at >= 3:1); "
                    "optionally a FROC/AUC figure.")
    p.add_argument("task", choices=["attenuation", "denoise", "triage"], help="what to evaluate")
    p.add_argument("--cases", type=int, default=10, metavar="N", help="number of phantoms (default 10)")
    p.add_argument("--seed-start", type=int, default=100, metavar="S",
                   help="first phantom seed (default 100; must stay below 10000, where the training seeds start)")
    p.add_argument("--methods", default=None, metavar="M,M",
                   help="attenuation: comma-separated unet (Dixon U-Net), dixon4, unet-t1 (T1 U-Net), unet-raw (Dixon "
                        "U-Net without its soft-tissue smoothing); default "
                        "unet,dixon4. denoise: cnn, gan, gaussian (matched-noise Gaussian and the NEMA curve), "
                        "prior (CNN-prior reconstruction), sr (super-resolution), cnn-raw / cnn-fit / cnn-nospots (the "
                        "cnn without its local fit / with the plain fit, significance 0 / without its hot-spot fit); "
                        "default all")
    p.add_argument("--model", metavar="PATH|NAME",
                   help="attenuation: Dixon U-Net model (default attenuation-dixon-unet); denoise: the cnn model, "
                        "also the prior of 'prior' (default denoise-cnn)")
    p.add_argument("--lesion-model", dest="lesion_model", metavar="PATH|NAME",
                   help="triage: lesion scorer (default triage-lesions); --model is the artifact classifier "
                        "(default triage-artifacts)")
    p.add_argument("--gan-model", dest="gan_model", metavar="PATH|NAME",
                   help="denoise: gan model (default denoise-gan)")
    p.add_argument("--sr-model", dest="sr_model", metavar="PATH|NAME", help="denoise: sr model (default denoise-sr)")
    p.add_argument("--fractions", metavar="F,F",
                   help="denoise: count fractions (default 0.025,0.1,0.25,0.5,1.0; the networks were trained on "
                        "0.05-0.5)")
    p.add_argument("--realisations", type=int, default=None, metavar="R",
                   help="denoise: Poisson realisations of the NEMA phantom per count level (default 3)")
    p.add_argument("--t1-model", dest="t1_model", metavar="PATH|NAME",
                   help="T1 U-Net model for unet-t1 (default attenuation-t1-unet)")
    p.add_argument("--noise", action="store_true",
                   help="Poisson counts instead of the default noise-free acquisition (which isolates the μ-map bias)")
    p.add_argument("--iterations", type=int, default=None, metavar="I", help="OSEM iterations (default 3)")
    p.add_argument("--subsets", type=int, default=None, metavar="K", help="OSEM subsets (default 14)")
    p.add_argument("--quick", action="store_true",
                   help="for tests only: 8 mm phantoms cropped to thorax/abdomen, 1 iteration x 7 subsets (denoise: "
                        "1 case's worth of work, 2 count levels, 1 NEMA realisation); the numbers are not the "
                        "evaluation's")
    p.add_argument("--keep", metavar="DIR",
                   help="also write each case's simulation folder and μ-maps to DIR/case_<seed> "
                        "(to re-run `nmai reconstruct DIR/case_<seed> --mumap mumap_<method>.nii.gz`)")
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file (atomically)")
    p.add_argument("--figure", metavar="PNG",
                   help="write the figure (PNG): attenuation: joint histogram / Bland-Altman; denoise: CRC vs BV")
    p.set_defaults(func=run)


def run(args, progress):
    from ..errors import NMAIError

    if args.figure and not str(args.figure).lower().endswith(".png"):
        raise NMAIError("--figure must end in .png")
    if args.task == "denoise":
        return run_denoise(args, progress)
    if args.task == "triage":
        return run_triage(args, progress)
    if args.lesion_model:
        raise NMAIError("--lesion-model applies to 'nmai evaluate triage' only")
    for option in ("gan_model", "sr_model", "fractions", "realisations"):
        if getattr(args, option) is not None:
            raise NMAIError(f"--{option.replace('_', '-')} applies to 'nmai evaluate denoise' only")
    from ..evaluate.attenuation import evaluate_attenuation

    methods = [m.strip() for m in (args.methods or "unet,dixon4").split(",") if m.strip()]
    result = evaluate_attenuation(cases=args.cases, seed_start=args.seed_start, methods=methods, model=args.model,
                                  t1_model=args.t1_model, noise=args.noise, iterations=args.iterations,
                                  subsets=args.subsets, quick=args.quick, keep_dir=args.keep, figure=args.figure,
                                  progress=progress)
    outputs = _write_outputs(args, result)
    passed = [k for k, t in result["targets"].items() if t["pass"]]
    failed = [k for k, t in result["targets"].items() if t["pass"] is False]
    lines = []
    for method, m in result["methods"].items():
        regions = ", ".join(f"{r} {v['mean_pct']:+.1f}%" for r, v in m["regions"].items() if v["mean_pct"] is not None)
        lines.append(f"{method}: {regions}; bone Dice {m['bone_dice']:.2f}; μ MAE {m['mu_mae_cm-1']:.4f} cm-1")
    message = (f"evaluated {result['cases']} case(s) in {result['duration_s']:.0f} s\n" + "\n".join(lines)
               + f"\ntargets passed: {', '.join(passed) or 'none'}; failed: {', '.join(failed) or 'none'}")
    return {**result, "message": message, "outputs": outputs}


def _command(args, methods, fractions) -> str:
    """The exact command that reproduces this run (every option explicit)."""
    parts = ["nmai", "evaluate", "denoise", "--cases", str(args.cases), "--seed-start", str(args.seed_start),
             "--methods", ",".join(methods)]
    if fractions:
        parts += ["--fractions", ",".join(f"{f:g}" for f in fractions)]
    for flag, value in (("--model", args.model), ("--gan-model", args.gan_model), ("--sr-model", args.sr_model),
                        ("--realisations", args.realisations), ("--iterations", args.iterations),
                        ("--subsets", args.subsets), ("--json", args.json), ("--figure", args.figure)):
        if value is not None:
            parts += [flag, str(value)]
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def run_denoise(args, progress):
    from ..errors import NMAIError
    from ..evaluate.denoise import DEFAULT_METHODS, evaluate_denoise

    if args.noise or args.keep or args.t1_model:
        raise NMAIError("--noise, --keep and --t1-model apply to 'nmai evaluate attenuation' only (the denoising "
                        "evaluation always draws Poisson counts)")
    methods = [m.strip() for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip()]
    fractions = None
    if args.fractions:
        try:
            fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
        except ValueError:
            raise NMAIError(f"--fractions must be comma-separated numbers in (0, 1], got {args.fractions!r}") from None
    result = evaluate_denoise(cases=args.cases, seed_start=args.seed_start, methods=methods, fractions=fractions,
                              model=args.model, gan_model=args.gan_model, sr_model=args.sr_model,
                              realisations=args.realisations, iterations=args.iterations, subsets=args.subsets,
                              quick=args.quick, figure=args.figure, command=_command(args, methods, fractions),
                              progress=progress)
    outputs = _write_outputs(args, result)
    lines = []
    wb = result.get("wholebody")
    if wb:
        for key, per in wb["summary"].items():
            cells = []
            for fk, e in per.items():
                psnr = e["psnr_db"]["mean"]
                bias = e["lesion_suvmean_bias_pct"]["mean"]
                cells.append(f"{100 * float(fk):g}%: PSNR {'-' if psnr is None else f'{psnr:.1f}'} dB, "
                             f"CoV {e['liver_cov']['mean']:.3f}, SUVmean bias "
                             f"{'-' if bias is None else f'{bias:+.1f}%'}")
            lines.append(f"{key}: " + "; ".join(cells))
    sr = result.get("sr")
    if sr:
        p = sr["point_source"]["images"]
        lines.append("sr point FWHM (mm): " + ", ".join(
            f"{k} {'-' if v['fwhm_mm']['mean_xy'] is None else round(v['fwhm_mm']['mean_xy'], 2)}"
            for k, v in p.items()))
    passed = [k for k, t in result["targets"].items() if t["pass"]]
    failed = [k for k, t in result["targets"].items() if t["pass"] is False]
    head = f"evaluated denoising in {result['duration_s']:.0f} s"
    if result["quick"]:
        head += " (QUICK MODE: not the evaluation's numbers)"
    message = (head + "\n" + "\n".join(lines)
               + f"\ntargets passed: {', '.join(passed) or 'none'}; failed: {', '.join(failed) or 'none'}")
    return {**result, "message": message, "outputs": outputs}


def run_triage(args, progress):
    from ..evaluate.triage import evaluate_triage

    seed_start = 200 if args.seed_start == 100 else args.seed_start  # 100+ are the other evaluations' phantoms
    result = evaluate_triage(cases=args.cases, seed_start=seed_start, model=args.model,
                             lesion_model=args.lesion_model, quick=args.quick, figure=args.figure, progress=progress)
    outputs = _write_outputs(args, result)
    aucs = ", ".join(f"{a} {v['auc_vs_clean']:.2f}" for a, v in result["artifacts"].items()
                     if v["auc_vs_clean"] is not None)
    message = (f"artifact AUC vs clean: {aucs}; lesions: sensitivity {result['lesions']['sensitivity_at_1fp_per_scan']:.2f}"
               f" at <= 1 FP/scan ({result['lesions']['eligible_lesions']} lesions, {result['lesions']['scans']} scans)")
    return {**result, "message": message, "outputs": outputs}


def _write_outputs(args, result) -> dict:
    """Write ``--json`` (atomically) and list it with the ``--figure`` the evaluation already wrote."""
    from ..io import write_json

    outputs = {}
    if args.figure:
        outputs["figure"] = str(args.figure)
    if args.json:
        write_json(args.json, result)
        outputs["json"] = str(args.json)
    return outputs
