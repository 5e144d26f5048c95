"""The ``nmai`` command line.

Each subcommand lives in its own module under ``nmai.cli`` and exposes ``add_parser(subparsers)``; the
parser's ``func(args, progress) -> dict | None`` does the work and returns a JSON-serialisable result.
Errors a user can cause are :class:`nmai.errors.NMAIError`: printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from .. import __version__
from ..errors import CancelledError, NMAIError
from ..progress import Progress, jsonl_sink, text_sink

# Order is the order shown by ``nmai --help``.
COMMANDS = ["info", "convert", "denoise", "attenuation", "demo", "phantom", "simulate", "reconstruct", "bench", "train", "evaluate", "triage"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmai",
        description="NMAI: deep learning for nuclear-medicine imaging (PET attenuation, denoising, triage). "
                    "The engine behind the NMAI 3D Slicer extension.")
    parser.add_argument("--version", action="version", version=f"nmai {__version__}")
    parser.add_argument("--jsonl", action="store_true",
                        help="machine-readable output: one JSON object per line on stdout "
                             "(progress, then a final result or error); used by the Slicer runner")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for numerical work (default: all cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _print_human(result) -> None:
    if result is None:
        return
    if isinstance(result, dict) and "message" in result:
        print(result["message"])
    else:
        print(json.dumps(result, indent=2))


def _triage_shorthand(argv: list) -> list:
    """``nmai triage PET ...`` means ``nmai triage image PET ...`` (the issue's form)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--threads" else 1
    if i + 1 < len(argv) and argv[i] == "triage" and argv[i + 1] not in ("watch", "frames", "image", "-h", "--help"):
        return argv[:i + 1] + ["image"] + argv[i + 1:]
    return argv


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(_triage_shorthand(list(sys.argv[1:] if argv is None else argv)))
    if not args.command:
        parser.print_help()
        return 1
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    # human progress only on a terminal: logs and pipes get the result or the one-line error alone
    progress = Progress(jsonl_sink() if args.jsonl else text_sink() if sys.stderr.isatty() else None)
    _exit_cleanly_on_sigterm()
    try:
        result = args.func(args, progress)
    except CancelledError as exc:
        return _fail(args, str(exc), 130)
    except NMAIError as exc:
        return _fail(args, str(exc), 2)
    except KeyboardInterrupt:
        return _fail(args, "interrupted; nothing was written", 130)
    except OSError as exc:  # a folder that cannot be created, a full disk, no permission ...
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}", 2)
    if args.jsonl:
        sys.stdout.write(json.dumps({"type": "result", "result": result}) + "\n")
        sys.stdout.flush()
    else:
        _print_human(result)
    return 0


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (Cancel in Slicer) unwinds like Ctrl-C, so atomic writes remove their temporary files."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):  # noqa: ARG001
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, handler)


def _fail(args, message: str, code: int) -> int:
    if getattr(args, "jsonl", False):
        sys.stdout.write(json.dumps({"type": "error", "message": message}) + "\n")
        sys.stdout.flush()
    print(f"nmai {args.command}: error: {message}", file=sys.stderr)
    return code
