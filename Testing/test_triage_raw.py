"""Raw-data triage (failed blocks, count rate, motion), the frame-folder watcher, and artifact cases."""

import json
import os
import threading
import time

import numpy as np
import pytest

from nmai.errors import NMAIError
from nmai.sim import DEFAULT_SCANNER, make_phantom, simulate_acquisition
from nmai.sim.artifacts import ARTIFACTS, STEEL_MU, make_case, simulate_case
from nmai.sim.phantoms import Phantom
from nmai.sim.scanner import frame_decay_integral
from nmai.triage import watch_folder, watch_frames
from nmai.triage.frames import header_of, write_frame, write_frames
from nmai.volume import Volume


def crop(ph, k0, k1):
    vols = {}
    for name, v in ph.volumes.items():
        origin = (v.origin[0], v.origin[1], v.origin[2] + k0 * v.spacing[2])
        vols[name] = Volume(v.array[k0:k1], v.spacing, origin, v.direction, v.modality, v.units, dict(v.metadata))
    return Phantom(ph.name, vols, ph.label_table, ph.info)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("wholebody", seed=0, voxel_mm=8, supersample=1, mr=False, arms=True)


@pytest.fixture(scope="module")
def slab(phantom):
    return crop(phantom, 30, 80)        # abdomen to upper thorax, 50 slices of 8 mm


@pytest.fixture(scope="module")
def expected(slab):
    """Noise-free prompts of one 60 s frame of the slab (float, Poisson means)."""
    acq = simulate_acquisition(slab.activity, slab.mumap, DEFAULT_SCANNER, duration_s=60.0, noise=False)
    return acq


def frames_of(means, rng, fraction=1.0):
    """Poisson frames of 60 s, back to back, from one frame's means (decay of F-18 applied)."""
    decay = [frame_decay_integral(60.0 * f, 60.0) / frame_decay_integral(0.0, 60.0) for f in range(len(means))]
    return [{"prompts": rng.poisson(m * (fraction * decay[f])), "start_s": 60.0 * f, "duration_s": 60.0}
            for f, m in enumerate(means)]


def run(frames, slices):
    return list(watch_frames(frames, DEFAULT_SCANNER, 8.0, slices))


# ------------------------------------------------------------------------------------------ failed blocks
@pytest.mark.parametrize("fraction", [1.0, 1e-3, 1e-4])   # ~5e7, 5e4, 5e3 prompts per frame
def test_failed_blocks_found_in_every_affected_frame_and_never_in_clean_ones(expected, fraction):
    lam = expected.prompts[0]
    alive = DEFAULT_SCANNER.with_(failed_blocks=(10, 31)).normalisation() > 0
    pattern = [False, True, False, True, True, False]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        frames = frames_of([lam * alive if dead else lam for dead in pattern], rng, fraction)
        for dead, r in zip(pattern, run(frames, lam.shape[0])):
            if dead:
                assert r["failed_blocks"] == [10, 31], (seed, r)
                assert r["alarm"] == "repeat"
            else:
                assert r["failed_blocks"] == [] and r["alarm"] == "ok" and r["findings"] == [], (seed, r)


def test_failed_block_of_the_simulator_is_found(slab):
    acq, _ = simulate_case(make_case("failed_blocks", slab, 1), seed=3, duration_s=30.0, reconstruct_image=False)
    acq_lo, _ = simulate_case(make_case("failed_blocks", slab, 1), seed=3, duration_s=0.01, reconstruct_image=False)
    for a in (acq, acq_lo):
        (r,) = run([{"prompts": a.prompts[0]}], a.n_slices)
        assert r["failed_blocks"] == [10] and r["alarm"] == "repeat"


