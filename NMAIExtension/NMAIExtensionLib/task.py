"""One engine request, the same for every NMAI module.

1. Export: each input node becomes a :class:`nmai.Volume` (:mod:`.mrml`) written to a private temporary
   folder as NIfTI + JSON sidecar (:func:`nmai.io.write_volume`), so the engine sees the units, modality and
   SUV factors the node records. Inputs are validated first, with messages a physician can act on.
2. Run ``nmai <command> <inputs> <options> --out <files>``:
   * ``wait=True`` (console, scripts, tests): in this interpreter through
     :func:`.runner.run_in_process`; blocks; returns when the outputs are loaded.
   * ``wait=False`` (module panels): in a child process through :class:`.runner.TaskRunner`; returns a
     :class:`TaskHandle` at once, which the panel polls from a ``qt.QTimer`` (progress, Cancel).
3. Load: only after success, each output file becomes a NEW node through :mod:`.outputs`.
4. Clean up: the temporary folder is deleted in every case. After a cancel or a failure nothing is left:
   no node, no file.

Example (Slicer Python console)::

    from NMAIExtensionLib.task import EngineTask, TaskInput, TaskOutput
    task = EngineTask("denoise", [TaskInput(getNode("PET"))], [TaskOutput("denoised")],
                      options=["--method", "gaussian", "--fwhm", "6"])
    node = task.run().nodes["denoised"]
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from nmai.errors import CancelledError, NMAIError
from nmai.volume import Volume

from . import engine_path, mrml, outputs
from .messages import CANCELLED, _, user_message
from .outputs import Provenance

log = logging.getLogger("NMAI")

# the file format of the temporary exchange files: uncompressed NIfTI is fast to write and read
EXCHANGE_SUFFIX = ".nii"


@dataclass
class TaskInput:
    """An input node and how it is passed to the engine."""
    node: Any
    flag: Optional[str] = None  # CLI option naming the file ("--ct"); None: positional argument
    units: Optional[str] = None  # units the user declared (a contradiction with the node is an error)
    default_units: Optional[str] = None  # assumed when nothing is recorded (with a warning)
    default_modality: Optional[str] = None
    check: Optional[Callable[[Volume], None]] = None  # early validation; raises NMAIError
    name: str = "input"


@dataclass
class TaskOutput:
    """An output file of the engine and the node made from it."""
    key: str  # key in the engine result's "outputs" dict ("denoised", "mumap")
    flag: str = "--out"  # CLI option naming the output file
    suffix: str = ""  # node name suffix: <input>_<suffix> (default: key)
    reference: int = 0  # index of the input that gives the name, geometry, study and transform


def temporary_root() -> Optional[str]:
    """Slicer's temporary folder inside the application, else the system default."""
    try:
        import slicer

        path = slicer.app.temporaryPath
        return path if path and os.path.isdir(path) else None
    except Exception:
        return None


