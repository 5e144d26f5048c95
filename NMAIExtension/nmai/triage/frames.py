"""Frame files of a scan in progress, the writer that makes them from a simulation, and the folder watcher.

A watched folder holds::

    scan.json          {"format": "nmai-triage-scan/1", "scanner": {Scanner.to_dict()}, "slices": Z,
                        "views": V, "bins": B, "slice_mm": dz, "half_life_s": 6586.2,
                        "frames_expected": N or null}
    frame_0000.npz     prompts (Z, V, B) integer counts in the crystal-pair layout of nmai.sim.scanner,
    frame_0001.npz     frame (int), start_s and duration_s (seconds from scan start); np.savez(_compressed)
    ...

Instead of ``scan.json`` the folder may hold the ``acquisition.json`` of a simulation. Files are picked
up in name order and only once they are complete: writers write to a name starting with ``.`` (or ending
in ``.part``) and rename it (``os.replace``, atomic) to ``frame_NNNN.npz``. A ``frame_*.npz`` that cannot
be read yet (a writer that writes in place) is retried until it has not changed for ``unreadable_after_s``
seconds, then reported as unreadable; the watcher never stops on a bad file.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from ..errors import NMAIError
from ..io import atomic_path, write_json
from ..progress import as_progress
from ..sim.scanner import F18_HALF_LIFE_S, Scanner
from .raw import RawTriage, check_item, refused

HEADER_FORMAT = "nmai-triage-scan/1"
FRAME_GLOB = "frame_*.npz"


def header_of(acq) -> dict:
    """scan.json content for a simulated acquisition (the healthy scanner: failures are not announced)."""
    return {"format": HEADER_FORMAT, "scanner": acq.scanner.with_(failed_blocks=()).to_dict(),
            "slices": acq.n_slices, "views": acq.scanner.n_views, "bins": acq.scanner.n_bins,
            "slice_mm": acq.slice_mm, "half_life_s": F18_HALF_LIFE_S, "frames_expected": len(acq.frames)}


def read_header(folder) -> dict | None:
    """The scan header of a watched folder (scan.json, else a simulation's acquisition.json); None if
    neither is there yet."""
    folder = Path(folder)
    scan, acq = folder / "scan.json", folder / "acquisition.json"
    path = scan if scan.exists() else acq if acq.exists() else None
    if path is None:
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise NMAIError(f"{path}: invalid JSON ({exc}); write it atomically (temporary name, then rename)") from None
    if path == acq:
        shape = meta.get("shape", {})
        if "scanner" not in meta or len(meta.get("spacing_mm") or []) != 3:
            raise NMAIError(f"{path}: an acquisition.json needs 'scanner' and 'spacing_mm'; write the folder with "
                            "'nmai simulate' or give a scan.json (see 'nmai triage frames')")
        meta = {"format": HEADER_FORMAT, "scanner": meta["scanner"], "slices": shape.get("slices"),
                "slice_mm": meta["spacing_mm"][2], "frames_expected": shape.get("frames")}
    if meta.get("format") != HEADER_FORMAT or "scanner" not in meta or "slice_mm" not in meta:
        raise NMAIError(f"{path}: not an NMAI scan header (format {HEADER_FORMAT!r} with scanner and slice_mm "
                        "expected); see 'nmai triage frames' for the format")
    meta["scanner"] = dict(meta["scanner"], failed_blocks=[])
    Scanner.from_dict(meta["scanner"])      # validates
    return meta


def write_frame(path, prompts, *, frame: int, start_s: float, duration_s: float, compress: bool = True) -> Path:
    """One frame file, written atomically (temporary dot-file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(
                fh, prompts=prompts, frame=np.int64(frame), start_s=np.float64(start_s),
                duration_s=np.float64(duration_s))
    return Path(path)


def write_frames(acq, out_dir, *, delay_s: float = 0.0, compress: bool = True, progress=None) -> dict:
    """Split a (multi-frame) acquisition into ``scan.json`` + ``frame_NNNN.npz`` in ``out_dir``, waiting
    ``delay_s`` between frames (a scan in progress, for the watcher)."""
    progress = as_progress(progress)
    out = Path(out_dir)
    if out.exists() and any(out.glob(FRAME_GLOB)):
        raise NMAIError(f"{out} already holds frame files; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "scan.json", header_of(acq))
    files = []
    for f, (start, duration) in enumerate(acq.frames):
        if f and delay_s > 0:
            time.sleep(delay_s)
        progress(f / len(acq.frames), f"frame {f + 1}/{len(acq.frames)}")
        files.append(str(write_frame(out / f"frame_{f:04d}.npz", acq.prompts[f], frame=f, start_s=start,
                                     duration_s=duration, compress=compress)))
    progress(1.0, "frames written")
    return {"out": str(out), "header": str(out / "scan.json"), "frames": files}


class NotReady(Exception):
    """The file is not (yet) a complete npz."""


def read_frame(path) -> dict:
    """A frame file → ``{frame, prompts, start_s, duration_s, file}``; NotReady while incomplete,
    NMAIError when complete but not a frame."""
    import zipfile
    import zlib

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if "prompts" not in names:
                raise NMAIError(f"{path.name}: no 'prompts' array (has {', '.join(sorted(names)) or 'nothing'}); "
                                "a frame file holds prompts (slices, views, bins), frame, start_s, duration_s")
            item = {"prompts": z["prompts"], "file": path.name}
            for key, cast in (("frame", int), ("start_s", float), ("duration_s", float)):
                if key in names:
                    try:
                        item[key] = cast(z[key])
                    except (TypeError, ValueError):
                        raise NMAIError(f"{path.name}: '{key}' must be one number, got shape "
                                        f"{np.shape(z[key])}") from None
    except NMAIError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, KeyError) as exc:
        raise NotReady(f"{type(exc).__name__}: {exc}") from None
    if "frame" not in item:
        digits = re.findall(r"\d+", path.stem)
        item["frame"] = int(digits[-1]) if digits else None
    return item


def watch_folder(folder, *, timeout_s: float | None = 60.0, expected_frames: int | None = None,
                 poll_s: float = 0.2, unreadable_after_s: float = 10.0, **options):
    """Generator: one result dict per frame file landing in ``folder`` (see :mod:`nmai.triage.raw` for
    the checks and ``options``), each with ``file`` and ``latency_s`` (seconds from the file's last write
    to its result). Stops after ``expected_frames`` files (default: the header's ``frames_expected``) or
    ``timeout_s`` seconds without a new file (None: never)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NMAIError(f"{folder}: no such folder; create it (the scanner writes frames into it) or fix the path")
    clock = time.monotonic
    last = clock()

    def timed_out():
        return timeout_s is not None and clock() - last > timeout_s

    header = read_header(folder)
    while header is None:
        if timed_out():
            raise NMAIError(f"{folder}: no scan.json (or acquisition.json) after {timeout_s:g} s; the scan header "
                            "must be written before the frames ('nmai triage frames' writes one)")
        time.sleep(poll_s)
        header = read_header(folder)
    triage = RawTriage.from_header(header, **options)
    if expected_frames is None:
        expected_frames = header.get("frames_expected")
    done, waiting, n = set(), {}, 0
    while not (expected_frames and n >= expected_frames):
        new = False
        for path in sorted(folder.glob(FRAME_GLOB)):
            if path.name in done or path.name.startswith(".") or path.name.endswith(".part"):
                continue
            try:
                stat = path.stat()
                item = read_frame(path)
            except FileNotFoundError:
                continue
            except NotReady as exc:      # still being written, or corrupt: wait for it to settle
                sig = (stat.st_size, stat.st_mtime)
                if waiting.get(path.name, (None,))[0] != sig:
                    waiting[path.name] = (sig, clock())
                if clock() - waiting[path.name][1] < unreadable_after_s:
                    continue
                result = refused(None, f"{path.name}: unreadable for {unreadable_after_s:g} s ({exc}); the "
                                 "file is truncated or corrupt: rewrite it (write to a temporary name, then "
                                 "rename)", file=path.name)
            except NMAIError as exc:
                result = refused(None, str(exc), file=path.name)
            else:
                result = check_item(triage, item)
            done.add(path.name)
            waiting.pop(path.name, None)
            result["latency_s"] = round(time.time() - stat.st_mtime, 3)
            n += 1
            new = True
            yield result
            last = clock()
            if expected_frames and n >= expected_frames:
                return
        if not new:
            if timed_out():
                return
            time.sleep(poll_s)
