"""Logic of the NMAI Denoise module (importable without the Slicer application)."""

from .logic import NMAIDenoiseLogic  # noqa: F401