# ------------------------------------------------------------------------------------------ count rate
def test_count_drop_and_rise_flagged(expected):
    lam = expected.prompts[0]
    rng = np.random.default_rng(1)
    results = run(frames_of([lam, lam, lam, 0.6 * lam, lam, 1.3 * lam], rng, 0.01), lam.shape[0])
    kinds = [[f["type"] for f in r["findings"]] for r in results]
    assert kinds == [[], [], [], ["count_rate"], [], ["count_rate"]]
    assert results[3]["rate_change"] == pytest.approx(-0.4, abs=0.03)
    assert results[5]["rate_change"] == pytest.approx(0.3, abs=0.03)
    assert results[3]["alarm"] == "check"


def test_decay_is_not_a_count_drop(slab):
    acq = simulate_acquisition(slab.activity, slab.mumap, DEFAULT_SCANNER, duration_s=1800.0, frames=6,
                               noise=False)   # 5-min frames: 17 % decay over the scan
    rng = np.random.default_rng(0)
    frames = [{"prompts": rng.poisson(acq.prompts[f] * 0.01), "start_s": s, "duration_s": d}
              for f, (s, d) in enumerate(acq.frames)]
    assert all(r["alarm"] == "ok" for r in run(frames, acq.n_slices))


# ------------------------------------------------------------------------------------------ motion
@pytest.fixture(scope="module")
def moving(slab):
    motion = [{"translation_mm": t} for t in [(0, 0, 0), (0, 0, 0), (5, 0, 0), (0, -5, 0), (0, 0, 6), (0, 0, 0)]]
    return simulate_acquisition(slab.activity, slab.mumap, DEFAULT_SCANNER, duration_s=360.0, frames=6,
                                motion=motion, noise=False)


@pytest.mark.parametrize("fraction", [1.0, 0.1])
def test_motion_of_5mm_flagged_and_0mm_not(moving, fraction):
    for seed in range(2):
        rng = np.random.default_rng(seed)
        means = list(moving.prompts)
        means[4] = means[4] * 0.5                       # half the counts: the shift must not change
        results = run(frames_of(means, rng, fraction), moving.n_slices)
        flagged = [any(f["type"] == "motion" for f in r["findings"]) for r in results]
        # frame 5 is back at the start: 0 mm from the first frame, but 6 mm since frame 4 -> still 'check'
        assert flagged == [False, False, True, True, True, True], [r["shift_mm"] for r in results]
        assert np.linalg.norm(results[5]["shift_mm"]) < 1.0
        for r, true in zip(results[2:5], [(5, 0, 0), (0, -5, 0), (0, 0, 6)]):
            assert np.allclose(r["shift_mm"], true, atol=1.0), (r["shift_mm"], true)
        assert np.linalg.norm(results[1]["shift_mm"]) < 1.0


def test_motion_not_estimated_from_too_few_counts(moving):
    rng = np.random.default_rng(0)
    results = run(frames_of(list(moving.prompts), rng, 1e-4), moving.n_slices)
    assert all(r["shift_mm"] is None and "too few counts" in r["motion_note"] for r in results)


# ------------------------------------------------------------------------------------------ watcher
def _header(folder, acq):
    (folder / "scan.json").write_text(json.dumps(header_of(acq)))


