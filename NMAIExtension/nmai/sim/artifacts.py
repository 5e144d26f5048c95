"""Artifact cases for triage: a phantom turned into what to simulate, what to reconstruct with, and the truth.

Each function takes a :class:`~nmai.sim.phantoms.Phantom` and one severity parameter and returns an
:class:`ArtifactCase`: the activity and μ-map the acquisition is simulated with, the μ-map the image is
reconstructed with, the scanner, the per-frame rigid motion, the number of frames, the count fraction and
the exact ground truth ``{"type", "severity", "severity_unit", "slices": [k0, k1], "parameters"}``
(``slices``: first and last affected slice of the image grid, inclusive). :func:`simulate_case` runs it.

=================  ====================================================  ==============================
type               how it is made                                        severity
=================  ====================================================  ==============================
motion             rigid shift of activity + μ from frame ``at_frame``   shift, mm
                   on (simulator ``motion``); reconstructed with the
                   μ-map of the first position
respiratory        activity + μ averaged over a breathing cycle (z-shift  peak-to-peak amplitude, mm
                   of the diaphragm region, sin² waveform); reconstructed
                   with the μ-map of one phase (``mumap_phase``: 0
                   end-expiration, 0.5 end-inspiration)
misregistration    simulated with the true μ, reconstructed with a        shift, mm
                   shifted μ-map
truncation         μ-map for reconstruction set to 0 outside a circle of  % of body voxels removed
                   ``fov_mm`` (MR-based μ-maps lose the arms this way)
failed_blocks      ``Scanner(failed_blocks=...)``; by default the         number of dead blocks
                   reconstruction normalises with the efficiencies
                   measured before the blocks failed (the daily QC)
metal              a steel implant (μ 0.66 cm⁻¹, no activity) in the      void margin around the
                   true object; the reconstruction μ-map has a signal     implant, mm
                   void (μ 0) around it, as MR-based μ-maps show for
                   metal (susceptibility artefact) — not the CT-AC case
low_counts         ``count_fraction``                                    count reduction factor 1/f
=================  ====================================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import NMAIError
from ..volume import Volume
from .acquisition import grid_of, move, simulate_acquisition
from .scanner import DEFAULT_SCANNER, Scanner

ARTIFACTS = ("motion", "respiratory", "misregistration", "truncation", "failed_blocks", "metal", "low_counts")
STEEL_MU = 0.66        # cm⁻¹ at 511 keV: 7.9 g/cm³ × 0.0837 cm²/g
BODY_MU = 0.05         # cm⁻¹: what counts as body in a μ-map


@dataclass
class ArtifactCase:
    activity: Volume                # Bq/ml, what is simulated
    mumap_sim: Volume               # cm⁻¹, what the photons cross
    mumap_recon: Volume             # cm⁻¹, what the reconstruction corrects with
    scanner: Scanner = DEFAULT_SCANNER
    motion: list | None = None      # one dict per frame (simulator format) or None
    frames: int = 1
    count_fraction: float = 1.0
    truth: dict = field(default_factory=dict)
    stale_norm: bool = False        # reconstruct with the normalisation of the healthy scanner


def slice_span(mask_per_slice: np.ndarray) -> list:
    """[first, last] index where ``mask_per_slice`` is true ([] when never)."""
    k = np.flatnonzero(mask_per_slice)
    return [int(k[0]), int(k[-1])] if k.size else []


def _changed(a: np.ndarray, b: np.ndarray, tol: float = 0.01) -> list:
    return slice_span((np.abs(a - b) > tol).any(axis=(1, 2)))


def _body_slices(mu: np.ndarray) -> list:
    return slice_span((mu > BODY_MU).any(axis=(1, 2)))


def _truth(kind, severity, unit, slices, **parameters) -> dict:
    return {"type": kind, "severity": float(severity), "severity_unit": unit, "slices": slices,
            "parameters": parameters}


def _case(ph, mumap_recon=None, truth=None, **kw) -> ArtifactCase:
    return ArtifactCase(ph.activity, ph.mumap, mumap_recon if mumap_recon is not None else ph.mumap,
                        truth=truth, **kw)


def clean(ph) -> ArtifactCase:
    return _case(ph, truth=_truth("none", 0.0, "", []))


def patient_motion(ph, shift_mm: float = 10.0, direction=(1.0, 0.0, 0.0), frames: int = 4,
                   at_frame: int | None = None) -> ArtifactCase:
    """The patient moves rigidly by ``shift_mm`` along ``direction`` (x, y, z) before frame ``at_frame``
    (default: the middle frame) and stays there."""
    at = frames // 2 if at_frame is None else int(at_frame)
    if frames < 2 or not 1 <= at < frames:
        raise NMAIError(f"motion needs >= 2 frames and 1 <= at_frame < frames (got {frames}, {at})")
    d = np.asarray(direction, float)
    t = [float(v) for v in shift_mm * d / np.linalg.norm(d)]
    motion = [{"translation_mm": (0.0, 0.0, 0.0)}] * at + [{"translation_mm": t}] * (frames - at)
    moved = move(ph.mumap.array, ph.mumap.spacing, t)
    truth = _truth("motion", shift_mm, "mm", _changed(ph.mumap.array, moved), translation_mm=t,
                   frames_moved=[at, frames - 1], frames=frames)
    return _case(ph, motion=motion, frames=frames, truth=truth)


def _z_warp(a: np.ndarray, shift_slices: np.ndarray) -> np.ndarray:
    """out[k] = a[k - shift[k]] (linear in z, 0 outside): a z-only displacement that varies with slice."""
    nz = a.shape[0]
    src = np.arange(nz) - shift_slices
    k0 = np.clip(np.floor(src).astype(int), 0, nz - 1)
    k1 = np.clip(k0 + 1, 0, nz - 1)
    f = (src - np.floor(src)).astype(np.float32)[:, None, None]
    out = a[k0] * (1 - f) + a[k1] * f
    out[(src < 0) | (src > nz - 1)] = 0.0
    return out.astype(a.dtype)


def respiratory(ph, amplitude_mm: float = 15.0, phases: int = 8, mumap_phase: float = 0.0) -> ArtifactCase:
    """Breathing: the diaphragm region (liver to lung base, full amplitude) moves in z with a sin²
    waveform (inspiration caudal, −z), fading linearly to 0 at the lung apex and 60 mm below the liver;
    activity and μ are averaged over ``phases`` phases. The reconstruction μ-map is the snapshot at
    ``mumap_phase`` of the cycle: 0 end-expiration (a breath-hold MR or CT at expiration, the recommended
    practice), 0.5 end-inspiration (a CT taken in deep inspiration: the photopenic "banana" over the liver
    dome), anything between for a free-breathing snapshot."""
    if not 0.0 <= mumap_phase <= 1.0:
        raise NMAIError(f"mumap_phase is a fraction of the breathing cycle in [0, 1], got {mumap_phase}")
    lab, table = ph.labels.array, ph.label_table
    if "lung" not in table or "liver" not in table:
        raise NMAIError("respiratory motion needs a wholebody phantom (lung and liver labels)")
    dz = ph.mumap.spacing[2]
    zl = slice_span((lab == table["liver"]).any(axis=(1, 2)))
    zu = slice_span((lab == table["lung"]).any(axis=(1, 2)))
    k = np.arange(lab.shape[0], dtype=float)
    lo, top = zl[0] - 60.0 / dz, zu[1]
    dome = max(zl[1], zu[0])
    w = np.interp(k, [lo, zl[0], dome, top], [0.0, 1.0, 1.0, 0.0], left=0.0, right=0.0)
    act = np.zeros_like(ph.activity.array)
    mu = np.zeros_like(ph.mumap.array)
    for p in range(phases):
        u = -amplitude_mm * np.sin(np.pi * p / phases) ** 2 * w / dz   # slices, sin² waveform
        act += _z_warp(ph.activity.array, u) / phases
        mu += _z_warp(ph.mumap.array, u) / phases
    snapshot = ph.mumap if mumap_phase in (0.0, 1.0) else ph.mumap.derive(
        _z_warp(ph.mumap.array, -amplitude_mm * np.sin(np.pi * mumap_phase) ** 2 * w / dz))
    truth = _truth("respiratory", amplitude_mm, "mm", _changed(mu, snapshot.array, 0.005),
                   phases=phases, waveform="sin^2 (end-expiration at phase 0)",
                   moving_slices=slice_span(w > 0), mumap_phase=float(mumap_phase))
    return ArtifactCase(ph.activity.derive(act), ph.mumap.derive(mu), snapshot, truth=truth)


def misregistration(ph, shift_mm: float = 10.0, direction=(0.0, 1.0, 0.0)) -> ArtifactCase:
    """PET/μ-map misregistration: the reconstruction μ-map is the true one shifted by ``shift_mm``."""
    d = np.asarray(direction, float)
    t = [float(v) for v in shift_mm * d / np.linalg.norm(d)]
    mu = np.clip(move(ph.mumap.array, ph.mumap.spacing, t), 0.0, None)
    truth = _truth("misregistration", shift_mm, "mm", _changed(mu, ph.mumap.array), translation_mm=t)
    return _case(ph, ph.mumap.derive(mu), truth)


def truncation(ph, fov_mm: float = 450.0) -> ArtifactCase:
    """The reconstruction μ-map is 0 outside a transaxial circle of ``fov_mm`` (arms of an MR μ-map)."""
    inside = grid_of(ph.mumap).fov_mask(fov_mm)
    mu = ph.mumap.array * inside[None]
    body = ph.mumap.array > BODY_MU
    removed = float((body & ~inside[None]).sum()) / max(float(body.sum()), 1.0)
    if removed == 0:
        raise NMAIError(f"nothing of the body lies outside {fov_mm:g} mm; use a phantom with arms "
                        "(make_phantom(..., arms=True)) or a smaller fov_mm")
    truth = _truth("truncation", 100.0 * removed, "% of body voxels", _changed(mu, ph.mumap.array),
                   fov_mm=float(fov_mm))
    return _case(ph, ph.mumap.derive(mu), truth)


def failed_blocks(ph, blocks=(10,), scanner: Scanner = DEFAULT_SCANNER, stale_norm: bool = True) -> ArtifactCase:
    """Dead detector blocks for the whole scan. ``stale_norm``: the blocks failed after the last
    normalisation, so the reconstruction expects counts from them and the image shows streaks (what triage
    must catch). With ``stale_norm=False`` the normalisation knows the dead blocks: the image is only
    noisier (measured: regional ratios to the clean image within ±1.5 %) and only the raw data show it."""
    blocks = tuple(int(b) for b in blocks)
    truth = _truth("failed_blocks", len(blocks), "blocks", _body_slices(ph.mumap.array), blocks=list(blocks),
                   normalisation="measured before the failure" if stale_norm else "knows the dead blocks")
    return _case(ph, scanner=scanner.with_(failed_blocks=blocks), truth=truth, stale_norm=stale_norm)


def _hip(ph) -> tuple:
    """Default implant position (LPS mm): 90 mm left of the bladder, inside the body."""
    lab, table = ph.labels.array, ph.label_table
    if "bladder" not in table:
        raise NMAIError("give centre_mm for the metal implant (this phantom has no bladder to place it by)")
    k, j, i = np.argwhere(lab == table["bladder"]).mean(axis=0)
    sx, sy, sz = ph.mumap.spacing
    ox, oy, oz = ph.mumap.origin
    for dx in (90.0, 75.0, 60.0, 45.0):
        ii = int(round(i + dx / sx))
        if ph.mumap.array[int(round(k)), int(round(j)), ii] > BODY_MU:
            return (ox + ii * sx, oy + j * sy, oz + k * sz)
    return (ox + i * sx, oy + j * sy, oz + k * sz)


def metal(ph, void_mm: float = 20.0, centre_mm=None, radius_mm: float = 7.0,
          length_mm: float = 120.0) -> ArtifactCase:
    """A steel rod along z (hip stem; radius, length in mm) at ``centre_mm`` (LPS; default left hip): μ
    0.66 cm⁻¹ and no activity in the true object; the reconstruction μ-map has a void (μ 0) reaching
    ``void_mm`` beyond the rod, as MR-based attenuation correction shows around metal."""
    c = np.asarray(centre_mm if centre_mm is not None else _hip(ph), float)
    nz, ny, nx = ph.mumap.shape
    sx, sy, sz = ph.mumap.spacing
    ox, oy, oz = ph.mumap.origin
    z = (oz + sz * np.arange(nz))[:, None, None] - c[2]
    y = (oy + sy * np.arange(ny))[None, :, None] - c[1]
    x = (ox + sx * np.arange(nx))[None, None, :] - c[0]
    r = np.sqrt(x * x + y * y)

    def rod(extra):
        rad = max(radius_mm, 0.6 * max(sx, sy)) + extra     # at least one voxel per slice
        return (r <= rad) & (np.abs(z) <= length_mm / 2 + extra)

    implant, void = rod(0.0), rod(void_mm)
    if not (ph.mumap.array[implant] > BODY_MU).any():
        raise NMAIError(f"the implant at {tuple(np.round(c, 1))} mm lies outside the body; give centre_mm")
    mu_sim = np.where(implant, np.float32(STEEL_MU), ph.mumap.array)
    act = np.where(implant, np.float32(0.0), ph.activity.array)
    mu_recon = np.where(void, np.float32(0.0), ph.mumap.array)
    in_body = (ph.mumap.array > BODY_MU).any(axis=(1, 2))
    truth = _truth("metal", void_mm, "mm", slice_span((implant | void).any(axis=(1, 2)) & in_body),
                   centre_lps_mm=[float(v) for v in c], radius_mm=radius_mm, length_mm=length_mm,
                   implant_mu_cm=STEEL_MU, implant_voxels=int(implant.sum()), void_voxels=int(void.sum()))
    return ArtifactCase(ph.activity.derive(act), ph.mumap.derive(mu_sim), ph.mumap.derive(mu_recon), truth=truth)


def low_counts(ph, count_fraction: float = 0.1) -> ArtifactCase:
    if not 0 < count_fraction <= 1:
        raise NMAIError(f"count fraction must be in (0, 1], got {count_fraction}")
    truth = _truth("low_counts", 1.0 / count_fraction, "x fewer counts", _body_slices(ph.mumap.array),
                   count_fraction=float(count_fraction))
    return _case(ph, count_fraction=float(count_fraction), truth=truth)


MAKERS = {"motion": (patient_motion, "shift_mm"), "respiratory": (respiratory, "amplitude_mm"),
          "misregistration": (misregistration, "shift_mm"), "truncation": (truncation, "fov_mm"),
          "failed_blocks": (failed_blocks, "blocks"), "metal": (metal, "void_mm"),
          "low_counts": (low_counts, "count_fraction"), "none": (clean, None)}


def make_case(kind: str, ph, severity=None, **kw) -> ArtifactCase:
    """``make_case("misregistration", phantom, 10.0)``: ``severity`` is the function's main parameter
    (see the table above; for failed_blocks the number of adjacent dead blocks from block 10)."""
    if kind not in MAKERS:
        raise NMAIError(f"unknown artifact {kind!r}; use one of {', '.join(MAKERS)}")
    fn, name = MAKERS[kind]
    if severity is not None and name is not None:
        kw[name] = tuple(range(10, 10 + int(severity))) if kind == "failed_blocks" else severity
    return fn(ph, **kw)


def simulate_case(case: ArtifactCase, *, seed: int = 0, duration_s: float = 180.0, reconstruct_image: bool = True,
                  iterations: int = 3, subsets: int = 14, noise: bool = True, progress=None):
    """Simulate the case's acquisition and reconstruct it with its reconstruction μ-map: (acq, recon|None)."""
    from ..progress import as_progress
    from .recon import reconstruct

    progress = as_progress(progress)
    acq = simulate_acquisition(case.activity, case.mumap_sim, case.scanner, duration_s=duration_s,
                               frames=case.frames, count_fraction=case.count_fraction, seed=seed,
                               motion=case.motion, noise=noise, progress=progress.sub(0.0, 0.5))
    acq.info["artifact"] = case.truth
    if case.stale_norm:     # what the scanner's software believes: the efficiencies before the failure
        acq.norm = case.scanner.with_(failed_blocks=()).normalisation()
    recon = None
    if reconstruct_image:
        recon = reconstruct(acq, case.mumap_recon, iterations=iterations, subsets=subsets,
                            progress=progress.sub(0.5, 1.0))
        recon.metadata["artifact"] = case.truth
    return acq, recon
