"""Progress reporting shared by the CLI, the runner and in-process calls.

Engine functions take an optional ``progress`` callable ``progress(fraction, message)``; fraction is in
[0, 1]. With ``nmai --jsonl`` the CLI turns each call into one JSON line on stdout::

    {"type": "progress", "fraction": 0.42, "message": "filtering"}
    {"type": "result", "result": {...}}          # last line on success
    {"type": "error", "message": "..."}           # last line on failure (exit code 2)

which the Slicer runner parses into a progress bar. Cancellation is cooperative through ``check()``.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Callable, Optional

from .errors import CancelledError

ProgressFn = Callable[[float, str], None]


def null_progress(fraction: float, message: str = "") -> None:  # noqa: ARG001
    return None


class Progress:
    """Callable progress sink with optional sub-ranges and cooperative cancellation."""

    def __init__(self, sink: Optional[ProgressFn] = None, start: float = 0.0, stop: float = 1.0,
                 cancel_event: Optional[threading.Event] = None):
        self.sink = sink or null_progress
        self.start, self.stop = start, stop
        self.cancel_event = cancel_event or threading.Event()

    def __call__(self, fraction: float, message: str = "") -> None:
        self.check()
        f = self.start + (self.stop - self.start) * min(max(float(fraction), 0.0), 1.0)
        self.sink(f, message)

    def sub(self, start: float, stop: float) -> "Progress":
        """A Progress that maps [0, 1] onto [start, stop] of this one."""
        a = self.start + (self.stop - self.start) * start
        b = self.start + (self.stop - self.start) * stop
        return Progress(self.sink, a, b, self.cancel_event)

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise CancelledError("cancelled by the user; nothing was written")


def as_progress(progress) -> Progress:
    if isinstance(progress, Progress):
        return progress
    return Progress(progress)


def jsonl_sink(stream=None) -> ProgressFn:
    def sink(fraction: float, message: str) -> None:
        out = stream or sys.stdout
        out.write(json.dumps({"type": "progress", "fraction": round(fraction, 4), "message": message}) + "\n")
        out.flush()
    return sink


def text_sink(stream=None) -> ProgressFn:
    last = {"msg": None}

    def sink(fraction: float, message: str) -> None:
        out = stream or sys.stderr
        if message != last["msg"]:
            out.write(f"[{fraction * 100:5.1f}%] {message}\n")
            out.flush()
            last["msg"] = message
    return sink
