"""``nmai triage``: raw-data alarms while a scan runs (``watch``), frame files from a simulation
(``frames``), and the image report (``image``; ``nmai triage PET ...`` is the same)."""

from __future__ import annotations

import json
import sys


def add_parser(sub):
    p = sub.add_parser("triage", help="artifact alarms and lesion candidates: check a PET image (nmai triage PET ...), "
                            "or watch sinogram frames as they arrive",
                       description="Triage: an image report (artifact classifier, μ-map and raw-data rules, "
                                   "lesion candidates; 'nmai triage PET ...' is 'nmai triage image PET ...'), and "
                                   "raw-data (sinogram) checks per frame while the scan runs.")
    tsub = p.add_subparsers(dest="triage_command", metavar="SUBCOMMAND")
    tsub.required = True
    w = tsub.add_parser("watch", help="watch a folder for frame files; print one JSON alarm line per frame",
                        description="Watch DIR for frame files (scan.json + frame_NNNN.npz, see 'nmai triage "
                                    "frames') and print one JSON line per frame as it lands: alarm ok|check|"
                                    "repeat with findings (failed blocks, count rate, motion).")
    w.add_argument("dir", metavar="DIR")
    w.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="stop when no new frame arrived for S seconds (default 120; 0: never)")
    w.add_argument("--expected-frames", type=int, default=None, metavar="N",
                   help="stop after N frame files (default: frames_expected of scan.json, else the timeout)")
    w.add_argument("--motion-mm", type=float, default=4.0, metavar="MM",
                   help="motion alarm threshold on the estimated shift (default 4, catches 5 mm moves)")
    w.add_argument("--rate-tolerance", type=float, default=0.15, metavar="F",
                   help="relative count-rate change that raises an alarm (default 0.15)")
    w.set_defaults(func=run_watch)
    f = tsub.add_parser("frames", help="write a simulated acquisition as frame files into a (watched) folder",
                        description="Split the acquisition of a simulation folder ('nmai simulate ... --frames N') "
                                    "into scan.json + frame_NNNN.npz in DIR, each written to a temporary name "
                                    "and renamed, optionally DELAY seconds apart (a scan in progress).")
    f.add_argument("simdir", metavar="SIMDIR")
    f.add_argument("--out", required=True, metavar="DIR")
    f.add_argument("--delay", type=float, default=0.0, metavar="S", help="seconds between frames (default 0)")
    f.add_argument("--uncompressed", action="store_true", help="np.savez instead of np.savez_compressed")
    f.set_defaults(func=run_frames)
    i = tsub.add_parser("image", help="triage report of a PET image: artifacts, alarm, lesion candidates",
                        description="Triage report of a reconstructed PET (also: nmai triage PET ...): the artifact "
                                    "classifier (PET, with the μ-map or CT when given), an image-noise rule (too "
                                    "few counts), μ-map rules (truncation, voids), raw-data findings per frame when --acquisition is given, and lesion "
                                    "candidates scored by the lesion CNN. Alarm: ok, check (look, fix the "
                                    "μ-map and reconstruct) or repeat (repeat/extend the scan).")
    i.add_argument("pet", metavar="PET", help="PET volume (NIfTI/NRRD with sidecar, or a DICOM series folder)")
    mu = i.add_mutually_exclusive_group()
    mu.add_argument("--mumap", metavar="MU", help="the μ-map the PET was attenuation-corrected with (cm-1)")
    mu.add_argument("--ct", metavar="CT", help="the CT the PET was attenuation-corrected with (HU)")
    i.add_argument("--acquisition", metavar="SIMDIR", help="a simulation folder: add raw-data findings per frame")
    i.add_argument("--out", required=True, metavar="REPORT.json", help="the report (JSON, schema in the README)")
    i.add_argument("--lesions", metavar="SEG", help="also write the lesion candidates as a label volume "
                                                    "(candidate n = label n, on the PET grid)")
    i.add_argument("--model", metavar="PATH|NAME", default="auto",
                   help="artifact classifier (default: the shipped triage-artifacts when installed)")
    i.add_argument("--lesion-model", metavar="PATH|NAME", default="auto",
                   help="lesion-candidate scorer (default: the shipped triage-lesions when installed)")
    i.add_argument("--threshold", type=float, default=0.5, metavar="P",
                   help="report lesion candidates with probability >= P (default 0.5)")
    i.add_argument("--rules-only", action="store_true", help="no networks: image-noise, μ-map and raw-data rules only")
    i.add_argument("--units", default=None, choices=["Bq/ml", "SUVbw", "SUVlbm"],
                   help="PET units when the file does not record them")
    i.set_defaults(func=run_image)


