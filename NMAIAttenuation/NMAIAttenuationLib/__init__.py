"""Logic of the NMAI Attenuation module (importable without the Slicer application)."""

from .logic import NMAIAttenuationLogic  # noqa: F401
