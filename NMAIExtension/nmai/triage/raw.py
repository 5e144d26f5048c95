"""Raw-data (sinogram) triage, frame by frame as frames arrive: failed detector blocks, count-rate
anomalies, patient motion between frames.

Input per frame: prompts ``(slices, views, bins)`` in the crystal-pair layout of :mod:`nmai.sim.scanner`
(view v, radial bin t join crystals a = v + N/4 + ⌈t/2⌉, b = v − N/4 − ⌊t/2⌋), the frame start and
duration. Only the scanner's geometry and its *healthy* crystal-efficiency pattern (the normalisation a
site has from its daily QC) are used: which blocks failed is never read from the header.

Checks (thresholds are the keyword arguments of :class:`RawTriage`):

* **failed blocks** — fan sums: every prompt counts for both of its crystals; each crystal's sum is divided
  by its healthy efficiency and summed per block. A block whose sum is below ``block_failed`` (0.5) × the
  median of the 3 blocks on each side, by more than 5 Poisson σ, is failed (alarm ``repeat``); below
  ``block_low`` (0.75) it is low (``check``). The object makes fan sums vary slowly round the ring, a dead
  block is a notch, so no object model is needed.
* **count rate** — prompts per second, decay-corrected to scan start (F-18 unless the header gives
  ``half_life_s``), against the median of up to 5 earlier frames: a change beyond ``rate_tolerance``
  (15 %) and 5 Poisson σ is ``check``; beyond ``rate_repeat`` (50 %) ``repeat``.
* **motion** — the frame is registered to the first frame in sinogram space: a rigid shift (dx, dy, dz)
  moves sinogram bin (v, s) to s + dx cos φ_v + dy sin φ_v and the slices by dz, so the shift is fitted by
  Gauss–Newton (Lucas–Kanade) on band-passed sinograms (views in groups of 8, s resampled to 4 mm;
  band-pass 10–32 mm removes the smooth scatter/randoms background, which does not carry the edges).
  |shift| ≥ ``motion_check_mm`` (4 mm, so that 5 mm moves are caught given the ~5 % low bias at low
  counts) is ``check``, ≥ ``motion_repeat_mm`` (10 mm) ``repeat``; the same limits apply to the change
  since the previous frame. Below ``motion_min_counts_per_cm`` (5000) prompts per cm of axial extent the
  estimate is not made (at 5000 the shift of a still patient is estimated within ~1 mm).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import NMAIError
from ..sim.scanner import F18_HALF_LIFE_S, Scanner, frame_decay_integral

ALARMS = ("ok", "check", "repeat")
S_STEP_MM = 4.0          # uniform radial sampling for the motion fit
BAND_MM = (10.0, 32.0)   # band-pass (Gaussian σ of the smoothing and of the removed background)


def worst(alarms) -> str:
    return max(alarms, key=ALARMS.index, default="ok")


class SinogramGeometry:
    """What the checks need from a scanner, precomputed once."""

    def __init__(self, scanner: Scanner, slice_mm: float):
        healthy = scanner.with_(failed_blocks=())
        self.scanner, self.slice_mm = healthy, float(slice_mm)
        self.shape_vb = (healthy.n_views, healthy.n_bins)
        self.a, self.b = healthy.lor_crystals()
        self.eff = healthy.crystal_efficiencies()
        self.norm = healthy.normalisation()
        self.in_fov = healthy.lor_in_fov()
        g = healthy.crystal_group
        self.block_of = (np.arange(healthy.n_crystals) * g) // healthy.crystals_per_block
        self.n_blocks = healthy.crystals // healthy.crystals_per_block
        # motion: view groups and a uniform radial grid
        n, nv = healthy.n_crystals, healthy.n_views
        self.group = max(1, nv // 28)
        while nv % self.group:
            self.group -= 1
        phi = np.pi * (2 * np.arange(nv) + 0.5) / n
        phi = phi.reshape(-1, self.group).mean(axis=1)
        self.cos, self.sin = np.cos(phi), np.sin(phi)
        half = healthy.transaxial_fov_mm / 2.0
        self.s = np.arange(-half + S_STEP_MM / 2, half, S_STEP_MM)
        t = -(n / np.pi) * np.arcsin(self.s / healthy.radius_mm) + healthy.n_bins // 2   # fractional bin
        self.t0 = np.clip(np.floor(t).astype(int), 0, healthy.n_bins - 2)
        self.tf = (t - self.t0).astype(np.float32)

    def dead_lors(self, blocks) -> np.ndarray | None:
        if not blocks:
            return None
        dead = np.isin(self.block_of, list(blocks))
        return dead[self.a] | dead[self.b]


# ---------------------------------------------------------------------------------------------- blocks
def block_sums(summed: np.ndarray, geo: SinogramGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(normalised block sums, raw block sums) of a slice-summed (views, bins) sinogram."""
    w = summed.ravel().astype(np.float64)
    n = len(geo.eff)
    fan = np.bincount(geo.a.ravel(), w, n) + np.bincount(geo.b.ravel(), w, n)
    norm = np.bincount(geo.block_of, fan / np.maximum(geo.eff, 1e-6), geo.n_blocks)
    raw = np.bincount(geo.block_of, fan, geo.n_blocks)
    return norm, raw


