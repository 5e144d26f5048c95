"""``nmai bench TARGET``: timing benchmarks. Each target is a module ``nmai.bench.<target>`` with
``run(progress, quick=False) -> dict``; new targets (denoise, attenuation, triage) only add a module."""

from __future__ import annotations

import importlib
import pkgutil


def targets() -> list[str]:
    from .. import bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def add_parser(sub):
    p = sub.add_parser("bench", help=f"run a timing benchmark ({', '.join(targets())}) and write its JSON",
                       description="Time an NMAI component on this machine. Targets: " + ", ".join(targets()))
    p.add_argument("target", choices=targets(), help="what to benchmark")
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file (atomically)")
    p.add_argument("--quick", action="store_true", help="smaller problem sizes (smoke test)")
    p.set_defaults(func=run)


def run(args, progress):
    from ..io import write_json

    module = importlib.import_module(f"nmai.bench.{args.target}")
    result = module.run(progress, quick=args.quick)
    if args.json:
        write_json(args.json, result)
    summary = result.get("summary", "")
    result_out = dict(result)
    result_out["message"] = f"bench {args.target}: {summary}" + (f" -> {args.json}" if args.json else "")
    return result_out