def engine_environment() -> dict:
    """Environment for the child process: ``nmai`` importable from the extension folder."""
    env = dict(os.environ)
    paths = [engine_path()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class EngineTask:
    """``nmai <command>`` on MRML nodes. Build it, then :meth:`run` (blocking) or :meth:`start`."""

    def __init__(self, command: str, inputs: Sequence[TaskInput], outputs: Sequence[TaskOutput] = (),
                 options: Sequence[Any] = (), *, provenance: Optional[Provenance] = None,
                 python: Optional[str] = None):
        if not inputs:
            raise ValueError("an engine task needs at least one input")
        self.command = command
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.options = [str(o) for o in options]
        self.provenance = provenance or Provenance(task=command)
        self.python = python
        self.folder: Optional[str] = None
        self.volumes: list[Volume] = []

    # ------------------------------------------------------------------ steps
    def prepare(self) -> list[str]:
        """Validate and export the inputs into a new temporary folder; return the engine arguments."""
        volumes = []
        for spec in self.inputs:
            volume = mrml.volume_from_node(spec.node, units=spec.units, default_units=spec.default_units,
                                           default_modality=spec.default_modality)
            if spec.check is not None:
                spec.check(volume)
            volumes.append(volume)
        self.volumes = volumes
        self.folder = tempfile.mkdtemp(prefix=f"NMAI-{self.command}-", dir=temporary_root())
        try:
            from nmai.io import write_volume

            args = [self.command]
            for i, (spec, volume) in enumerate(zip(self.inputs, volumes)):
                path = write_volume(volume, os.path.join(self.folder, f"input{i}{EXCHANGE_SUFFIX}"))
                args += [str(path)] if spec.flag is None else [spec.flag, str(path)]
            args += self.options
            for out in self.outputs:
                args += [out.flag, self.output_path(out)]
            return args
        except BaseException:
            self.cleanup()
            raise

    def output_path(self, out: TaskOutput) -> str:
        return os.path.join(self.folder, f"output_{out.key}{EXCHANGE_SUFFIX}")

    def load_outputs(self, result: dict) -> dict[str, Any]:
        """NEW nodes for the engine's outputs; all or nothing."""
        from nmai.io import read_volume

        provenance = self._provenance(result)
        reported = (result or {}).get("outputs") or {}
        created: dict[str, Any] = {}
        try:
            for out in self.outputs:
                path = reported.get(out.key) or self.output_path(out)
                if not os.path.isfile(path):
                    raise NMAIError(f"the engine reported success but wrote no '{out.key}' output")
                volume = read_volume(path)
                reference = self.inputs[out.reference].node
                created[out.key] = outputs.create_volume_node(volume, reference=reference,
                                                              task=out.suffix or out.key, provenance=provenance)
        except BaseException:
            outputs.remove_nodes(list(created.values()))
            raise
        return created

    def _provenance(self, result: dict) -> Provenance:
        result = result or {}
        base = self.provenance
        model = result.get("model", base.model)
        model_sha = result.get("model_sha256", base.model_sha256)
        if isinstance(model, dict):
            model_sha = model.get("sha256", model_sha)
            model = model.get("name") or model.get("id") or ""
        return Provenance(task=base.task, method=str(result.get("method", base.method) or ""),
                          engine_version=str(result.get("engine_version", base.engine_version) or ""),
                          model=str(model or ""), model_sha256=str(model_sha or ""),
                          parameters=dict(result.get("parameters") or base.parameters))

    def cleanup(self) -> None:
        """Delete the temporary folder (inputs, partial outputs), whatever happened."""
        if self.folder and os.path.isdir(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    # ------------------------------------------------------------------ running
    def run(self, progress: Optional[Callable[[float, str], None]] = None) -> "TaskHandle":
        """Run in this interpreter and block (no dialogs). Returns a finished handle; raises NMAIError."""
        from .runner import run_in_process

        started = time.monotonic()
        args = self.prepare()
        try:
            result = run_in_process(args, progress=progress)
            nodes = self.load_outputs(result)
        finally:
            self.cleanup()
        return TaskHandle.finished_with(self, result, nodes, started)

    def start(self) -> "TaskHandle":
        """Start in a child process; return at once with a handle to poll (from a QTimer) or cancel."""
        from .runner import TaskRunner

        args = self.prepare()
        try:
            runner = TaskRunner(args, python=self.python, env=engine_environment()).start()
        except BaseException as exc:
            self.cleanup()
            if isinstance(exc, OSError):
                raise NMAIError(f"could not start the NMAI engine: {exc}") from None
            raise
        return TaskHandle(self, runner)


class TaskHandle:
    """A started task. Call :meth:`poll` regularly (it loads the outputs when the engine has finished)."""

    def __init__(self, task: EngineTask, runner=None):
        self.task = task
        self.runner = runner
        self.nodes: dict[str, Any] = {}
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.cancelled = False
        self._cancel_requested = False
        self._done = runner is None
        self._started = time.monotonic()
        self._ended: Optional[float] = self._started if runner is None else None

    @classmethod
    def finished_with(cls, task: EngineTask, result: dict, nodes: dict,
                      started: Optional[float] = None) -> "TaskHandle":
        handle = cls(task, None)
        handle.result, handle.nodes = result, nodes
        if started is not None:
            handle._started = started
        return handle

    # ------------------------------------------------------------------ state
    @property
    def finished(self) -> bool:
        return self.poll()

    @property
    def succeeded(self) -> bool:
        return self._done and self.error is None and not self.cancelled

    @property
    def fraction(self) -> float:
        if self._done:
            return 1.0 if self.succeeded else 0.0
        return float(self.runner.fraction) if self.runner is not None else 0.0

    @property
    def message(self) -> str:
        if self._done:
            return _(CANCELLED) if self.cancelled else (self.error or _("Done."))
        return (self.runner.message if self.runner is not None else "") or _("Starting the NMAI engine...")

    @property
    def elapsed_s(self) -> float:
        return (self._ended or time.monotonic()) - self._started

    @property
    def node(self):
        """The first output node (most tasks have one), or None."""
        return next(iter(self.nodes.values()), None)

    # ------------------------------------------------------------------ actions
    def poll(self) -> bool:
        """Update progress; when the engine has ended, load outputs (success) and clean up. True when done."""
        if self._done:
            return True
        runner = self.runner
        if not runner.finished:  # (polls the runner)
            return False
        try:
            if self._cancel_requested or getattr(runner, "cancelled", False):
                self.cancelled, self.error = True, _(CANCELLED)
            elif runner.error is not None:
                self.error = runner.error
            else:
                self.result = runner.result or {}
                self.nodes = self.task.load_outputs(self.result)
        except BaseException as exc:  # never leave the panel spinning
            self.error = user_message(exc)
        finally:
            self.task.cleanup()
            self._done = True
            self._ended = time.monotonic()
        return True

    def cancel(self) -> None:
        """Kill the engine (whole process tree) and clean up; nothing is created."""
        if self._done:
            return
        self._cancel_requested = True
        self.runner.cancel()
        self.poll()
        self.cancelled, self.error = True, _(CANCELLED)
        self.nodes = {}
        self.task.cleanup()
        if not self._done:
            self._done, self._ended = True, time.monotonic()

    def wait(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """Block until done; return the output nodes or raise NMAIError (CancelledError when cancelled)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise NMAIError(f"the task did not finish within {timeout:g} s and was cancelled")
            time.sleep(0.05)
        if self.cancelled:
            raise CancelledError(CANCELLED)
        if self.error is not None:
            raise NMAIError(self.error)
        return self.nodes
