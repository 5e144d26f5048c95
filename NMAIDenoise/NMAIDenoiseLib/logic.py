"""NMAI Denoise Logic: PET volume node in, NEW denoised PET node out (same units, geometry and display).

Console::

    from NMAIDenoiseLib import NMAIDenoiseLogic
    out = NMAIDenoiseLogic().process(getNode("PET"), method="gaussian", fwhm_mm=6.0)

Imports neither qt nor the Slicer application: tested with pytest and slicer-core.
"""

from __future__ import annotations

import os
import sys

try:
    import NMAIExtensionLib  # noqa: F401
except ImportError:  # source tree: the shared library lives in the hidden core module's folder
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "NMAIExtension"))

from NMAIExtensionLib.messages import _
from NMAIExtensionLib.mrml import PET_UNITS
from NMAIExtensionLib.outputs import Provenance
from NMAIExtensionLib.parameters import ModuleLogic
from NMAIExtensionLib.task import EngineTask, TaskInput, TaskOutput
from nmai.errors import NMAIError

METHODS = ("gaussian",)
FWHM_RANGE_MM = (0.5, 30.0)


def check_pet_input(volume) -> None:
    """Fail early, in words a physician understands, when the volume is not PET activity or SUV."""
    from nmai.validate import check_pet

    name = volume.metadata.get("source_node", "input")
    if volume.modality not in ("PT", "OT"):
        raise NMAIError(_("'{name}' is a {modality} volume, not PET. Select the PET series.").format(
            name=name, modality=volume.modality))
    if volume.units not in PET_UNITS:
        raise NMAIError(_("'{name}' does not record whether its values are Bq/ml or SUV ({reason}). "
                          "Choose the input units in the panel, or pass units='Bq/ml' or units='SUVbw'.").format(
            name=name, reason=volume.metadata.get("units_unknown_reason", volume.units)))
    check_pet(volume, f"'{name}'")


class NMAIDenoiseLogic(ModuleLogic):
    """Denoise a PET volume node; the output is a NEW node ``<input>_denoised``."""

    def process(self, inputNode, method: str = "gaussian", fwhm_mm: float = 6.0, units: str | None = None,
                wait: bool = True, progress=None):
        """Denoise ``inputNode``.

        :param method: ``"gaussian"`` (the baseline post-filter; learned methods come later).
        :param fwhm_mm: Gaussian full width at half maximum in mm.
        :param units: ``"Bq/ml"``, ``"SUVbw"`` or ``"SUVlbm"`` when the node does not record its units.
        :param wait: True: run here and return the output node. False: run in a child process and return a
            :class:`NMAIExtensionLib.task.TaskHandle` (poll it; ``handle.node`` is the output when done).
        :raises NMAIError: invalid input or engine failure (nothing is created).
        """
        if method not in METHODS:
            raise NMAIError(_("Unknown denoising method '{method}'; available: {methods}.").format(
                method=method, methods=", ".join(METHODS)))
        try:
            fwhm_mm = float(fwhm_mm)
        except (TypeError, ValueError):
            raise NMAIError(_("The FWHM must be a number of millimetres.")) from None
        if not FWHM_RANGE_MM[0] <= fwhm_mm <= FWHM_RANGE_MM[1]:
            raise NMAIError(_("FWHM {fwhm:g} mm is outside {lo:g}-{hi:g} mm.").format(
                fwhm=fwhm_mm, lo=FWHM_RANGE_MM[0], hi=FWHM_RANGE_MM[1]))
        if units is not None and units not in PET_UNITS:
            raise NMAIError(_("Input units must be one of {units}.").format(units=", ".join(PET_UNITS)))
        parameters = {"fwhm_mm": fwhm_mm}
        task = EngineTask(
            "denoise",
            [TaskInput(inputNode, units=units, default_modality="PT", check=check_pet_input, name="PET")],
            [TaskOutput("denoised", "--out")],
            options=["--method", method, "--fwhm", repr(fwhm_mm)],
            provenance=Provenance(task="denoise", method=method, parameters=parameters))
        if not wait:
            return task.start()
        return task.run(progress).nodes["denoised"]
