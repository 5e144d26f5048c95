"""Monitor mode: per-frame raw-data alarms while a scan writes its frames into a folder.

:class:`FolderWatch` runs ``nmai triage watch DIR`` in a child process (through the shared
:class:`NMAIExtensionLib.runner.TaskRunner`, so :meth:`FolderWatch.stop` kills it at once, even while it waits
for the next frame). The child prints one JSON line per frame; :meth:`FolderWatch.poll` (called from a
``qt.QTimer`` in the panel, or in a loop) returns the new ones and hands each to the callback on the caller's
thread. Half-written files are waited for and corrupt or foreign frames are reported as ``check`` lines by
the engine's watcher (:func:`nmai.triage.frames.watch_folder`); a failing callback is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

from NMAIExtensionLib.messages import _

log = logging.getLogger("NMAI")

# options of nmai.triage.frames.watch_folder that the CLI passes on, and their flags
CLI_OPTIONS = {"motion_check_mm": "--motion-mm", "rate_tolerance": "--rate-tolerance"}


def format_frame(result: dict) -> str:
    """One line per frame: ``frame 3  REPEAT  frame_0003.npz: message; message``."""
    frame = result.get("frame")
    head = f"frame {'?' if frame is None else frame}"
    alarm = str(result.get("alarm") or "ok").upper()
    messages = "; ".join(f.get("message", f.get("type", "")) for f in result.get("findings") or [])
    name = result.get("file") or ""
    if name and messages.startswith(name):  # the message names the file already
        name = ""
    text = f"{head:<9} {alarm:<6} {name}".rstrip()
    return f"{text}: {messages}" if messages else text


def call_safely(callback: Optional[Callable], result: dict) -> bool:
    """Call ``callback(result)``; False when it asked to stop (returned False). Errors are logged."""
    if callback is None:
        return True
    try:
        return callback(result) is not False
    except Exception:  # the panel's callback must not stop the monitor
        log.exception("NMAI Triage: the monitor callback failed on %s", result.get("file"))
        return True


class FolderWatch:
    """``nmai triage watch`` in a child process. :meth:`start`, then :meth:`poll` regularly; :meth:`stop`."""

    def __init__(self, folder, callback: Optional[Callable[[dict], object]] = None, timeout_s: float = 120.0,
                 expected_frames: Optional[int] = None, python: Optional[str] = None, **options):
        unknown = set(options) - set(CLI_OPTIONS)
        if unknown:
            raise ValueError(f"options not available in a child process: {', '.join(sorted(unknown))}")
        self.folder = os.path.abspath(os.fspath(folder))
        self.callback = callback
        self.args = ["triage", "watch", self.folder, "--timeout", repr(float(timeout_s or 0.0))]
        if expected_frames:
            self.args += ["--expected-frames", str(int(expected_frames))]
        for key, value in options.items():
            self.args += [CLI_OPTIONS[key], repr(float(value))]
        self.python = python
        self.runner = None
        self.results: list[dict] = []
        self.stopped = False

    def start(self) -> "FolderWatch":
        from NMAIExtensionLib.runner import TaskRunner
        from NMAIExtensionLib.task import engine_environment

        self.runner = TaskRunner(self.args, python=self.python, env=engine_environment()).start()
        return self

    def poll(self) -> list[dict]:
        """The frame results that arrived since the last call (each also passed to the callback)."""
        if self.runner is None:
            return []
        new = [e for e in self.runner.poll() if e.get("type") == "frame"]
        for result in new:
            self.results.append(result)
            if not call_safely(self.callback, result):
                self.stop()
        return new

    @property
    def finished(self) -> bool:
        return self.runner is not None and self.runner.returncode is not None

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.returncode is None

    @property
    def error(self) -> Optional[str]:
        """Why the watcher ended early (no scan header, no folder...); None after a normal end or a stop."""
        return None if self.stopped or self.runner is None else self.runner.error

    @property
    def summary(self) -> str:
        """The watcher's closing line (frames and alarms), the error, or ``Stopped.``"""
        if self.stopped:
            return _("Stopped after {n} frame(s).").format(n=len(self.results))
        if self.error:
            return self.error
        result = (self.runner.result if self.runner is not None else None) or {}
        return result.get("message") or _("{n} frame(s) checked.").format(n=len(self.results))

    def stop(self) -> None:
        """Kill the watcher (its whole process tree); what arrived before is kept."""
        if self.runner is None or self.stopped:
            return
        self.stopped = True
        self.poll()  # (cancel drains the event queue: keep the lines that are already there)
        self.runner.cancel()

    def wait(self, timeout: Optional[float] = None) -> list[dict]:
        """Block (polling) until the watcher ends; stop it after ``timeout`` s. Returns every frame result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.stop()
                break
            time.sleep(0.05)
        self.poll()
        return self.results
