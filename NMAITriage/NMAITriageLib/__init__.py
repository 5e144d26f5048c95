"""Logic of the NMAI Triage module (importable without the Slicer application)."""

from .logic import NMAITriageLogic  # noqa: F401
