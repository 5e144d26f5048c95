"""``nmai triage``: raw-data alarms while a scan runs (``watch``), frame files from a simulation
(``frames``), and a first rule-based image report (``image``)."""

from __future__ import annotations

import json
import sys


def add_parser(sub):
    p = sub.add_parser("triage", help="artifact alarms: watch sinogram frames as they arrive, or check an image",
                       description="Triage: raw-data (sinogram) checks per frame while the scan runs, and a "
                                   "rule-based image report.")
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
    i = tsub.add_parser("image", help="rule-based artifact report of a PET image (first version)",
                        description="Rule-based triage report of a reconstructed PET: μ-map checks "
                                    "(truncation, voids) when --mumap is given, raw-data findings per frame "
                                    "when --acquisition is given. Misregistration and lesion candidates are "
                                    "not produced yet (lesions stays an empty list).")
    i.add_argument("pet", metavar="PET")
    i.add_argument("--mumap", metavar="MU", help="the μ-map the PET was attenuation-corrected with (cm-1)")
    i.add_argument("--acquisition", metavar="SIMDIR", help="a simulation folder: add raw-data findings per frame")
    i.add_argument("--out", required=True, metavar="REPORT.json")
    i.set_defaults(func=run_image)


def run_watch(args, progress):
    from ..triage import watch_folder

    lines, t_max = [], 0.0
    for result in watch_folder(args.dir, timeout_s=args.timeout or None, expected_frames=args.expected_frames,
                               motion_check_mm=args.motion_mm, rate_tolerance=args.rate_tolerance):
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        lines.append(result)
        t_max = max(t_max, result.get("latency_s") or 0.0)
    counts = {a: sum(r["alarm"] == a for r in lines) for a in ("ok", "check", "repeat")}
    worst = "repeat" if counts["repeat"] else "check" if counts["check"] else "ok"
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
    from ..io import write_json
    from ..triage.image import triage_image

    report = triage_image(args.pet, mumap=args.mumap, acquisition=args.acquisition, progress=progress)
    write_json(args.out, report)
    names = ", ".join(a["type"] for a in report["artifacts"]) or "none"
    return {"message": f"alarm {report['alarm']}: artifacts {names} -> {args.out}", "out": args.out,
            "alarm": report["alarm"], "artifacts": report["artifacts"]}
