"""OSEM/MLEM, calibration in Bq/ml, noise and count-fraction behaviour of the PET simulator."""

import numpy as np
import pytest
import torch

from nmai.sim import DEFAULT_SCANNER, reconstruct, simulate_acquisition
from nmai.sim.acquisition import move
from nmai.sim.model import sino_to_rows
from nmai.sim.osem import osem, poisson_loglik
from nmai.sim.recon import reconstruct as recon_fn
from nmai.volume import Volume

N, SLICES, VOXEL = 48, 6, 4.0
ACTIVITY = 6000.0   # Bq/ml
MU_WATER = 0.096


def cylinder(radius=70.0, n=N, slices=SLICES, voxel=VOXEL, scanner_centre_offset=(0.0, 0.0)):
    c = (np.arange(n) - (n - 1) / 2.0) * voxel
    x, y = np.meshgrid(c - scanner_centre_offset[0], c - scanner_centre_offset[1])
    inside = (x ** 2 + y ** 2 <= radius ** 2).astype(np.float32)
    origin = (-(n - 1) * voxel / 2.0, -(n - 1) * voxel / 2.0, 0.0)
    act = Volume(np.repeat(inside[None] * ACTIVITY, slices, 0), (voxel,) * 3, origin, modality="PT", units="Bq/ml")
    mu = Volume(np.repeat(inside[None] * MU_WATER, slices, 0), (voxel,) * 3, origin, units="cm-1")
    return act, mu, inside


def centre_roi(inside, r=6):
    m = np.zeros_like(inside, bool)
    m[N // 2 - r:N // 2 + r, N // 2 - r:N // 2 + r] = True
    return m & (inside > 0)


def test_noise_free_cylinder_reconstructs_to_true_activity():
    """Attenuation, crystal normalisation (with a dead block), PSF, scatter and randoms all in the model."""
    scanner = DEFAULT_SCANNER.with_(failed_blocks=(5,))
    act, mu, inside = cylinder()
    acq = simulate_acquisition(act, mu, scanner, duration_s=180.0, noise=False)
    info = acq.info
    assert info["scatter_fraction"] == pytest.approx(0.37, abs=1e-3)
    assert info["randoms_fraction"] == pytest.approx(0.25, abs=1e-3)
    assert acq.norm.min() == 0.0          # the dead block removes LORs
    rec = reconstruct(acq, mu, iterations=10, subsets=14)
    assert rec.units == "Bq/ml" and rec.modality == "PT"
    centre = rec.array[1:-1][:, centre_roi(inside)]
    assert centre.mean() == pytest.approx(ACTIVITY, rel=0.02)
    # and not by accident: without attenuation correction the centre is far too low
    no_ac = reconstruct(acq, mu.derive(np.zeros_like(mu.array)), iterations=3, subsets=14)
    assert no_ac.array[1:-1][:, centre_roi(inside)].mean() < 0.5 * ACTIVITY


def test_mlem_loglikelihood_never_decreases():
    act, mu, _ = cylinder(radius=60.0, n=32, slices=3)
    act.array[:, 14:18, 10:14] *= 4.0    # a hot spot
    acq = simulate_acquisition(act, mu, duration_s=60.0, seed=3)
    _, model, y = recon_fn(acq, mu, iterations=1, subsets=1, return_model=True)
    values = []

    def track(it, x):
        values.append(poisson_loglik(y, model.expected(x)))
    osem(y, model, iterations=12, subsets=1, callback=track)
    diffs = np.diff(values)
    assert np.all(diffs >= -1e-6 * abs(values[-1])), values
    assert values[-1] > values[0]


def test_noise_scales_as_one_over_sqrt_counts():
    act, mu, inside = cylinder(radius=80.0, slices=8)
    roi = centre_roi(inside, r=8)
    stds, means, counts = [], [], []
    for f in (1.0, 0.25):
        acq = simulate_acquisition(act, mu, duration_s=30.0, seed=11, count_fraction=f)
        rec = reconstruct(acq, mu, iterations=2, subsets=14)
        v = rec.array[1:-1][:, roi]
        stds.append(v.std())
        means.append(v.mean())
        counts.append(acq.prompts.sum(dtype=np.int64))
    assert counts[1] / counts[0] == pytest.approx(0.25, rel=0.01)
    # relative noise grows by sqrt(4) = 2 when the counts drop 4-fold; the calibration does not move
    assert stds[1] / stds[0] == pytest.approx(2.0, rel=0.15)
    assert means[1] == pytest.approx(means[0], rel=0.03)


def test_count_fraction_thins_the_same_acquisition_and_seed_is_reproducible():
    act, mu, _ = cylinder(radius=60.0, n=32, slices=2)
    full = simulate_acquisition(act, mu, duration_s=20.0, seed=5)
    again = simulate_acquisition(act, mu, duration_s=20.0, seed=5)
    low = simulate_acquisition(act, mu, duration_s=20.0, seed=5, count_fraction=0.3)
    other = simulate_acquisition(act, mu, duration_s=20.0, seed=6)
    np.testing.assert_array_equal(full.prompts, again.prompts)
    assert np.all(low.prompts <= full.prompts)            # a subset of the same counts
    assert low.prompts.sum() / full.prompts.sum() == pytest.approx(0.3, rel=0.02)
    assert not np.array_equal(full.prompts, other.prompts)
    assert full.prompts.dtype.kind == "u"


def test_frames_and_motion():
    act, mu, inside = cylinder(radius=50.0, n=32, slices=3)
    acq = simulate_acquisition(act, mu, duration_s=120.0, frames=2, noise=False,
                               motion=[{}, {"translation_mm": (12.0, 0.0, 0.0)}])
    assert acq.prompts.shape[0] == 2
    moved_mu = mu.derive(move(mu.array, mu.spacing, (12.0, 0.0, 0.0)))
    f0 = reconstruct(acq, mu, iterations=8, subsets=14, frame=0).array
    f1 = reconstruct(acq, moved_mu, iterations=8, subsets=14, frame=1).array
    # frame 1 is shifted 12 mm (3 voxels) to the patient's left (+x, increasing i)
    x = np.arange(32)
    com0 = (f0[1] * x[None, :]).sum() / f0[1].sum()
    com1 = (f1[1] * x[None, :]).sum() / f1[1].sum()
    assert com1 - com0 == pytest.approx(3.0, abs=0.1)
    # each frame is calibrated and decay-corrected to scan start (the second frame has decayed ~1 %)
    roi = centre_roi(inside, r=4)[:32, :32]
    assert f0[1][roi].mean() == pytest.approx(ACTIVITY, rel=0.03)
    assert f1[1][np.roll(roi, 3, axis=1)].mean() == pytest.approx(ACTIVITY, rel=0.03)
    # attenuation-corrected with the static μ-map, the moved frame is biased (motion artefact)
    mismatch = reconstruct(acq, mu, iterations=3, subsets=8, frame=1).array
    assert abs((mismatch[1] * x[None, :]).sum() / mismatch[1].sum() - com1) > 0.5


def test_rows_layout_round_trip():
    s = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    rows = sino_to_rows(s)
    assert rows.shape == (12, 2) and isinstance(rows, torch.Tensor)
    assert rows[5, 1] == s[1, 1, 1]
