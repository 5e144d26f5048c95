"""Panel helper shared by the NMAI modules: follow a running task without blocking Slicer.

:class:`TaskMonitor` polls a :class:`.task.TaskHandle` from a ``qt.QTimer``: it shows the engine's real
progress and message in a progress bar, enables Cancel while the task runs (Cancel kills the engine's
whole process tree), disables the widgets that would start another run, and at the end either calls
``onSuccess(handle)`` or shows the error in a message box. The GUI thread only polls; the work happens in
the child process.

Imports qt: Slicer application only (never imported by the Logic classes or by pytest).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import qt
import slicer

from .messages import _


class TaskMonitor:
    def __init__(self, progressBar, cancelButton, busyWidgets: Sequence = (), statusLabel=None,
                 title: str = "NMAI", intervalMs: int = 200):
        self.progressBar = progressBar
        self.cancelButton = cancelButton
        self.busyWidgets = list(busyWidgets)
        self.statusLabel = statusLabel
        self.title = title
        self.handle = None
        self._onSuccess: Optional[Callable] = None
        self._onFinished: Optional[Callable] = None
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.connect("timeout()", self._tick)
        self.cancelButton.connect("clicked(bool)", self.cancel)
        self.cancelButton.enabled = False
        self.progressBar.setRange(0, 100)
        self.progressBar.setValue(0)
        self.progressBar.visible = False

    @property
    def running(self) -> bool:
        return self.handle is not None

    def start(self, handle, onSuccess: Optional[Callable] = None, onFinished: Optional[Callable] = None) -> None:
        """Follow ``handle`` until it ends. ``onSuccess(handle)`` runs after a successful end only;
        ``onFinished(handle)`` after any end (success, failure or cancel)."""
        self.handle = handle
        self._onSuccess, self._onFinished = onSuccess, onFinished
        for widget in self.busyWidgets:
            widget.enabled = False
        self.cancelButton.enabled = True
        self.progressBar.visible = True
        self._show(0.0, _("Starting the NMAI engine..."))
        self.timer.start()

    def cancel(self, *args) -> None:
        if self.handle is None:
            return
        self.cancelButton.enabled = False
        self._show(self.handle.fraction, _("Cancelling..."))
        slicer.app.processEvents()
        self.handle.cancel()
        self._tick()

    def _show(self, fraction: float, message: str) -> None:
        self.progressBar.setValue(int(round(100 * max(0.0, min(1.0, fraction)))))
        self.progressBar.setFormat((message or "").replace("%", "%%") + "  %p%")
        if self.statusLabel is not None:
            self.statusLabel.text = message or ""

    def _tick(self) -> None:
        handle = self.handle
        if handle is None:
            self.timer.stop()
            return
        if not handle.poll():
            self._show(handle.fraction, handle.message)
            return
        self.timer.stop()
        self.handle = None
        self.cancelButton.enabled = False
        self.progressBar.visible = False
        for widget in self.busyWidgets:
            widget.enabled = True
        if handle.cancelled:
            self._show(0.0, handle.message)
        elif handle.error is not None:
            self._show(0.0, _("Failed: {error}").format(error=handle.error))
            slicer.util.errorDisplay(handle.error, windowTitle=self.title)
        else:
            names = ", ".join(node.GetName() for node in handle.nodes.values())
            self._show(1.0, _("Done in {seconds:.1f} s.").format(seconds=handle.elapsed_s)
                       + (" " + _("Created {names}.").format(names=names) if names else ""))
            if self._onSuccess is not None:
                self._onSuccess(handle)
        if self._onFinished is not None:
            self._onFinished(handle)


class ParameterNodeWidgetMixin:
    """The parameter-node life cycle every NMAI panel shares (Slicer's scripted-module template).

    A panel sets ``parameterNodeClass`` (its ``@parameterNodeWrapper`` class), has ``self.logic``,
    ``self.monitor`` (a :class:`TaskMonitor`), ``self.ui`` and ``_checkCanApply``, and may override
    ``setDefaultParameters(parameterNode)`` to pre-select inputs.
    """

    parameterNodeClass = None
    _parameterNode = None
    _parameterNodeGuiTag = None

    def _cancelRunning(self) -> None:
        if self.monitor is not None and self.monitor.running:
            self.monitor.cancel()

    def cleanup(self) -> None:
        self._cancelRunning()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRunning()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.parameterNodeClass(self.logic.getParameterNode()))
        self.setDefaultParameters(self._parameterNode)

    def setDefaultParameters(self, parameterNode) -> None:
        """Fill ``inputVolume`` with the first scalar volume when empty (override for other inputs)."""
        if not parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
