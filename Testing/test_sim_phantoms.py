"""Procedural phantoms of the PET/MR simulator: anatomy, tissue values, units, reproducibility."""

import math

import numpy as np
import pytest

from nmai.errors import NMAIError
from nmai.mu import hu_to_mu
from nmai.sim import make_phantom
from nmai.sim.nema import SPHERE_DIAMETERS_MM
from nmai.sim.tissues import L


@pytest.fixture(scope="module")
def wholebody():
    return make_phantom("wholebody", seed=4, supersample=1, lesions=4, lesion_sites=["liver", "bone", "node"])


def test_wholebody_has_the_anatomy(wholebody):
    names = set(wholebody.label_table)
    for organ in ("lung", "fat_subcutaneous", "fat_visceral", "muscle", "bone_cortical", "bone_trabecular",
                  "brain_grey_matter", "brain_white_matter", "liver", "spleen", "kidney", "bladder",
                  "myocardium", "blood_pool", "csf"):
        assert organ in names, organ
    assert len(wholebody.info["lesions"]) == 4
    vols = wholebody.volumes
    for key in ("activity", "mumap", "ct", "labels", "mr_water", "mr_fat", "mr_in_phase", "mr_opposed_phase", "mr_t1"):
        assert vols[key].same_grid(vols["activity"])
    assert vols["activity"].spacing == (4.0, 4.0, 4.0)
    assert (vols["activity"].units, vols["activity"].modality) == ("Bq/ml", "PT")
    assert (vols["mumap"].units, vols["ct"].units, vols["labels"].units) == ("cm-1", "HU", "label")
    assert vols["labels"].modality == "SEG" and vols["mr_t1"].modality == "MR"
    # head to upper thighs: 0.85-1.1 m of body
    nz = vols["activity"].shape[0]
    assert 850 <= nz * 4.0 <= 1150


def test_bone_is_realistic_for_attenuation(wholebody):
    lab, mu, ct = wholebody.labels.array, wholebody.mumap.array, wholebody.volumes["ct"].array
    cort = lab == L("bone_cortical")
    # cortical bone: μ at 511 keV 0.13-0.17 cm-1, 700-1500 HU, and enough of it (skull, spine, pelvis)
    assert 0.13 <= mu[cort].mean() <= 0.17
    assert 700 <= ct[cort].mean() <= 1500
    assert cort.sum() * 0.064 > 400.0                     # ml of voxels that are mostly cortical bone
    head = np.arange(lab.shape[0]) >= lab.shape[0] - 50   # top 200 mm
    assert cort[head].sum() * 0.064 > 100.0                # skull
    props = wholebody.info["tissue_properties"]
    assert hu_to_mu(props["bone_cortical"]["hu"]) == pytest.approx(0.13 + 0.02, abs=0.021)
    assert props["lung"]["hu"] < -700 and props["fat_subcutaneous"]["hu"] < -70


def test_activity_is_suv_times_dose_over_weight(wholebody):
    info = wholebody.info
    assert info["dose_at_scan_start_bq"] == pytest.approx(info["injected_dose_bq"] * 2 ** (-3600 / 6586.2), rel=1e-6)
    assert info["suv_bw_factor"] == pytest.approx(info["weight_kg"] * 1000 / info["dose_at_scan_start_bq"])
    truth = wholebody.truth_means()
    suv = {k: v["mean_bq_ml"] * info["suv_bw_factor"] for k, v in truth.items()}
    assert 1.8 <= suv["liver"] <= 3.0
    assert 1.2 <= suv["blood_pool"] <= 2.1
    assert 5.0 <= suv["brain_grey_matter"] <= 12.0
    assert 2.0 <= suv["brain_grey_matter"] / suv["brain_white_matter"] <= 4.5
    assert suv["lung"] < 1.0 and suv["fat_subcutaneous"] < 0.6


def test_mr_bone_and_air_are_dark(wholebody):
    lab, t1 = wholebody.labels.array, wholebody.volumes["mr_t1"].array
    fat = t1[lab == L("fat_subcutaneous")].mean()
    assert t1[lab == L("bone_cortical")].mean() < 0.35 * fat
    assert t1[lab == 0].mean() < 0.1 * fat
    water, fatimg = wholebody.volumes["mr_water"].array, wholebody.volumes["mr_fat"].array
    assert fatimg[lab == L("fat_subcutaneous")].mean() > 3 * water[lab == L("fat_subcutaneous")].mean()
    assert water[lab == L("liver")].mean() > 3 * fatimg[lab == L("liver")].mean()


def test_same_seed_same_phantom_other_seed_other_anatomy():
    a = make_phantom("brain", seed=2, voxel_mm=6.0, supersample=1)
    b = make_phantom("brain", seed=2, voxel_mm=6.0, supersample=1)
    c = make_phantom("brain", seed=3, voxel_mm=6.0, supersample=1)
    for key in a.volumes:
        np.testing.assert_array_equal(a.volumes[key].array, b.volumes[key].array)
    assert a.info == b.info
    assert a.activity.shape != c.activity.shape or not np.array_equal(a.labels.array, c.labels.array)


def test_brain_phantom():
    ph = make_phantom("brain", seed=1, voxel_mm=4.0, supersample=1)
    names = set(ph.label_table)
    for t in ("scalp", "bone_cortical", "air_internal", "brain_grey_matter", "brain_white_matter", "csf"):
        assert t in names, t
    assert ph.info["lesions"] == []
    assert 6.0 <= ph.info["head"]["skull_thickness_mm"] <= 9.0


def test_nema_iec_phantom_dimensions_and_activity():
    ph = make_phantom("nema", voxel_mm=2.0, supersample=1, sphere_ratio=8.0, mr=False)
    lab, act = ph.labels.array, ph.activity.array
    vox_ml = 0.008
    for i, d in enumerate(SPHERE_DIAMETERS_MM):
        n = (lab == 40 + i).sum()
        assert n * vox_ml == pytest.approx(4 / 3 * math.pi * (d / 20) ** 3, rel=0.25 if d < 20 else 0.08)
    bg = act[lab == L("water")]
    assert np.median(bg) == pytest.approx(5300.0)
    big = act[lab == 45]
    assert big.max() == pytest.approx(8 * 5300.0)
    assert act[lab == L("lung_insert")].max() == 0.0
    # interior 294 mm wide (sphere plane), lung insert of 50 mm outer diameter at the centre
    sphere_plane = int(np.argmax((lab == 45).sum(axis=(1, 2))))
    j = int(round((35.0 - ph.labels.origin[1]) / 2.0))    # widest part: y = 35 mm (centre of the half-circle)
    row = lab[sphere_plane, j]
    water_width = np.flatnonzero(np.isin(row, [L("water")] + list(range(40, 46))))
    assert (water_width[-1] - water_width[0] + 1) * 2.0 == pytest.approx(294.0, abs=6.0)
    mu = ph.mumap.array[lab == L("water")]
    assert mu.mean() == pytest.approx(0.096, abs=0.001)


def test_bad_phantom_requests_are_refused():
    with pytest.raises(NMAIError, match="unknown phantom"):
        make_phantom("banana")
    with pytest.raises(NMAIError, match="voxel"):
        make_phantom("brain", voxel_mm=50.0)


def test_nema_refuses_weight_and_dose():
    with pytest.raises(NMAIError, match="not dosed"):
        make_phantom("nema", weight_kg=70.0, mr=False)
