"""Simulated acquisitions: expected counts, Poisson noise, count thinning, frames, rigid motion; storage.

Counts. A voxel of x Bq/ml (activity at scan start) and volume V ml gives, in LOR i of its slice,
κ · n_i · a_i · (A G x)_i · V · T_eff expected true coincidences (see :mod:`nmai.sim.model`), T_eff the
decay-weighted frame length. With the defaults (FDG 3.5 MBq/kg, 60 min uptake, 180 s per bed, NEMA
sensitivity 15 cps/kBq) a 75 kg whole-body phantom gives of the order of 10⁷ trues and a few × 10⁷
prompts per bed position (258 mm of axial FOV); ``simulation.json`` reports the exact numbers.

Noise. Prompts ~ Poisson(trues + scatter + randoms), drawn from ``SeedSequence([seed, 1])``. With
``count_fraction`` f < 1 each prompt of that full-count realisation is then kept with probability f
(binomial thinning, ``SeedSequence([seed, 2])``) — exactly a list-mode subsample, i.e. the same patient
and the same scan at f × the counts; the model used for reconstruction scales with f, so images stay in
Bq/ml. Same seed → identical counts.

Files (``save``/``load``, no pickle): ``acquisition.npz`` with ``prompts`` (frames, slices, views, bins;
smallest unsigned integer type), the expected scatter + randoms of the full-count, all-frames acquisition
as ``background_f16`` × ``background_scale`` (slices, views, bins; float16, relative precision 5·10⁻⁴)
and ``norm`` (views, bins); ``acquisition.json`` with the scanner, grid, frames, count fraction and
totals. The μ-map used to simulate is written beside them by the caller.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NMAIError
from ..io import atomic_path, write_json
from ..progress import as_progress
from ..volume import Volume
from .background import randoms_shape, scale_backgrounds, scatter_shape
from .model import GaussianPSF, rows_to_sino, volume_to_columns
from .projector import Grid2D, system_matrix
from .scanner import DEFAULT_SCANNER, Scanner, frame_decay_integral

FORMAT = "nmai-sim-acquisition/1"


@dataclass
class Acquisition:
    scanner: Scanner
    grid: Grid2D
    spacing: tuple                  # (dx, dy, dz) mm of the image grid
    origin: tuple                   # LPS of voxel (0, 0, 0)
    prompts: np.ndarray             # (frames, slices, views, bins) integer counts
    background: np.ndarray          # (slices, views, bins) float32, full count, all frames
    norm: np.ndarray                # (views, bins) float32
    frames: list                    # [(start_s, duration_s)] relative to scan start
    count_fraction: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.prompts.shape[1])

    @property
    def slice_mm(self) -> float:
        return float(self.spacing[2])

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def frame_weight(self, frame: int | None) -> float:
        """T_eff of one frame (or of all, for None), seconds."""
        sel = self.frames if frame is None else [self.frames[frame]]
        return float(sum(frame_decay_integral(s, d) for s, d in sel))

    def image_volume(self, array, **kw) -> Volume:
        return Volume(array, self.spacing, self.origin, np.eye(3), **kw)

    # ------------------------------------------------------------------ storage
    def save(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "acquisition.npz") as tmp:
            with open(tmp, "wb") as fh:
                # the smooth expected background is stored as float16 × scale (relative precision 5e-4)
                scale = max(float(self.background.max(initial=0.0)) / 30000.0, 1e-30)
                np.savez_compressed(fh, prompts=self.prompts, norm=self.norm, background_scale=np.float64(scale),
                                    background_f16=(self.background / scale).astype(np.float16))
        write_json(folder / "acquisition.json", {
            "format": FORMAT, "scanner": self.scanner.to_dict(), "grid": self.grid.to_dict(),
            "spacing_mm": list(self.spacing), "origin_lps_mm": list(self.origin),
            "shape": {"frames": int(self.prompts.shape[0]), "slices": self.n_slices,
                      "views": self.scanner.n_views, "bins": self.scanner.n_bins},
            "sinogram_layout": "prompts[frame, slice, view, bin]; LOR of (view v, bin t) joins crystals "
                               "a = v + N/4 + ceil(t/2), b = v - N/4 - floor(t/2), t = bin - bins/2",
            "frames_s": [list(f) for f in self.frames], "count_fraction": self.count_fraction,
            "info": self.info})

    @classmethod
    def load(cls, folder) -> "Acquisition":
        folder = Path(folder)
        meta_path, data_path = folder / "acquisition.json", folder / "acquisition.npz"
        if not meta_path.exists() or not data_path.exists():
            raise NMAIError(f"{folder}: not a simulation folder (acquisition.json/.npz missing); "
                            "create one with 'nmai simulate'")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise NMAIError(f"{meta_path}: invalid JSON ({exc})") from None
        if meta.get("format") != FORMAT:
            raise NMAIError(f"{meta_path}: unknown acquisition format {meta.get('format')!r}")
        with np.load(data_path, allow_pickle=False) as z:
            prompts, norm = z["prompts"], z["norm"]
            if "background_f16" in z:
                background = z["background_f16"].astype(np.float32) * np.float32(z["background_scale"])
            else:
                background = z["background"].astype(np.float32)
        return cls(Scanner.from_dict(meta["scanner"]), Grid2D.from_dict(meta["grid"]),
                   tuple(meta["spacing_mm"]), tuple(meta["origin_lps_mm"]), prompts, background, norm,
                   [tuple(f) for f in meta["frames_s"]], float(meta["count_fraction"]), meta.get("info", {}))


def thin_prompts(prompts: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep each prompt with probability ``fraction`` (binomial thinning, ``SeedSequence([seed, 2])``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 2])).binomial(prompts, fraction)


def thinned(acq: Acquisition, fraction: float) -> Acquisition:
    """The same scan at ``fraction`` × its counts: identical to simulating it with that ``count_fraction``
    (same seed), without projecting again. Only for full-count Poisson acquisitions."""
    if acq.count_fraction != 1.0 or not np.issubdtype(acq.prompts.dtype, np.integer):
        raise NMAIError("only a full-count Poisson acquisition can be thinned")
    if not 0.0 < fraction <= 1.0:
        raise NMAIError(f"count fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return acq
    seed = int(acq.info.get("seed", 0))
    prompts = thin_prompts(acq.prompts, fraction, seed).astype(acq.prompts.dtype)
    total = float(prompts.sum(dtype=np.float64))
    info = dict(acq.info, prompts=total, thinning_seed=f"SeedSequence([{seed}, 2])",
                prompts_per_bed=total / max(float(acq.info.get("bed_positions_equivalent", 1.0)), 1.0))
    return dataclasses.replace(acq, prompts=prompts, count_fraction=float(fraction), info=info)


# ---------------------------------------------------------------------------------------------- checks
def check_inputs(activity: Volume, mumap: Volume) -> None:
    """Refuse what cannot be simulated, with a message that names the fix."""
    for vol, name, unit in ((activity, "activity", "Bq/ml"), (mumap, "μ-map", "cm-1")):
        a = vol.array
        if a.ndim != 3:
            raise NMAIError(f"{name} must be a 3-D volume, got {a.ndim}-D")
        if not np.issubdtype(a.dtype, np.number):
            raise NMAIError(f"{name} must be numeric")
        if not np.all(np.isfinite(a)):
            raise NMAIError(f"{name} contains {int(np.size(a) - np.isfinite(a).sum())} NaN/infinite voxels; "
                            "replace them (e.g. by 0) before simulating")
        if a.min() < 0:
            raise NMAIError(f"{name} has negative values (min {float(a.min()):.4g} {unit}); "
                            f"a {name} must be >= 0 — clip or fix the input")
        if vol.units not in (unit, "1"):
            raise NMAIError(f"{name} is in {vol.units}, expected {unit}")
    if not activity.same_grid(mumap, tol=1e-3):
        raise NMAIError(f"activity and μ-map are on different grids (shape {activity.shape} vs {mumap.shape}, "
                        f"spacing {activity.spacing} vs {mumap.spacing}); resample the μ-map to the activity grid")
    if not np.allclose(activity.direction, np.eye(3), atol=1e-4):
        raise NMAIError("the simulator needs an axial grid with identity direction; resample the volume first")
    mu_max = float(mumap.array.max())
    if mu_max > 1.0:
        raise NMAIError(f"μ-map maximum is {mu_max:.3g} cm⁻¹ (bone is ~0.17): is it in mm⁻¹·100 or HU? "
                        "Give μ at 511 keV in cm⁻¹")


def grid_of(volume: Volume) -> Grid2D:
    nz, ny, nx = volume.shape
    return Grid2D.centred(nx, ny, volume.spacing[0], volume.spacing[1])


# ---------------------------------------------------------------------------------------------- motion
def move(array: np.ndarray, spacing, translation_mm=(0.0, 0.0, 0.0), rotation_deg: float = 0.0,
         order: int = 1) -> np.ndarray:
    """Rigid motion of a [k, j, i] volume: rotation about the scanner axis (through the grid centre),
    then translation (x, y, z mm)."""
    from scipy.ndimage import affine_transform

    if not any(translation_mm) and not rotation_deg:
        return array
    nz, ny, nx = array.shape
    th = math.radians(rotation_deg)
    c, s = math.cos(th), math.sin(th)
    # output index (k, j, i) -> input index: inverse rotation about the centre, minus the translation
    sx, sy, sz = spacing
    centre = np.array([(nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2])
    rot = np.array([[1, 0, 0], [0, c, s * sx / sy], [0, -s * sy / sx, c]])
    shift = np.array([translation_mm[2] / sz, translation_mm[1] / sy, translation_mm[0] / sx])
    offset = centre - rot @ (centre + shift)
    return affine_transform(array, rot, offset=offset, order=order, mode="constant", cval=0.0)


# ---------------------------------------------------------------------------------------------- simulate
def simulate_acquisition(activity: Volume, mumap: Volume, scanner: Scanner = DEFAULT_SCANNER, *,
                         duration_s: float = 180.0, frames: int = 1, count_fraction: float = 1.0,
                         seed: int = 0, motion: list | None = None, scatter_fraction: float | None = None,
                         randoms_fraction: float | None = None, noise: bool = True,
                         progress=None) -> Acquisition:
    """Simulate a 2-D (per-slice) acquisition of ``activity`` (Bq/ml at scan start) in ``mumap`` (cm⁻¹).

    ``frames`` equal frames over ``duration_s``; ``motion``: one dict per frame with ``translation_mm``
    (x, y, z) and ``rotation_deg`` (about the scanner axis) applied to activity and μ-map in that frame.
    ``noise=False`` stores the expected counts (float32) instead of a Poisson realisation.
    """
    import torch

    progress = as_progress(progress)
    check_inputs(activity, mumap)
    if not 0.0 < count_fraction <= 1.0:
        raise NMAIError(f"count fraction must be in (0, 1], got {count_fraction}")
    if duration_s <= 0 or frames < 1:
        raise NMAIError("duration must be > 0 s and frames >= 1")
    if motion is not None and len(motion) != frames:
        raise NMAIError(f"motion needs one entry per frame ({frames}), got {len(motion)}")
    grid = grid_of(activity)
    spacing = activity.spacing
    voxel_ml = activity.voxel_volume_ml
    progress(0.0, "building the system matrix")
    sm = system_matrix(scanner, grid)
    psf = GaussianPSF(grid, spacing[2], scanner.resolution_fwhm_mm)
    fov = grid.fov_mask(scanner.transaxial_fov_mm)
    outside = float(activity.array[:, ~fov].sum(dtype=np.float64))
    inside = float(activity.array.sum(dtype=np.float64)) - outside
    mask = torch.from_numpy(fov.reshape(-1, 1).astype(np.float32))
    norm = scanner.normalisation()
    norm_rows = torch.from_numpy(norm.reshape(-1, 1))
    kappa = scanner.lor_weight(grid.pixel_area_mm2)
    frame_list = [(i * duration_s / frames, duration_s / frames) for i in range(frames)]
    t_eff = [frame_decay_integral(s, d) for s, d in frame_list]

    def emission_and_mu(f):
        act, mu = activity.array, mumap.array
        if motion is not None:
            m = motion[f]
            act = move(act, spacing, m.get("translation_mm", (0, 0, 0)), m.get("rotation_deg", 0.0))
            mu = move(mu, spacing, m.get("translation_mm", (0, 0, 0)), m.get("rotation_deg", 0.0))
        x = volume_to_columns(act) * mask
        line_mu = 0.1 * sm.forward(volume_to_columns(mu))
        return kappa * voxel_ml * sm.forward(psf(x)), line_mu

    trues = []
    static = None
    for f in range(frames):
        progress(0.05 + 0.5 * f / frames, f"projecting frame {f + 1}/{frames}")
        if f == 0 or motion is not None:
            emis, line_mu = emission_and_mu(f)
            if static is None:
                static = (emis, line_mu)
        trues.append(emis * (t_eff[f] * norm_rows) * torch.exp(-line_mu))
    trues_total = float(sum(float(t.sum(dtype=torch.float64)) for t in trues))
    progress(0.6, "scatter and randoms")
    nv, nb = scanner.n_views, scanner.n_bins
    emis0, line_mu0 = static
    scat = scatter_shape(rows_to_sino(emis0 * sum(t_eff), nv, nb), rows_to_sino(line_mu0, nv, nb), norm,
                         scanner, spacing[2])
    per_slice = activity.array.sum(axis=(1, 2), dtype=np.float64) * voxel_ml
    rand = randoms_shape(per_slice, scanner, spacing[2])
    s_total, r_total = scale_backgrounds(trues_total, scat, rand, scanner, scatter_fraction, randoms_fraction)
    background = scat
    background += rand
    del rand
    progress(0.8, "Poisson counts")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    prompts = []
    total_teff = sum(t_eff)
    for f in range(frames):
        lam = rows_to_sino(trues[f], nv, nb).astype(np.float64)
        lam += background * (t_eff[f] / total_teff)
        prompts.append(rng.poisson(lam) if noise else lam.astype(np.float32))
    prompts = np.stack(prompts)
    full_prompts = float(prompts.sum(dtype=np.float64))
    if count_fraction < 1.0:
        if noise:
            prompts = thin_prompts(prompts, count_fraction, seed)
        else:
            prompts = prompts * np.float32(count_fraction)
    if noise:
        prompts = prompts.astype(np.uint16 if prompts.max(initial=0) < 65535 else np.uint32)
    axial_mm = activity.shape[0] * spacing[2]
    beds = max(axial_mm / scanner.axial_fov_mm, 1e-9)
    info = {
        "seed": int(seed), "duration_s": float(duration_s), "frames": frames,
        "noise_seed": f"SeedSequence([{int(seed)}, 1])",
        "thinning_seed": f"SeedSequence([{int(seed)}, 2])" if count_fraction < 1 else None,
        "motion": motion,
        "activity_in_fov_bq": inside * voxel_ml, "activity_outside_fov_bq": outside * voxel_ml,
        "expected_full_count": {"trues": trues_total, "scatter": s_total, "randoms": r_total,
                                "prompts": trues_total + s_total + r_total,
                                "nec": trues_total ** 2 / max(trues_total + s_total + r_total, 1e-30)},
        "full_count_prompts": full_prompts,
        "noise": "poisson" if noise else "none (expected counts)",
        "prompts": float(prompts.sum(dtype=np.float64)),
        "axial_extent_mm": axial_mm,
        "bed_positions_equivalent": beds,
        "prompts_per_bed": float(prompts.sum(dtype=np.float64)) / max(beds, 1.0),
        "scatter_fraction": s_total / max(trues_total + s_total, 1e-30),
        "randoms_fraction": r_total / max(trues_total + s_total + r_total, 1e-30),
        "sensitivity_per_decay": scanner.sensitivity, "lor_weight_kappa": kappa,
    }
    progress(1.0, "acquisition simulated")
    return Acquisition(scanner, grid, tuple(spacing), tuple(activity.origin), prompts,
                       np.ascontiguousarray(background, dtype=np.float32), norm, frame_list,
                       float(count_fraction), info)
