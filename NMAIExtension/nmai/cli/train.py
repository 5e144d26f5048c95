"""``nmai train TASK``: train a model on simulated phantoms (or, later, your own data) and save its folder."""

from __future__ import annotations

import os
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("train", help="train a model on simulated phantoms and write a model folder with its card",
                       description="Train a model and write an NMAI model folder (model.safetensors + "
                                   "metadata.json with sha256, data, seeds, time and metrics). Use --register to "
                                   "add it to the built-in registry (maintainers) or pass the folder path to "
                                   "the commands that take --model.")
    p.add_argument("task", choices=["attenuation", "denoise", "triage"], help="what to train")
    p.add_argument("--inputs", choices=["dixon", "t1"], default="dixon",
                   help="attenuation: MR inputs, Dixon water+fat or T1 (default dixon)")
    p.add_argument("--method", choices=["cnn", "gan", "sr"], default="cnn",
                   help="denoise: low-count denoiser (cnn), adversarial denoiser (gan, starts from a trained "
                        "cnn) or large-crystal super-resolution (sr); default cnn")
    p.add_argument("--model", choices=["artifacts", "lesions"], default="artifacts",
                   help="triage: the image-domain artifact classifier (then calibrated: its listing "
                        "thresholds are set on simulated phantoms of seeds 36000+, written to its card) or "
                        "the lesion-candidate scorer (default artifacts)")
    p.add_argument("--init", metavar="PATH|NAME", default=None,
                   help="denoise --method gan: the trained cnn to start from (default: the shipped denoise-cnn)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="denoise/triage: keep the simulated training data here, so another run (gan after cnn, "
                        "or a resumed run) reuses them")
    p.add_argument("--preset", choices=["shipped", "quick"], default="shipped",
                   help="'shipped' reproduces the shipped model; 'quick' is a few steps to check the code")
    p.add_argument("--out", default="nmai-models", help="folder to write the model folder into")
    p.add_argument("--checkpoints", default=None,
                   help="checkpoint folder: an interrupted run started again with the same folder resumes")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, default=1, help="processes that build phantoms in parallel")
    p.add_argument("--register", action="store_true", help="add the model to nmai/models/models.json")
    p.set_defaults(func=run)


def run(args, progress):
    from ..models import register_model

    workers = max(1, min(args.workers, os.cpu_count() or 1))
    if args.task == "denoise":
        from ..denoise.training import train_denoise

        command = f"nmai train denoise --method {args.method} --preset {args.preset}"
        result = train_denoise(args.method, Path(args.out), preset=args.preset, init=args.init,
                               device=args.device, workers=workers, checkpoint_dir=args.checkpoints,
                               cache_dir=args.cache, progress=progress, command=command)
        if args.register:
            register_model(result["folder"])
        return {**result, "message": f"wrote {result['folder']} (validation {result['metrics']})",
                "outputs": {"model": result["folder"]}}
    if args.task == "triage":
        from ..triage.training import train_triage

        command = f"nmai train triage --model {args.model} --preset {args.preset}"
        result = train_triage(args.model, Path(args.out), preset=args.preset, cache_dir=args.cache,
                              checkpoint_dir=args.checkpoints, device=args.device, progress=progress,
                              command=command)
        if args.register:
            register_model(result["folder"])
        return {**result, "message": f"wrote {result['folder']}", "outputs": {"model": result["folder"]}}
    from ..attenuation.training import train_attenuation

    command = "nmai train attenuation --inputs {} --preset {}".format(args.inputs, args.preset)
    result = train_attenuation(args.inputs, Path(args.out), preset=args.preset, device=args.device,
                               workers=workers,
                               checkpoint_dir=args.checkpoints, progress=progress, command=command)
    if args.register:
        register_model(result["folder"])
    return {**result, "message": f"wrote {result['folder']} (validation {result['metrics']})",
            "outputs": {"model": result["folder"]}}
