"""``nmai reconstruct``: OSEM of a stored simulated acquisition, optionally with another μ-map."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("reconstruct", help="reconstruct a simulated acquisition (optionally with another μ-map, or with a "
                                       "denoising-CNN prior)",
                       description="Reconstruct the acquisition in a folder written by 'nmai simulate' with OSEM. "
                                   "With --mumap the attenuation correction uses that μ-map (resampled to the "
                                   "acquisition grid) instead of the true one, so the PET error it causes can be "
                                   "measured; the result lists reconstructed vs true mean activity per label.")
    p.add_argument("simdir", metavar="SIMDIR", help="folder written by 'nmai simulate'")
    p.add_argument("--mumap", metavar="M", help="μ-map for attenuation correction (cm-1; default: the true one)")
    p.add_argument("--iterations", type=int, default=3, metavar="I", help="OSEM iterations (default 3)")
    p.add_argument("--subsets", type=int, default=14, metavar="K", help="OSEM subsets (default 14)")
    p.add_argument("--frame", type=int, default=None, metavar="N", help="reconstruct one frame (default: all)")
    p.add_argument("--no-psf", action="store_true", help="no resolution modelling")
    p.add_argument("--postfilter", type=float, default=0.0, metavar="MM", help="Gaussian post-filter FWHM (mm)")
    p.add_argument("--prior", choices=["cnn"], default=None,
                   help="reconstruct with a denoising CNN as prior inside the iterations, with local linear "
                        "fitting against its bias (Kim et al. 2018), starting from a 3-iteration OSEM; --iterations then "
                        "counts the prior iterations after it")
    p.add_argument("--prior-model", metavar="PATH|NAME", default=None,
                   help="--prior cnn: the denoising model (default denoise-cnn)")
    p.add_argument("--prior-weight", type=float, default=None, metavar="G",
                   help="--prior cnn: how strongly each update is pulled to the prior, 0 = OSEM (default 0.3)")
    p.add_argument("--out", metavar="R", required=True, help="output image (.nii.gz) or folder (gets recon.nii.gz)")
    p.set_defaults(func=run)


def run(args, progress):
    from ..errors import NMAIError
    from ..sim import reconstruct_folder

    if args.prior is None and (args.prior_model or args.prior_weight is not None):
        raise NMAIError("--prior-model and --prior-weight need --prior cnn")
    prior = None
    if args.prior:
        if args.postfilter:
            raise NMAIError("--postfilter cannot be combined with --prior (the prior already regularises)")
        from ..denoise.apply import DEFAULT_MODELS
        from ..denoise.prior import DEFAULT_WEIGHT

        prior = {"model": args.prior_model or DEFAULT_MODELS["cnn"],
                 "weight": DEFAULT_WEIGHT if args.prior_weight is None else args.prior_weight}
    result = reconstruct_folder(args.simdir, args.out, mumap_path=args.mumap, iterations=args.iterations,
                                subsets=args.subsets, psf=not args.no_psf, frame=args.frame,
                                postfilter_mm=args.postfilter, prior=prior, progress=progress)
    result["message"] = (f"reconstructed {args.simdir}" + (" with the CNN prior" if prior else "")
                         + f" -> {result['recon']}")
    return result
