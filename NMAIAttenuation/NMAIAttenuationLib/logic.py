"""NMAI Attenuation Logic: CT volume node in, NEW μ-map node out (linear attenuation at 511 keV, cm⁻¹).

Console::

    from NMAIAttenuationLib import NMAIAttenuationLogic
    mu = NMAIAttenuationLogic().process(ctNode=getNode("CT"), kvp=120)

Method ``ct``: bilinear CT-number -> μ conversion (Carney et al. 2006) on the CT's own grid. The MR -> μ-map
network comes later; it is not offered until it exists.

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
from NMAIExtensionLib.outputs import Provenance
from NMAIExtensionLib.parameters import ModuleLogic
from NMAIExtensionLib.task import EngineTask, TaskInput, TaskOutput
from nmai.errors import NMAIError
from nmai.mu import CARNEY

METHODS = ("ct",)
KVP_CHOICES = tuple(sorted(CARNEY))


def check_ct_input(volume) -> None:
    """Fail early when the volume is not a CT in Hounsfield units."""
    from nmai.validate import check_volume

    name = volume.metadata.get("source_node", "input")
    if volume.modality not in ("CT", "OT") or volume.units != "HU":
        raise NMAIError(_("'{name}' is a {modality} volume in {units}, not a CT in Hounsfield units. "
                          "Select the CT series.").format(name=name, modality=volume.modality,
                                                          units=volume.units))
    check_volume(volume, f"'{name}'")


class NMAIAttenuationLogic(ModuleLogic):
    """Make a PET attenuation map; the output is a NEW node ``<ct>_mumap`` in cm⁻¹."""

    def process(self, ctNode=None, kvp: int = 120, method: str = "ct", wait: bool = True, progress=None):
        """CT -> μ-map at 511 keV.

        :param ctNode: CT volume node in HU (a CT without recorded units is assumed to be in HU).
        :param kvp: CT tube voltage; one of 80, 100, 110, 120, 130, 140.
        :param wait: True: run here and return the μ-map node. False: return a
            :class:`NMAIExtensionLib.task.TaskHandle` running in a child process.
        :raises NMAIError: invalid input or engine failure (nothing is created).
        """
        if method not in METHODS:
            raise NMAIError(_("Unknown attenuation method '{method}'; available: {methods}.").format(
                method=method, methods=", ".join(METHODS)))
        try:
            kvp = int(kvp)
        except (TypeError, ValueError):
            raise NMAIError(_("The tube voltage must be a whole number of kVp.")) from None
        if kvp not in CARNEY:
            raise NMAIError(_("No CT-to-μ coefficients for {kvp} kVp; choose one of {choices}.").format(
                kvp=kvp, choices=", ".join(map(str, KVP_CHOICES))))
        parameters = {"kvp": kvp}
        task = EngineTask(
            "attenuation",
            [TaskInput(ctNode, flag="--ct", default_units="HU", default_modality="CT", check=check_ct_input,
                       name="CT")],
            [TaskOutput("mumap", "--out")],
            options=["--kvp", str(kvp)],
            provenance=Provenance(task="attenuation", method=method, parameters=parameters))
        if not wait:
            return task.start()
        return task.run(progress).nodes["mumap"]
