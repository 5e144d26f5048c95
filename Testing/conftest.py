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


@pytest.fixture(scope="session")
def quick_denoise_models(tmp_path_factory):
    """{"cnn", "gan", "sr"}: model folders trained once per test session with the quick preset (a few steps:
    they prove the code, not the quality)."""
    import torch

    from nmai.denoise.training import train_denoise

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two threads wait on each other
    root = tmp_path_factory.mktemp("quick-denoise-models")
    out = {}
    for method in ("cnn", "gan", "sr"):
        out[method] = str(train_denoise(method, root, preset="quick", init=out.get("cnn") if method == "gan" else None,
                                        cache_dir=root / "cache")["folder"])
    torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def quick_triage_models(tmp_path_factory):
    """{"artifacts", "lesions"}: triage model folders trained once per session with the quick preset."""
    import torch

    from nmai.triage.training import train_triage

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("quick-triage-models")
    out = {m: str(train_triage(m, root, preset="quick", cache_dir=root / "cache")["folder"])
           for m in ("artifacts", "lesions")}
    torch.set_num_threads(before)
    return out
