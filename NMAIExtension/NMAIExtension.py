"""NMAI core (hidden module): the engine on ``sys.path`` and the Python dependencies.

* The ``nmai`` engine ships inside the extension, in this module's folder (beside ``NMAIExtensionLib``).
  Loading this module makes sure it is importable; the NMAI modules also declare it as a dependency.
* Dependencies are checked and installed only when a task needs them (on Apply), never at start-up:
  - torch only through the PyTorch extension's ``PyTorchUtils`` (the right CPU/CUDA build for the machine);
  - the other requirements through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12), else
    ``slicer.util.pip_install`` after a confirmation. Slicer's own numpy, SimpleITK and requests (and torch)
    are never replaced: they are pinned in a constraints file and MONAI is installed without dependencies.
* Sample data: simulated PET/MR studies (whole body, NEMA IEC, brain) appear in the Sample Data module under
  "NMAI". Nothing is downloaded: the first click runs the engine's simulator in a child process (about 20 s,
  with a progress dialog and Cancel) into Slicer's cache folder; later clicks load the cached study.
"""

import importlib.util
import logging
import os
import sys
import tempfile

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleWidget,
)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

# Requirements of the engine beyond what Slicer bundles. Slicer bundles numpy, SimpleITK and pydicom (used
# for DICOM headers): NMAI uses those as they are and never upgrades them. torch is handled by PyTorchUtils.
BASE_REQUIREMENTS = ["scipy>=1.10"]
DEEP_LEARNING_REQUIREMENTS = ["monai>=1.4", "safetensors>=0.4"]
TORCH_REQUIREMENT = ">=2.2"
# packages pip must never replace inside Slicer (pinned by a constraints file, skipped as dependencies)
PROTECTED_PACKAGES = ["numpy", "SimpleITK", "pydicom", "requests", "torch"]


class NMAIExtension(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NMAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = []
        self.parent.contributors = ["NMAI contributors"]
        self.parent.helpText = _(
            "Core of the NMAI extension (hidden): ships the nmai engine and installs its Python "
            "dependencies when a module first needs them.")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")
        self.parent.hidden = True
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the simulated studies to the Sample Data module (nothing is simulated until one is clicked)."""
    try:
        import SampleData
    except ImportError:
        return
    from NMAIExtensionLib.sampledata import STUDIES

    icon = os.path.join(_HERE, "Resources", "Icons", "NMAIExtension.png")
    for name in STUDIES:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="NMAI", sampleName=name, uris=[], fileNames=[], nodeNames=[], thumbnailFileName=icon,
            customDownloader=lambda source, n=name: loadSimulatedStudy(n))


def loadSimulatedStudy(name):
    """Simulate (first time, in a child process with a progress dialog) and load one NMAI sample study."""
    import qt

    from NMAIExtensionLib import sampledata
    from NMAIExtensionLib.messages import user_message
    from NMAIExtensionLib.runner import TaskRunner

    try:
        if not sampledata.is_cached(name):
            if not NMAIExtensionLogic().ensureDependencies(requester=_("NMAI sample data")):
                return None
            runner = TaskRunner(sampledata.simulate_args(name)).start()
            dialog = slicer.util.createProgressDialog(labelText=_("Simulating {name}…").format(name=name),
                                                      maximum=100, windowTitle=_("NMAI sample data"))
            try:
                while not runner.finished:
                    dialog.setValue(int(100 * runner.fraction))
                    dialog.setLabelText(runner.message or _("Simulating {name}…").format(name=name))
                    slicer.app.processEvents(qt.QEventLoop.AllEvents, 100)
                    if dialog.wasCanceled:
                        runner.cancel()
                        return None
            finally:
                dialog.close()
            runner.wait()
        nodes = sampledata.load_study(name, slicer.mrmlScene)
    except Exception as exc:
        slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI sample data"))
        return None
    pet = nodes.get("recon")
    if pet is not None:
        slicer.util.setSliceViewerLayers(background=nodes.get("ct") or nodes.get("mr_water"), foreground=pet,
                                         foregroundOpacity=0.5, fit=True)
    return list(nodes.values())


class NMAIExtensionWidget(ScriptedLoadableModuleWidget):
    """Hidden module: no panel of its own (the developer section only, in developer mode)."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)


class NMAIExtensionLogic(ScriptedLoadableModuleLogic):
    """Engine location and dependency management (no GUI of its own)."""

    @staticmethod
    def enginePath() -> str:
        return _HERE

    @staticmethod
    def missingRequirements(requirements) -> list:
        """The requirement strings not satisfied in Slicer's Python (pure check, nothing installed)."""
        from importlib import metadata

        from packaging.requirements import Requirement

        missing = []
        for text in requirements:
            req = Requirement(text)
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                missing.append(text)
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                missing.append(text)
        return missing

    @staticmethod
    def torchInstalled() -> bool:
        return importlib.util.find_spec("torch") is not None

    def ensureTorch(self) -> bool:
        """Install torch through the PyTorch extension if missing. False if the user declines or cannot."""
        if self.torchInstalled():
            return True
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("NMAI needs the PyTorch extension. Install 'PyTorch' from the "
                                       "Extensions Manager, restart Slicer, and try again."))
            return False
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        return torch is not None

    def _constraintsFile(self) -> str:
        """A pip constraints file pinning the installed versions of the protected packages."""
        from importlib import metadata

        lines = []
        for name in PROTECTED_PACKAGES:
            try:
                lines.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pass
        handle, path = tempfile.mkstemp(prefix="NMAI-constraints-", suffix=".txt")
        with os.fdopen(handle, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def ensureDependencies(self, deepLearning: bool = False, requester: str = "NMAI") -> bool:
        """Make sure the engine's requirements are installed (asking first). True when ready.

        :param deepLearning: also torch (via PyTorchUtils), MONAI and safetensors (learned methods).
        """
        requirements = list(BASE_REQUIREMENTS)
        if deepLearning:
            if not self.ensureTorch():
                return False
            requirements += DEEP_LEARNING_REQUIREMENTS
        missing = self.missingRequirements(requirements)
        if not missing:
            return True
        constraints = self._constraintsFile()
        try:
            return self._install(missing, constraints, requester)
        finally:
            os.remove(constraints)

    def _install(self, missing, constraints, requester) -> bool:
        try:
            import slicer.packaging as slicerPackaging
        except ImportError:
            slicerPackaging = None
        if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):
            from packaging.requirements import Requirement

            try:
                slicerPackaging.pip_ensure([Requirement(r) for r in missing], constraints=constraints,
                                           skip_packages=PROTECTED_PACKAGES, requester=requester)
            except RuntimeError as exc:  # the user declined
                logging.info("NMAI: dependencies not installed: %s", exc)
                return False
            return not self.missingRequirements(missing)
        # Slicer < 5.12: confirm, then pip with the constraints (MONAI without its torch/numpy dependencies)
        if not slicer.util.confirmOkCancelDisplay(
                _("{requester} needs these Python packages, which will be downloaded and installed:\n\n"
                  "{packages}\n\nThis may take a few minutes.").format(requester=requester,
                                                                       packages="\n".join(missing)),
                windowTitle=_("NMAI: install Python packages")):
            return False
        from packaging.requirements import Requirement

        with slicer.util.WaitCursor():
            for requirement in missing:
                args = [requirement, "-c", constraints]
                if Requirement(requirement).name.lower() == "monai":
                    args.append("--no-deps")
                slicer.util.pip_install(args)
        return not self.missingRequirements(missing)
