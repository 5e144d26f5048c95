"""Simulated PET/MR studies as Slicer sample data: every module can be tried in one click, with no download.

A study is made by the engine's simulator (``nmai simulate``) the first time it is asked for, kept in a cache
folder, and loaded as a patient → study in the subject hierarchy: the OSEM reconstruction as PET (Bq/ml, with
its SUV factor), the true activity, CT, μ-map, tissue labels and the Dixon/T1 MR images.

This file imports neither qt nor the Slicer application (tested with slicer-core); ``NMAIExtension.py``
registers the entries with the SampleData module and runs the simulation in a child process with a progress
dialog.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nmai.errors import NMAIError

from . import mrml
from .outputs import _subject_hierarchy, apply_display

# sample name -> simulate options (seeds below 10000: never used to train a shipped model)
STUDIES = {
    "NMAI simulated whole-body PET/MR": {"phantom": "wholebody", "seed": 1, "options": ["--lesions", "4"]},
    "NMAI simulated NEMA IEC phantom": {"phantom": "nema", "seed": 1, "options": []},
    "NMAI simulated brain PET/MR": {"phantom": "brain", "seed": 1, "options": []},
}
# simulation file -> node name suffix
VOLUMES = (("recon", "PET"), ("activity", "PET truth"), ("ct", "CT"), ("mumap", "mu-map"), ("labels", "labels"),
           ("mr_water", "MR water"), ("mr_fat", "MR fat"), ("mr_t1", "MR T1"))


def cache_folder() -> Path:
    """Where simulated studies are kept: Slicer's cache folder when running in Slicer, else the temp folder."""
    try:
        import slicer

        base = slicer.app.cachePath
    except (ImportError, AttributeError):
        base = tempfile.gettempdir()
    return Path(base) / "NMAI-sample-data"


def study_folder(name: str, cache: Path | None = None) -> Path:
    spec = STUDIES[name]
    return (cache or cache_folder()) / f"{spec['phantom']}-seed{spec['seed']}"


def simulate_args(name: str, cache: Path | None = None) -> list[str]:
    """The ``nmai`` arguments that make the study (run by the runner, in-process or as a child)."""
    if name not in STUDIES:
        raise NMAIError(f"unknown NMAI sample '{name}'; available: {', '.join(STUDIES)}")
    spec = STUDIES[name]
    return ["simulate", "--phantom", spec["phantom"], "--seed", str(spec["seed"]), *spec["options"],
            "--out", str(study_folder(name, cache))]


def is_cached(name: str, cache: Path | None = None) -> bool:
    return (study_folder(name, cache) / "simulation.json").is_file()


def make_study(name: str, cache: Path | None = None, progress=None) -> Path:
    """Simulate the study into the cache unless it is already there (in this process)."""
    from .runner import run_in_process

    if not is_cached(name, cache):
        run_in_process(simulate_args(name, cache), progress=progress)
    return study_folder(name, cache)


def load_study(name: str, scene, cache: Path | None = None) -> dict:
    """Load a simulated study (made beforehand) into ``scene`` under its own patient and study.

    Returns {file role: node}. The PET node carries its SUV factor, so every NMAI module and Slicer's own PET
    tools see SUV.
    """
    from nmai.io import read_volume

    folder = study_folder(name, cache)
    if not is_cached(name, cache):
        raise NMAIError(f"{name} has not been simulated yet (expected {folder})")
    sh = _subject_hierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), name)
    study = sh.CreateStudyItem(patient, "simulated PET/MR")
    nodes = {}
    try:
        for role, label in VOLUMES:
            path = folder / f"{role}.nii.gz"
            if not path.exists():  # the NEMA phantom has no MR fat, for example
                continue
            volume = read_volume(path)
            cls = "vtkMRMLLabelMapVolumeNode" if volume.units == "label" else "vtkMRMLScalarVolumeNode"
            node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(f"{STUDIES[name]['phantom']} {label}"))
            nodes[role] = node
            mrml.update_node_from_volume(node, volume)
            apply_display(node, volume)
            node.SetAttribute("NMAI.sampleData", name)
            sh.CreateItem(study, node)
    except BaseException:
        for node in nodes.values():
            scene.RemoveNode(node)
        sh.RemoveItem(patient)
        raise
    return nodes

