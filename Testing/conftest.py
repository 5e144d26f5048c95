"""Shared pytest setup: import paths for the extension's Python packages, and a fresh MRML scene.

The MRML fixtures need ``slicer-core`` (``pip install slicer-core``); tests that use them are skipped with
a clear reason where it is missing. ``slicer`` is imported lazily so engine-only tests never load it.
"""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("NMAIExtension", "NMAIDenoise", "NMAIAttenuation", "NMAITriage", "Testing"):
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture
def scene():
    """A fresh, empty vtkMRMLScene installed as ``slicer.mrmlScene`` (restored afterwards)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)")
    previous = getattr(slicer, "mrmlScene", None)
    new = slicer.vtkMRMLScene()
    slicer.mrmlScene = new
    yield new
    new.Clear(1)
    slicer.mrmlScene = previous


@pytest.fixture
def study(scene):
    """``(scene, sh, study_item)``: a patient with one study in the subject hierarchy."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study_item = sh.CreateStudyItem(patient, "PET/CT 2026-01-01")
    return scene, sh, study_item
