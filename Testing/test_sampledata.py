"""Simulated sample studies: made by the engine, loaded as a patient/study with PET units and SUV."""

import numpy as np
import pytest

from NMAIExtensionLib import sampledata
from NMAIExtensionLib.mrml import ijk_to_ras, volume_from_node
from nmai.io import read_volume


def test_simulate_args_name_a_cache_folder_and_unknown_names_fail(tmp_path):
    args = sampledata.simulate_args("NMAI simulated NEMA IEC phantom", tmp_path)
    assert args[:3] == ["simulate", "--phantom", "nema"] and args[-1] == str(tmp_path / "nema-seed1")
    with pytest.raises(Exception, match="unknown NMAI sample"):
        sampledata.simulate_args("no such study", tmp_path)


def test_nema_study_is_simulated_once_and_loaded_under_its_own_study(scene, tmp_path):
    import slicer

    name = "NMAI simulated NEMA IEC phantom"
    with pytest.raises(Exception, match="has not been simulated"):
        sampledata.load_study(name, scene, tmp_path)
    folder = sampledata.make_study(name, tmp_path)
    stamp = (folder / "simulation.json").stat().st_mtime_ns
    assert sampledata.make_study(name, tmp_path) == folder  # cached: not simulated again
    assert (folder / "simulation.json").stat().st_mtime_ns == stamp
    nodes = sampledata.load_study(name, scene, tmp_path)
    pet, truth = nodes["recon"], read_volume(folder / "recon.nii.gz")
    assert pet.GetAttribute("NMAI.units") == "Bq/ml"
    assert float(pet.GetAttribute("NMAI.suv_bw_factor")) == pytest.approx(truth.suv_factor("bw"))
    np.testing.assert_allclose(ijk_to_ras(pet), truth.index_to_ras(), atol=1e-4)
    back = volume_from_node(pet)
    np.testing.assert_allclose(back.array, truth.array, rtol=1e-6)
    assert nodes["labels"].IsA("vtkMRMLLabelMapVolumeNode")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study_items = {sh.GetItemParent(sh.GetItemByDataNode(n)) for n in nodes.values()}
    assert len(study_items) == 1 and sh.GetItemLevel(study_items.pop()) == "Study"