def check_blocks(summed: np.ndarray, geo: SinogramGeometry, failed: float = 0.5, low: float = 0.75,
                 sigmas: float = 5.0) -> list:
    norm, raw = block_sums(summed, geo)
    nb = geo.n_blocks
    idx = (np.arange(nb)[:, None] + np.array([-3, -2, -1, 1, 2, 3])[None]) % nb
    ref = np.median(norm[idx], axis=1)
    scale = raw / np.maximum(norm, 1e-30)                    # mean efficiency of the block's crystals
    scale = np.where(norm > 0, scale, np.median(scale[norm > 0]) if (norm > 0).any() else 1.0)
    deficit, sd = (ref - norm) * scale, np.sqrt(np.maximum(ref * scale, 1.0))
    ratio = norm / np.maximum(ref, 1e-30)
    findings = []
    for blk in np.flatnonzero((ratio < low) & (deficit > sigmas * sd)):
        kind = "failed" if ratio[blk] < failed else "low"
        findings.append({"block": int(blk), "state": kind, "ratio": round(float(ratio[blk]), 3),
                         "counts": int(raw[blk]), "expected": int(round(ref[blk] * scale[blk]))})
    return findings


# ---------------------------------------------------------------------------------------------- motion
def motion_features(prompts: np.ndarray, geo: SinogramGeometry, dead=None) -> np.ndarray:
    """(slices, view groups, s) band-passed count density: what the motion fit compares."""
    from scipy.ndimage import gaussian_filter1d

    q = prompts.astype(np.float32)
    q /= geo.norm                                            # ∝ line integral, uniform in s
    q *= geo.in_fov
    if dead is not None:                                     # bridge dead LORs along s
        ok = (~dead & geo.in_fov).astype(np.float32)
        fill = gaussian_filter1d(q * ok, 8, axis=2) / np.maximum(gaussian_filter1d(ok, 8, axis=1), 1e-3)
        q = np.where(dead, fill, q)
    z, v, _ = q.shape
    q = q.reshape(z, v // geo.group, geo.group, -1).sum(axis=2)
    u = q[..., geo.t0] * (1 - geo.tf) + q[..., geo.t0 + 1] * geo.tf
    if z > 2:
        u = gaussian_filter1d(u, 0.7, axis=0)
    lo, hi = (m / S_STEP_MM for m in BAND_MM)
    return gaussian_filter1d(u, lo, axis=2) - gaussian_filter1d(u, hi, axis=2)


def estimate_shift(ref: np.ndarray, cur: np.ndarray, geo: SinogramGeometry, iterations: int = 5) -> np.ndarray:
    """Rigid shift (dx, dy, dz) in mm that takes ``ref`` features onto ``cur`` features."""
    from scipy.ndimage import map_coordinates

    z, v, s = ref.shape
    d = np.zeros(3)
    keep = slice(2, z - 2) if z > 8 else slice(None)          # axial ends: activity enters/leaves the FOV
    zz, vv, ss = np.meshgrid(np.arange(z, dtype=np.float32), np.arange(v, dtype=np.float32),
                             np.arange(s, dtype=np.float32), indexing="ij")
    scale = float(np.abs(cur).sum() / max(np.abs(ref).sum(), 1e-30))
    for _ in range(iterations):
        shift_s = (geo.cos * d[0] + geo.sin * d[1]) / S_STEP_MM
        warped = map_coordinates(ref, [zz - d[2] / geo.slice_mm, vv, ss - shift_s[None, :, None]], order=1,
                                 mode="nearest")
        mean = 0.5 * (scale * warped + cur)                   # symmetric gradient: less noise bias
        gs = np.gradient(mean, S_STEP_MM, axis=2)
        gz = np.gradient(mean, geo.slice_mm, axis=0) if z > 1 else np.zeros_like(mean)
        cols = [warped, -gs * geo.cos[None, :, None], -gs * geo.sin[None, :, None], -gz]
        jac = np.stack([c[keep].ravel() for c in cols], axis=1).astype(np.float64)
        sol = np.linalg.lstsq(jac, cur[keep].ravel().astype(np.float64), rcond=None)[0]
        step = sol[1:]                                        # mm: the gradient already carries the gain
        if z == 1:
            step[2] = 0.0
        d += np.clip(step, -10.0, 10.0)
        if np.abs(step).max() < 0.05:
            break
    return d


# ---------------------------------------------------------------------------------------------- triage
class RawTriage:
    """Stateful per-frame checker: feed frames in acquisition order to :meth:`check`."""

    def __init__(self, scanner: Scanner, slice_mm: float, slices: int | None = None, *,
                 half_life_s: float = F18_HALF_LIFE_S, block_failed: float = 0.5, block_low: float = 0.75,
                 rate_tolerance: float = 0.15, rate_repeat: float = 0.5, motion_check_mm: float = 4.0,
                 motion_repeat_mm: float = 10.0, motion_min_counts_per_cm: float = 5000.0):
        self.geo = SinogramGeometry(scanner, slice_mm)
        self.slices = slices
        self.half_life_s = float(half_life_s)
        self.block_failed, self.block_low = block_failed, block_low
        self.rate_tolerance, self.rate_repeat = rate_tolerance, rate_repeat
        self.motion_check_mm, self.motion_repeat_mm = motion_check_mm, motion_repeat_mm
        self.motion_min_counts_per_cm = motion_min_counts_per_cm
        self.rates: list = []
        self.reference = None
        self.previous_shift = None
        self.n = 0

    @classmethod
    def from_header(cls, header: dict, **options) -> "RawTriage":
        return cls(Scanner.from_dict(header["scanner"]), header["slice_mm"], header.get("slices"),
                   half_life_s=header.get("half_life_s", F18_HALF_LIFE_S), **options)

    def check_geometry(self, prompts) -> None:
        got = tuple(np.shape(prompts))
        if len(got) != 3 or got[1:] != self.geo.shape_vb or (self.slices and got[0] != self.slices):
            raise NMAIError(f"prompts of shape {got} do not fit this scan: the header says (slices, views, bins) = "
                            f"{(self.slices or '?',) + self.geo.shape_vb}; a frame from another scanner or "
                            "bed position? Write it to its own folder")
        if not np.issubdtype(np.asarray(prompts).dtype, np.number):
            raise NMAIError("prompts must be numeric counts")

    def check(self, prompts: np.ndarray, *, frame: int | None = None, start_s: float | None = None,
              duration_s: float | None = None) -> dict:
        """One frame → ``{type, frame, alarm, findings, prompts, rate_cps, ...}`` (see the module doc)."""
        t0 = time.perf_counter()
        self.check_geometry(prompts)
        frame = self.n if frame is None else int(frame)
        self.n += 1
        summed = prompts.sum(axis=0, dtype=np.float64)
        total = float(summed.sum())
        findings = []
        blocks = check_blocks(summed, self.geo, self.block_failed, self.block_low)
        if blocks:
            dead = [b["block"] for b in blocks if b["state"] == "failed"]
            findings.append({"type": "failed_blocks", "alarm": "repeat" if dead else "check", "blocks": blocks,
                             "message": f"detector block(s) {', '.join(str(b['block']) for b in blocks)} "
                                        f"{'dead' if dead else 'low'} (counts {blocks[0]['ratio']:.0%} of "
                                        "neighbours): call service; the frame's image will show streaks"})
        dead_blocks = [b["block"] for b in blocks if b["state"] == "failed"]
        result = {"type": "frame", "frame": frame, "alarm": "ok", "findings": findings, "prompts": int(total),
                  "failed_blocks": dead_blocks}
        result.update(self._rate(total, start_s, duration_s, findings))
        result.update(self._motion(prompts, total, dead_blocks, findings))
        result["alarm"] = worst(f["alarm"] for f in findings)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    def _rate(self, total, start_s, duration_s, findings) -> dict:
        if not duration_s or duration_s <= 0:
            return {"rate_cps": None}
        start = float(start_s or 0.0)
        decays = frame_decay_integral(start, float(duration_s), self.half_life_s)   # s, decay-weighted
        rate = total / decays
        earlier = self.rates[-5:]
        self.rates.append(rate)
        out = {"rate_cps": round(total / duration_s, 1), "rate_cps_decay_corrected": round(rate, 1)}
        if not earlier:
            return out
        expected_rate = float(np.median(earlier))
        expected = expected_rate * decays
        change = rate / expected_rate - 1.0
        out["rate_change"] = round(change, 4)
        if abs(change) > self.rate_tolerance and abs(total - expected) > 5.0 * math.sqrt(max(expected, 1.0)):
            alarm = "repeat" if abs(change) > self.rate_repeat else "check"
            findings.append({"type": "count_rate", "alarm": alarm, "change": round(change, 4),
                             "rate_cps": round(total / duration_s, 1),
                             "expected_cps": round(expected / duration_s, 1),
                             "message": f"count rate {'dropped' if change < 0 else 'rose'} by {abs(change):.0%} "
                                        "against earlier frames (decay-corrected): check the patient, the "
                                        "injection site and the scanner"})
        return out

    def _motion(self, prompts, total, dead_blocks, findings) -> dict:
        per_cm = total / (prompts.shape[0] * self.geo.slice_mm / 10.0)
        if per_cm < self.motion_min_counts_per_cm:
            return {"shift_mm": None, "motion_note": f"too few counts for the motion check ({per_cm:.0f} < "
                                                     f"{self.motion_min_counts_per_cm:g} prompts per cm axially)"}
        feats = motion_features(prompts, self.geo, self.geo.dead_lors(dead_blocks))
        if self.reference is None:
            self.reference = feats
            self.previous_shift = np.zeros(3)
            return {"shift_mm": [0.0, 0.0, 0.0], "motion_reference": True}
        shift = estimate_shift(self.reference, feats, self.geo)
        since = shift - self.previous_shift
        self.previous_shift = shift
        mag, mag_since = float(np.linalg.norm(shift)), float(np.linalg.norm(since))
        big = max(mag, mag_since)
        if big >= self.motion_check_mm:
            findings.append({"type": "motion", "alarm": "repeat" if big >= self.motion_repeat_mm else "check",
                             "shift_mm": [round(float(x), 2) for x in shift], "magnitude_mm": round(mag, 2),
                             "since_previous_mm": round(mag_since, 2),
                             "message": f"patient moved {mag:.1f} mm from the first frame "
                                        f"({mag_since:.1f} mm since the previous one): the μ-map no longer "
                                        "matches; check the patient's position"})
        return {"shift_mm": [round(float(x), 2) for x in shift], "since_previous_mm": round(mag_since, 2)}


def watch_frames(frames, scanner: Scanner, slice_mm: float, slices: int | None = None, **options):
    """Generator: one result dict per frame of ``frames`` (an iterable of dicts with ``prompts`` and
    optionally ``frame``, ``start_s``, ``duration_s``, ``file``). A frame that cannot be checked (wrong
    geometry, ``error`` set by the reader) yields ``alarm: check`` with ``refused: true`` and the
    message; the generator goes on with the next frame."""
    triage = RawTriage(scanner, slice_mm, slices, **options)
    for item in frames:
        yield check_item(triage, item)


def check_item(triage: RawTriage, item: dict) -> dict:
    extra = {k: item[k] for k in ("file",) if k in item}
    if item.get("error"):
        return refused(item.get("frame"), item["error"], **extra)
    try:
        result = triage.check(item["prompts"], frame=item.get("frame"), start_s=item.get("start_s"),
                              duration_s=item.get("duration_s"))
    except NMAIError as exc:
        return refused(item.get("frame"), str(exc), **extra)
    result.update(extra)
    return result


def refused(frame, message: str, **extra) -> dict:
    return {"type": "frame", "frame": frame, "alarm": "check", "refused": True,
            "findings": [{"type": "unreadable", "alarm": "check", "message": message}], **extra}


def acquisition_frames(acq):
    """Frame dicts of a simulated :class:`~nmai.sim.acquisition.Acquisition` (for :func:`watch_frames`)."""
    for f, (start, duration) in enumerate(acq.frames):
        yield {"frame": f, "prompts": acq.prompts[f], "start_s": start, "duration_s": duration}