def test_watcher_waits_for_half_written_file_and_refuses_wrong_geometry(tmp_path, expected):
    lam = expected.prompts[0]
    rng = np.random.default_rng(0)
    _header(tmp_path, expected)
    write_frame(tmp_path / "frame_0000.npz", rng.poisson(lam * 0.01), frame=0, start_s=0, duration_s=60)
    (tmp_path / ".frame_0003.npz.part").write_bytes(b"not yet")           # a writer's temporary: ignored
    good = tmp_path / "good.bin"
    write_frame(good, rng.poisson(lam * 0.01), frame=1, start_s=60, duration_s=60)
    data = good.read_bytes()
    (tmp_path / "frame_0001.npz").write_bytes(data[: len(data) // 2])      # written in place, half done
    write_frame(tmp_path / "frame_0002.npz", rng.poisson(lam[:-1] * 0.01), frame=2, start_s=120, duration_s=60)

    def finish():
        time.sleep(1.0)
        (tmp_path / "frame_0001.npz").write_bytes(data)

    thread = threading.Thread(target=finish)
    thread.start()
    results = {r["file"]: r for r in watch_folder(tmp_path, timeout_s=20, expected_frames=3, poll_s=0.05,
                                                  unreadable_after_s=15)}
    thread.join()
    assert set(results) == {"frame_0000.npz", "frame_0001.npz", "frame_0002.npz"}
    assert results["frame_0000.npz"]["alarm"] == "ok" and results["frame_0001.npz"]["alarm"] == "ok"
    bad = results["frame_0002.npz"]
    assert bad["refused"] and bad["alarm"] == "check"
    assert "(49, 224, 344)" in bad["findings"][0]["message"] and "header" in bad["findings"][0]["message"]
    assert all(r["latency_s"] >= 0 for r in results.values())


def test_watcher_reports_a_corrupt_file_and_goes_on(tmp_path, expected):
    lam = expected.prompts[0]
    rng = np.random.default_rng(0)
    _header(tmp_path, expected)
    (tmp_path / "frame_0000.npz").write_bytes(b"PK\x03\x04 truncated")
    write_frame(tmp_path / "frame_0001.npz", rng.poisson(lam * 0.01), frame=1, start_s=0, duration_s=60)
    results = list(watch_folder(tmp_path, timeout_s=3, expected_frames=2, poll_s=0.05, unreadable_after_s=0.5))
    assert [r["file"] for r in results] == ["frame_0001.npz", "frame_0000.npz"]
    assert results[0]["alarm"] == "ok"
    assert results[1]["refused"] and "truncated or corrupt" in results[1]["findings"][0]["message"]


def test_watcher_without_header_fails_clearly(tmp_path):
    from nmai.errors import NMAIError

    with pytest.raises(NMAIError, match="scan.json"):
        list(watch_folder(tmp_path, timeout_s=0.3, poll_s=0.05))
    with pytest.raises(NMAIError, match="no such folder"):
        list(watch_folder(tmp_path / "missing", timeout_s=0.3))


def test_cli_frames_then_watch(tmp_path, slab, capsys):
    from nmai.cli import main

    acq = simulate_acquisition(slab.activity, slab.mumap, DEFAULT_SCANNER, duration_s=30.0, frames=3,
                               count_fraction=0.05, seed=2)
    acq.save(tmp_path / "sim")
    assert main(["triage", "frames", str(tmp_path / "sim"), "--out", str(tmp_path / "w")]) == 0
    capsys.readouterr()
    assert main(["triage", "watch", str(tmp_path / "w"), "--timeout", "5"]) == 0
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert "3 frame(s): 3 ok" in out.err
    assert [x["frame"] for x in lines] == [0, 1, 2]
    assert all(x["type"] == "frame" and x["alarm"] == "ok" for x in lines)
    header = json.loads((tmp_path / "w" / "scan.json").read_text())
    assert header["scanner"]["failed_blocks"] == [] and header["frames_expected"] == 3
    assert not [p for p in os.listdir(tmp_path / "w") if p.startswith(".")]


def test_write_frames_refuses_a_folder_with_frames(tmp_path, expected):
    from nmai.errors import NMAIError

    write_frames(expected, tmp_path)
    with pytest.raises(NMAIError, match="already holds frame files"):
        write_frames(expected, tmp_path)


# ------------------------------------------------------------------------------------------ artifacts
def test_artifact_cases_state_their_truth(phantom):
    ph = phantom
    mu, act = ph.mumap.array, ph.activity.array
    nz = mu.shape[0]
    cases = {k: make_case(k, ph) for k in ARTIFACTS}
    for kind, case in cases.items():
        t = case.truth
        assert t["type"] == kind and t["severity"] > 0 and len(t["slices"]) == 2
        assert 0 <= t["slices"][0] <= t["slices"][1] < nz

    c = cases["motion"]
    assert c.frames == 4 and [m["translation_mm"] for m in c.motion] == [(0.0,) * 3] * 2 + [[10.0, 0.0, 0.0]] * 2
    assert c.mumap_recon is ph.mumap

    c = make_case("misregistration", ph, 12.0)
    assert c.truth["severity"] == 12.0 and c.truth["parameters"]["translation_mm"] == [0.0, 12.0, 0.0]
    assert c.mumap_sim is ph.mumap and not np.array_equal(c.mumap_recon.array, mu)

    c = make_case("truncation", ph, 400.0)
    x, y = np.meshgrid(*(ph.mumap.origin[i] + 8.0 * np.arange(mu.shape[2 - i]) for i in (0, 1)))
    outside = x ** 2 + y ** 2 > 200.0 ** 2
    assert (c.mumap_recon.array[:, outside] == 0).all() and (mu[:, outside] > 0.05).any()
    k = np.flatnonzero((mu[:, outside] > 0.01).any(axis=1))
    assert c.truth["slices"] == [k[0], k[-1]] and c.truth["severity"] > cases["truncation"].truth["severity"]

    c = cases["metal"]
    implant = c.mumap_sim.array == np.float32(STEEL_MU)
    assert implant.sum() == c.truth["parameters"]["implant_voxels"] > 0
    assert (c.activity.array[implant] == 0).all() and (c.mumap_recon.array[implant] == 0).all()
    k = np.flatnonzero(implant.any(axis=(1, 2)))
    assert c.truth["slices"][0] <= k[0] and k[-1] <= c.truth["slices"][1]

    c = cases["respiratory"]
    lung = (ph.labels.array == ph.label_table["lung"]).any(axis=(1, 2))
    liver = (ph.labels.array == ph.label_table["liver"]).any(axis=(1, 2))
    k0, k1 = c.truth["slices"]
    assert k0 < np.flatnonzero(liver)[-1] and k1 <= np.flatnonzero(lung)[-1]
    assert np.array_equal(c.mumap_recon.array, mu) and not np.array_equal(c.mumap_sim.array, mu)  # end-expiration
    assert c.activity.array.sum() == pytest.approx(act.sum(), rel=0.01)

    # μ-map at end-inspiration: the lung base (lowest lung-valued voxel over the liver) lies one amplitude lower
    insp = make_case("respiratory", ph, 16.0, mumap_phase=0.5)
    over_liver = (ph.labels.array == ph.label_table["liver"]).any(axis=0) & (ph.labels.array == ph.label_table["lung"]).any(axis=0)

    def lung_base(m):
        return np.flatnonzero(((m > 0.005) & (m < 0.06) & over_liver).any(axis=(1, 2)))[0]
    assert lung_base(insp.mumap_recon.array) == lung_base(mu) - 2  # 16 mm at 8 mm slices, k up = superior
    assert insp.truth["parameters"]["mumap_phase"] == 0.5 and np.array_equal(insp.mumap_sim.array, make_case("respiratory", ph, 16.0).mumap_sim.array)
    with pytest.raises(NMAIError, match="mumap_phase"):
        make_case("respiratory", ph, 16.0, mumap_phase=1.5)

    assert cases["failed_blocks"].scanner.failed_blocks == (10,)
    assert make_case("failed_blocks", ph, 3).scanner.failed_blocks == (10, 11, 12)
    assert make_case("low_counts", ph, 0.25).count_fraction == 0.25


def test_motion_case_simulates_and_is_found(slab):
    acq, recon = simulate_case(make_case("motion", slab, 8.0, frames=2), duration_s=20.0, iterations=1,
                               subsets=14)
    assert acq.prompts.shape[0] == 2 and recon.metadata["artifact"]["type"] == "motion"
    (r0, r1) = run([{"prompts": p} for p in acq.prompts], acq.n_slices)
    assert r1["findings"][0]["type"] == "motion" and r1["shift_mm"][0] == pytest.approx(8.0, abs=1.0)


# ------------------------------------------------------------------------------------------ image report
def test_image_report_finds_metal_void_and_raw_failed_block(tmp_path, slab, capsys):
    from nmai.cli import main
    from nmai.io import write_volume

    centre = (60.0, 0.0, slab.mumap.origin[2] + 8.0 * 12)        # upper abdomen, clear of airways
    case = make_case("metal", slab, 20.0, centre_mm=centre)
    case.scanner = DEFAULT_SCANNER.with_(failed_blocks=(20,))
    acq, recon = simulate_case(case, seed=1, duration_s=60.0, iterations=1, subsets=14)
    acq.save(tmp_path / "sim")
    write_volume(recon, tmp_path / "pet.nii.gz")
    write_volume(case.mumap_recon, tmp_path / "mu.nii.gz")
    report = tmp_path / "report.json"
    assert main(["triage", "image", str(tmp_path / "pet.nii.gz"), "--mumap", str(tmp_path / "mu.nii.gz"),
                 "--acquisition", str(tmp_path / "sim"), "--out", str(report), "--rules-only"]) == 0
    rep = json.loads(report.read_text())
    kinds = {a["type"]: a for a in rep["artifacts"]}
    assert set(kinds) == {"mumap_void", "failed_blocks"} and rep["alarm"] == "repeat"
    k0, k1 = kinds["mumap_void"]["slice_range"]
    t0, t1 = case.truth["slices"]
    assert t0 <= k0 <= k1 <= t1 and kinds["mumap_void"]["probability"] >= 0.5
    assert kinds["failed_blocks"]["blocks"] == [20] and rep["lesions"] == []


def test_image_report_is_quiet_on_a_clean_scan(slab):
    from nmai.triage.image import triage_image

    case = make_case("none", slab)
    acq, recon = simulate_case(case, seed=2, duration_s=60.0, iterations=1, subsets=14)
    rep = triage_image(recon, mumap=case.mumap_recon, acquisition=acq, classifier=None, lesion_model=None)
    assert rep["alarm"] == "ok" and rep["artifacts"] == [], rep["artifacts"]


def test_block_failed_after_normalisation_streaks_the_image_and_a_known_one_does_not(slab):
    """Noise-free: with the normalisation that knows the dead block the image stays the clean one; with the
    normalisation from before the failure (the default case) the missing counts pull the image down."""
    body = slab.mumap.array > 0.05
    clean = simulate_case(make_case("none", slab), noise=False, iterations=2)[1].array[body]
    known_case = make_case("failed_blocks", slab, 1, stale_norm=False)
    acq_k, known = simulate_case(known_case, noise=False, iterations=2)
    acq_s, stale = simulate_case(make_case("failed_blocks", slab, 1), noise=False, iterations=2)
    assert (acq_k.norm == 0).any() and (acq_s.norm > 0).all()
    assert acq_s.info["artifact"]["parameters"]["normalisation"] == "measured before the failure"
    ratio_known, ratio_stale = known.array[body] / clean, stale.array[body] / clean
    assert np.median(np.abs(ratio_known - 1)) < 0.02
    assert ratio_stale.mean() < 0.97 and np.percentile(ratio_stale, 5) < 0.85


# ------------------------------------------------------------------------------------------ image rules
def noisy_cylinder(voxel_mm: float, cov: float, size_mm: float = 240.0, seed: int = 0) -> Volume:
    n = int(round(size_mm / voxel_mm))
    k, j, i = np.indices((n, n, n))
    inside = (j - n / 2) ** 2 + (i - n / 2) ** 2 < (0.4 * n) ** 2
    rng = np.random.default_rng(seed)
    a = np.where(inside, 1000.0 * (1.0 + cov * rng.standard_normal((n, n, n))), 0.0).astype(np.float32)
    return Volume(a, (voxel_mm,) * 3, (0.0, 0.0, 0.0), np.eye(3), modality="PT", units="Bq/ml")


@pytest.mark.parametrize("cov", [0.15, 0.45])
def test_noise_measure_recovers_white_noise_at_6mm(cov):
    """White noise of relative SD c: the 3×3×3 local SD/mean has its median at c·√(median χ²₂₆ / 27) ≈
    0.969 c; at 2 mm voxels the 3×3×3-voxel blocks average 27 voxels, so c/√27 · 0.969; 8 mm voxels are
    scaled to a 6 mm block: c · 0.969 · √(8³/6³)."""
    from nmai.triage.image import noise_cov

    assert noise_cov(noisy_cylinder(6.0, cov)) == pytest.approx(0.969 * cov, rel=0.05)
    assert noise_cov(noisy_cylinder(2.0, cov)) == pytest.approx(0.969 * cov / np.sqrt(27), rel=0.08)
    assert noise_cov(noisy_cylinder(8.0, cov)) == pytest.approx(0.969 * cov * (8 / 6) ** 1.5, rel=0.05)


def test_noise_rule_flags_low_counts_only():
    from nmai.triage.image import NOISE_COV, noise_rule

    found, ev = noise_rule(noisy_cylinder(6.0, 0.45))
    assert [f["type"] for f in found] == ["low_counts"] and found[0]["source"] == "image rules"
    assert found[0]["probability"] == pytest.approx(0.5 * ev["noise_cov_6mm"] / NOISE_COV, abs=1e-3)
    found, ev = noise_rule(noisy_cylinder(6.0, 0.15))
    assert found == [] and 0.0 < ev["rule_scores"]["low_counts"] < 0.5


def test_void_opening_onto_the_skin_is_a_void_and_cut_arms_are_not(slab):
    from nmai.triage.image import mumap_rules

    mu = slab.mumap.array
    body_x = np.flatnonzero((mu[25] > 0.05).any(axis=0))       # columns of the body in the middle slice
    edge_x = slab.mumap.origin[0] + 8.0 * body_x[-1]           # the body's outline on +x
    centre = (edge_x - 24.0, float(slab.mumap.origin[1] + 8.0 * np.flatnonzero((mu[25] > 0.05).any(axis=1)).mean()),
              slab.mumap.origin[2] + 8.0 * 25)
    case = make_case("metal", slab, 20.0, centre_mm=centre)   # void (27 mm radius) cuts the skin
    assert (case.mumap_recon.array[25, :, body_x[-1]] == 0).any()
    recon = simulate_case(case, seed=1, duration_s=60.0, iterations=2)[1]
    found, ev = mumap_rules(recon, case.mumap_recon)
    assert "mumap_void" in {f["type"] for f in found} and ev["rule_scores"]["mumap_void"] >= 0.5
    trunc = make_case("truncation", slab, 400.0)
    recon = simulate_case(trunc, seed=1, duration_s=60.0, iterations=2)[1]
    found, _ = mumap_rules(recon, trunc.mumap_recon)
    assert {f["type"] for f in found} == {"truncation"}


def ellipsoid_pair(shift_mm, direction=np.eye(3), voxel=4.0):
    """A uniform ellipsoid PET (blurred by a 6 mm PSF) and its μ-map with the body moved by shift_mm
    (x, y, z along the volume's own axes)."""
    from scipy import ndimage

    n = (40, 48, 56)                                    # k, j, i
    k, j, i = np.indices(n, dtype=float)
    c = np.array(n, float)[::-1] / 2 * voxel            # x, y, z centre mm

    def body(off):
        x, y, z = (i * voxel - c[0] - off[0], j * voxel - c[1] - off[1], k * voxel - c[2] - off[2])
        return (x / 80) ** 2 + (y / 60) ** 2 + (z / 55) ** 2 <= 1.0

    pet = ndimage.gaussian_filter(1000.0 * body((0, 0, 0)), 6.0 / 2.355 / voxel).astype(np.float32)
    mu = np.where(body(shift_mm), 0.096, 0.0).astype(np.float32)
    geo = dict(spacing=(voxel,) * 3, origin=(-100.0, 20.0, 300.0), direction=direction)
    return Volume(pet, modality="PT", units="Bq/ml", **geo), Volume(mu, units="cm-1", **geo)


@pytest.mark.parametrize("shift", [(6.0, 0.0, 0.0), (0.0, -5.0, 0.0), (0.0, 0.0, 6.0), (0.0, 0.0, 0.0)])
def test_outline_offset_recovers_a_shifted_mumap(shift):
    from nmai.triage.image import outline_offset

    pet, mu = ellipsoid_pair(shift)
    assert outline_offset(pet, mu) == pytest.approx(-np.asarray(shift), abs=0.6)


def test_offset_rule_reports_lps_on_an_oblique_volume():
    from nmai.triage.image import OFFSET_MM, offset_rule

    a = np.deg2rad(30.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    pet, mu = ellipsoid_pair((6.0, 0.0, 0.0), direction=rot)
    found, ev = offset_rule(pet, mu)
    assert [f["type"] for f in found] == ["pet_mumap_offset"] and found[0]["alarm"] == "check"
    assert ev["pet_mumap_offset_lps_mm"] == pytest.approx(list(rot @ [-6.0, 0.0, 0.0]), abs=0.6)
    assert found[0]["probability"] == pytest.approx(min(1.0, 0.5 * found[0]["offset_mm"] / OFFSET_MM), abs=1e-3)
    found, ev = offset_rule(*ellipsoid_pair((0.0, 0.0, 0.0), direction=rot))
    assert found == [] and ev["rule_scores"]["pet_mumap_offset"] < 0.2


def lung_base_pair(cold_band: bool = False, voxel=(4.0, 4.0, 2.0), sigma_mm: float = 4.0, gas: bool = False):
    """A trunk (cylinder, μ 0.096) with lung (μ 0.01) in its core above slice 40, and a PET that steps from
    tissue (3000 Bq/ml) to lung (1000) at the μ-map's lung base (where μ crosses 0.065), blurred along z by
    a Gaussian of sigma_mm; ``cold_band`` halves the PET over the 10 mm above the base, as tissue
    corrected with lung attenuation (an inspiration μ-map) reads; ``gas`` puts a gas pocket (μ 0) 14–16 mm
    under the base of one quadrant of the lung. Returns (pet, mu, base_mm, lung_columns_on_tissue)."""
    from scipy.stats import norm

    n = (80, 40, 40)                                    # k, j, i
    k, j, i = np.indices(n, dtype=float)
    r = np.hypot((i - 19.5) * voxel[0], (j - 19.5) * voxel[1])
    lung = r[0] <= 40.0
    mu = np.where(r <= 60.0, 0.096, 0.0)
    mu[:, lung] = np.where(k[:, lung] >= 40, 0.01, mu[:, lung])
    base = (39 + (0.096 - 0.065) / (0.096 - 0.01)) * voxel[2]
    z = k * voxel[2] - base
    on_tissue = lung.copy()
    if gas:
        pocket = lung & (j[0] < 20) & (i[0] < 20)
        mu[(k >= 31) & (k <= 32) & pocket] = 0.0
        on_tissue &= ~pocket
    pet = np.where(r <= 60.0, 1000.0 + 2000.0 * norm.cdf(-z / sigma_mm), 0.0)
    if cold_band:
        pet[(r <= 40.0) & (z >= 0) & (z <= 10.0)] *= 0.5
    geo = dict(spacing=voxel, origin=(-80.0, -80.0, -100.0))
    return (Volume(pet.astype(np.float32), modality="PT", units="Bq/ml", **geo),
            Volume(mu.astype(np.float32), units="cm-1", **geo), base, int(on_tissue.sum()))


def test_diaphragm_band_measures_the_pet_above_the_mumaps_lung_base():
    from scipy.stats import norm

    from nmai.triage.image import BAND_MM, BAND_THRESHOLD, breathing_rule, diaphragm_band, triage_image

    pet, mu, _, columns = lung_base_pair()
    res = diaphragm_band(pet, mu)
    # the normalised profile above the base is the Gaussian tail, averaged over BAND_MM at every mm; the
    # base is where μ crosses 0.065 between the voxels (36 % of the way from tissue 0.096 to lung 0.01)
    offsets = np.arange(BAND_MM[0], BAND_MM[1] + 1)
    assert res["band"] == pytest.approx(norm.cdf(-offsets / 4.0).mean(), abs=0.005)
    assert res["columns"] == columns
    assert res["slice_range"] == [39, 45]               # base at slice 39.36, band 10 mm = 5 slices above
    found, ev = breathing_rule(pet, mu)
    assert found == [] and ev["diaphragm_band"]["band"] > BAND_THRESHOLD

    pet, mu, _, columns = lung_base_pair(cold_band=True, gas=True)
    res = diaphragm_band(pet, mu)
    assert res["columns"] == columns < lung_base_pair()[3]       # no tissue under the gas pocket's lung
    found, ev = breathing_rule(pet, mu)
    assert [f["type"] for f in found] == ["diaphragm_band"] and found[0]["alarm"] == "check"
    assert found[0]["slice_range"] == [39, 45]
    assert ev["diaphragm_band"]["band"] < 0 and found[0]["probability"] > 0.5
    # the report runs the rule whenever a μ-map is given
    report = triage_image(pet, mumap=mu, classifier=None, lesion_model=None)
    assert report["evidence"]["diaphragm_band"]["band"] == pytest.approx(res["band"], abs=1e-4)
    assert "diaphragm_band" in [a["type"] for a in report["artifacts"]]


def test_diaphragm_band_follows_the_slice_direction_and_needs_axial_slices():
    from scipy import ndimage

    from nmai.triage.image import diaphragm_band

    pet, mu, _, columns = lung_base_pair(cold_band=True)
    expected = diaphragm_band(pet, mu)["band"]
    # the same patient stored feet-first along k: slices reversed, k axis pointing to the feet
    flip = np.diag([1.0, 1.0, -1.0])
    flipped = [Volume(v.array[::-1].copy(), v.spacing, v.origin, flip, v.modality, v.units) for v in (pet, mu)]
    res = diaphragm_band(*flipped)
    assert res["band"] == pytest.approx(expected, abs=1e-6) and res["slice_range"] == [79 - 45, 79 - 39]
    # a μ-map smoothed along z (σ 4 mm, as a vendor's at PET resolution): its partial-volume edge still counts
    blurred = Volume(ndimage.gaussian_filter1d(mu.array, 2.0, axis=0), mu.spacing, mu.origin)
    res = diaphragm_band(pet, blurred)
    assert res["columns"] == columns and res["band"] < 0
    # sagittal slices (k along x): no lung base along k to measure
    sagittal = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert diaphragm_band(*[Volume(v.array, v.spacing, v.origin, sagittal) for v in (pet, mu)]) is None
    # no lung in the μ-map (a pelvis bed): nothing measured, nothing listed
    pelvis = Volume(np.where(mu.array > 0, 0.096, 0.0).astype(np.float32), mu.spacing, mu.origin)
    assert diaphragm_band(pet, pelvis) is None
    # a PET that is not finite where the band is measured
    bad = pet.array.copy()
    bad[40, 20, 20] = np.nan
    assert diaphragm_band(Volume(bad, pet.spacing, pet.origin), mu) is None