def run_watch(args, progress):
    from ..triage import raw, watch_folder

    lines, t_max = [], 0.0
    for result in watch_folder(args.dir, timeout_s=args.timeout or None, expected_frames=args.expected_frames,
                               motion_check_mm=args.motion_mm, rate_tolerance=args.rate_tolerance):
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        lines.append(result)
        t_max = max(t_max, result.get("latency_s") or 0.0)
    counts = {a: sum(r["alarm"] == a for r in lines) for a in ("ok", "check", "repeat")}
    worst = raw.worst(r["alarm"] for r in lines)
    message = (f"{len(lines)} frame(s): {counts['ok']} ok, {counts['check']} check, {counts['repeat']} repeat; "
               f"each alarm at most {t_max:.2f} s after its frame landed")
    print(message, file=sys.stderr)     # stdout stays one JSON object per line
    if not args.jsonl:
        return None
    return {"message": message, "frames": len(lines), "alarms": counts, "alarm": worst, "max_latency_s": t_max}


def run_frames(args, progress):
    from ..sim import Acquisition
    from ..triage import write_frames

    acq = Acquisition.load(args.simdir)
    out = write_frames(acq, args.out, delay_s=args.delay, compress=not args.uncompressed, progress=progress)
    out["message"] = f"{len(out['frames'])} frame file(s) -> {args.out}"
    return out


def run_image(args, progress):
    from ..errors import NMAIError
    from ..io import read_volume, refuse_overwriting, write_json, write_volume
    from ..triage.image import triage_image
    from ..triage.lesions import label_map

    inputs = [x for x in (args.pet, args.mumap, args.ct) if x]
    refuse_overwriting(args.out, *inputs)
    if args.lesions:
        refuse_overwriting(args.lesions, *inputs)
        if args.rules_only:
            raise NMAIError("--lesions needs the lesion model; drop --rules-only")
    pet = read_volume(args.pet, units=args.units)
    if pet.modality == "OT":
        pet.modality = "PT"
    report = triage_image(pet, mumap=args.mumap, ct=args.ct, acquisition=args.acquisition,
                          classifier=None if args.rules_only else args.model,
                          lesion_model=None if args.rules_only else args.lesion_model,
                          lesion_threshold=args.threshold, progress=progress)
    report["input"] = str(args.pet)
    outputs = {"report": str(args.out)}
    if args.lesions:
        if not report["checked"]["lesions"]:
            raise NMAIError("no lesion model is installed; give --lesion-model PATH or drop --lesions")
        image = pet.to_units("SUVbw").array if report["lesions_units"] == "SUVbw" else pet.array
        seg = pet.derive(label_map(image, pet.spacing, report["lesions"]), modality="SEG", units="label",
                         labels={f"candidate_{n:02d}": n for n in range(1, len(report["lesions"]) + 1)})
        write_volume(seg, args.lesions)
        outputs["lesions"] = str(args.lesions)
    write_json(args.out, report)
    names = ", ".join(f"{a['type']} {a['probability']:.2f}" for a in report["artifacts"]) or "none"
    return {"message": f"alarm {report['alarm']}: artifacts {names}; {len(report['lesions'])} lesion "
                       f"candidate(s) -> {args.out}", "outputs": outputs, "alarm": report["alarm"],
            "artifacts": report["artifacts"], "lesions": report["lesions"]}
