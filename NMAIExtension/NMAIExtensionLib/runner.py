"""Run an engine task, either as a child process (GUI) or in-process (console, batch scripts).

GUI path: :class:`TaskRunner` starts ``python -m nmai --jsonl <args>`` in its own process group, reads
the JSON-lines protocol of :mod:`nmai.progress` from the child's stdout on a background thread, and
exposes the latest fraction/message for a QTimer to show. :meth:`TaskRunner.cancel` kills the whole
process tree (the engine may start workers). Slicer stays responsive because nothing heavy runs in its
interpreter.

Console/batch path: :func:`run_in_process` calls the same CLI entry point in this interpreter, so a
headless run and a click in the GUI produce the same numbers.

This file imports neither slicer nor qt, so it is tested with plain pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from nmai.errors import CancelledError, NMAIError


def default_python() -> str:
    """The interpreter that runs the engine: Slicer's PythonSlicer inside Slicer, else this one."""
    return shutil.which("PythonSlicer") or sys.executable


class TaskRunner:
    """A running ``nmai`` subcommand in a child process."""

    def __init__(self, args: list[str], python: Optional[str] = None, env: Optional[dict] = None):
        self.args = [str(a) for a in args]
        self.python = python or default_python()
        self.env = env
        self.fraction = 0.0
        self.message = ""
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.cancelled = False
        self.returncode: Optional[int] = None
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._stderr: list[str] = []
        self._proc: Optional[subprocess.Popen] = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "TaskRunner":
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        kwargs = {}
        if os.name == "nt":  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the whole tree
        self._proc = subprocess.Popen(
            [self.python, "-m", "nmai", "--jsonl", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, bufsize=1, env=env, **kwargs)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"type": "log", "message": line}
            if not isinstance(event, dict):
                event = {"type": "log", "message": line}
            with self._lock:
                kind = event.get("type")
                if kind == "progress":
                    self.fraction = float(event.get("fraction", self.fraction))
                    self.message = str(event.get("message", ""))
                elif kind == "result":
                    self.result = event.get("result") or {}
                    self.fraction = 1.0
                elif kind == "error":
                    self.error = str(event.get("message", "unknown error"))
                self._events.append(event)

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            with self._lock:
                self._stderr.append(line.rstrip("\n"))
                del self._stderr[:-200]  # keep the tail only

    def poll(self) -> list[dict]:
        """New events since the last call (non-blocking)."""
        with self._lock:
            events, self._events = self._events, []
        if self._proc is not None and self.returncode is None and self._proc.poll() is not None:
            for t in self._threads:
                t.join(timeout=1.0)
            with self._lock:
                events += self._events
                self._events = []
            self.returncode = self._proc.returncode
            if self.result is None and self.error is None and not self.cancelled:
                tail = "\n".join(self._stderr[-5:]).strip()
                self.error = (f"the engine stopped unexpectedly (exit code {self.returncode})"
                              + (f": {tail.splitlines()[-1]}" if tail else ""))
        return events

    @property
    def finished(self) -> bool:
        self.poll()
        return self.returncode is not None

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self._stderr)

    def cancel(self, grace: float = 1.0) -> None:
        """Stop the child and everything it started: SIGTERM to the group, SIGKILL after ``grace`` s."""
        self.cancelled = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.poll()
            return
        _signal_tree(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_tree(proc, signal.SIGKILL)
            proc.wait(timeout=5)
        _signal_tree(proc, signal.SIGKILL)  # stragglers that ignored SIGTERM in the group
        self.poll()

    def wait(self, timeout: Optional[float] = None, on_progress: Optional[Callable] = None) -> dict:
        """Block until the task ends; return its result or raise NMAIError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if on_progress:
                on_progress(self.fraction, self.message)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise NMAIError(f"task did not finish within {timeout} s and was cancelled")
            time.sleep(0.05)
        if self.cancelled:
            raise CancelledError("cancelled by the user; nothing was written")
        if self.error is not None:
            raise NMAIError(self.error)
        return self.result


def _signal_tree(proc: subprocess.Popen, sig) -> None:
    if os.name == "nt":  # pragma: no cover - Windows: taskkill /T kills the tree
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True)
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_process(args: list[str], progress=None) -> dict:
    """Run ``nmai <args>`` in this interpreter with no dialogs; return the result or raise NMAIError."""
    from nmai.cli import build_parser
    from nmai.progress import as_progress

    try:
        parsed = build_parser().parse_args([str(a) for a in args])
    except SystemExit:  # argparse already printed the reason to stderr
        raise NMAIError(f"invalid engine arguments: {' '.join(map(str, args))}") from None
    if not getattr(parsed, "func", None):
        raise NMAIError(f"unknown engine task: {' '.join(map(str, args))}")
    return parsed.func(parsed, as_progress(progress)) or {}
