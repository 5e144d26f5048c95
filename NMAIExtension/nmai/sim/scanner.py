"""Scanner model: ring geometry, crystal-pair lines of response, normalisation, resolution, count levels.

The default scanner is modelled on a clinical whole-body PET/MR (Siemens Biograph mMR class, Delso et al.,
J Nucl Med 52:1914 (2011)): a ring of 448 LSO crystals (4 mm wide, 20 mm deep) on a 656 mm diameter,
a 594 mm transaxial and 258 mm axial field of view, sinograms of 344 radial bins × 224 views, NEMA NU 2
sensitivity 15 cps/kBq, scatter fraction ~37 % and an FDG whole-body randoms fraction of ~25 %.

The acquisition model is **per slice (2-D)**: every transaxial slice of the image is its own 2-D ring
acquisition. What this leaves out (and so what no result of the simulator can speak to):

* oblique (cross-plane) LORs and 3-D/2-D rebinning, so the axial resolution is only the image-space PSF;
* the axial sensitivity profile of a 3-D scanner (triangular, peaking at the centre): every slice gets the
  scanner's *mean* sensitivity for activity inside the axial FOV; a whole-body scan is modelled as each
  axial position being acquired for the bed duration (like continuous-bed-motion);
* 3-D scatter: scatter is an additive, smooth function of the emission × attenuation in the same slice
  (with a small axial blur), scaled to the scanner's scatter fraction — see :mod:`nmai.sim.background`;
* dead time, pile-up, time-of-flight, depth-of-interaction blurring (folded into the PSF), positron range
  beyond the Gaussian PSF, block detector gaps (use ``failed_blocks`` to model dead blocks).

Sinogram convention: a crystal-pair sinogram. For N crystals at angles 2πc/N, view v (0 ≤ v < N/2) and
signed radial index t (−B/2 ≤ t < B/2) join crystals a = v + N/4 + ⌈t/2⌉ and b = v − N/4 − ⌊t/2⌋
(mod N). The LOR lies at distance s = −R sin(πt/N) from the centre, so radial sampling is the true
(non-arc-corrected) crystal sampling; the geometric efficiency of an LOR is cos(πt/N) (the crystal's
apparent width). Each view holds both crystal-sum parities (interleaved); LOR endpoints are the exact
crystal positions, so no angular approximation is made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import NMAIError

F18_HALF_LIFE_S = 6586.2  # 109.77 min
FDG_DOSE_MBQ_PER_KG = 3.5  # EANM procedure guideline v2 (Boellaard et al. 2015), 2 min/bed
DEFAULT_UPTAKE_S = 3600.0
DEFAULT_DURATION_S = 180.0  # one bed position


def decay_factor(seconds: float, half_life_s: float = F18_HALF_LIFE_S) -> float:
    return math.exp(-math.log(2.0) * seconds / half_life_s)


def frame_decay_integral(start_s: float, duration_s: float, half_life_s: float = F18_HALF_LIFE_S) -> float:
    """∫ exp(−λt) dt over [start, start + duration] (seconds): decays per Bq of activity at t = 0."""
    lam = math.log(2.0) / half_life_s
    return math.exp(-lam * start_s) * (1.0 - math.exp(-lam * duration_s)) / lam


def derenzo_fwhm_mm(crystal_mm: float, diameter_mm: float, block_mm: float = 2.0,
                    positron_mm: float = 0.54) -> float:
    """Spatial resolution of a ring PET near the centre (Moses & Derenzo):
    1.25 · sqrt((d/2)² + (0.0022 D)² + r² + b²)."""
    return 1.25 * math.sqrt((crystal_mm / 2) ** 2 + (0.0022 * diameter_mm) ** 2 + positron_mm ** 2
                            + block_mm ** 2)


@dataclass(frozen=True)
class Scanner:
    """A clinical ring PET (defaults: Biograph-mMR-class PET/MR). All lengths in mm."""

    name: str = "whole-body PET/MR (Biograph mMR class), per-slice 2-D model"
    ring_diameter_mm: float = 656.0
    crystals: int = 448                    # per ring
    crystal_mm: float = 4.0                # transaxial crystal width
    crystal_depth_mm: float = 20.0
    crystals_per_block: int = 8
    bins: int = 344                        # radial bins (≈ 2.1 mm at the centre, 612 mm span)
    transaxial_fov_mm: float = 594.0
    axial_fov_mm: float = 258.0
    crystal_group: int = 1                 # large-crystal option: g adjacent crystals read out as one
    nema_sensitivity_cps_per_kbq: float = 15.0   # NEMA NU 2 (700 mm line source)
    nema_line_source_mm: float = 700.0
    psf_fwhm_mm: float | None = None       # None: Derenzo formula for the crystal size (≈4.0 mm)
    scatter_fraction: float = 0.37         # S / (T + S), NEMA NU 2 for this class of scanner
    randoms_fraction: float = 0.25         # R / prompts, FDG whole body at clinical count rates
    crystal_efficiency_sd: float = 0.08    # relative s.d. of crystal efficiencies
    norm_seed: int = 1729                  # the scanner's own crystal efficiencies (fixed per scanner)
    failed_blocks: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        g = self.crystal_group
        if g < 1 or self.crystals % g or (self.crystals // g) % 4:
            raise NMAIError(f"crystal_group {g} must divide {self.crystals} crystals into a multiple of 4; "
                            "use 1, 2 or 4")
        if self.bins % 2:
            raise NMAIError(f"number of radial bins must be even, got {self.bins}")

    # ------------------------------------------------------------------ effective (grouped) geometry
    @property
    def radius_mm(self) -> float:
        return self.ring_diameter_mm / 2.0

    @property
    def n_crystals(self) -> int:
        return self.crystals // self.crystal_group

    @property
    def n_views(self) -> int:
        return self.n_crystals // 2

    @property
    def n_bins(self) -> int:
        b = int(round(self.bins / self.crystal_group))
        return b + (b % 2)

    @property
    def effective_crystal_mm(self) -> float:
        return self.crystal_mm * self.crystal_group

    @property
    def resolution_fwhm_mm(self) -> float:
        if self.psf_fwhm_mm is not None:
            return float(self.psf_fwhm_mm)
        return derenzo_fwhm_mm(self.effective_crystal_mm, self.ring_diameter_mm)

    @property
    def sensitivity(self) -> float:
        """Mean probability that a decay inside the axial FOV gives a detected true coincidence
        (no attenuation): NEMA sensitivity × line-source length / axial FOV (the NEMA source is longer
        than the FOV). 15 cps/kBq × 700/258 ≈ 0.041."""
        return self.nema_sensitivity_cps_per_kbq * 1e-3 * self.nema_line_source_mm / self.axial_fov_mm

    def with_(self, **changes) -> "Scanner":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failed_blocks"] = list(self.failed_blocks)
        d["derived"] = {"n_crystals": self.n_crystals, "n_views": self.n_views, "n_bins": self.n_bins,
                        "effective_crystal_mm": self.effective_crystal_mm,
                        "resolution_fwhm_mm": round(self.resolution_fwhm_mm, 3),
                        "sensitivity_per_decay": round(self.sensitivity, 6),
                        "bin_mm_at_centre": round(self.radius_mm * math.pi / self.n_crystals, 4)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scanner":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "failed_blocks" in kw:
            kw["failed_blocks"] = tuple(int(b) for b in kw["failed_blocks"])
        return cls(**kw)

    def key(self) -> tuple:
        """What the system matrix depends on."""
        return (self.ring_diameter_mm, self.crystals, self.crystal_group, self.bins)

    # ------------------------------------------------------------------ lines of response
    def radial_index(self) -> np.ndarray:
        return np.arange(-self.n_bins // 2, self.n_bins // 2)

    def lor_crystals(self) -> tuple[np.ndarray, np.ndarray]:
        """Crystal indices (a, b), each (views, bins), of every sinogram bin."""
        n = self.n_crystals
        v = np.arange(self.n_views)[:, None]
        t = self.radial_index()[None, :]
        a = (v + n // 4 + (t + 1) // 2) % n     # ceil(t/2) = (t+1)//2 for integers
        b = (v - n // 4 - t // 2) % n           # floor(t/2)
        return a, b

    def crystal_positions(self) -> np.ndarray:
        """(n_crystals, 2) transaxial positions (x, y) in mm (LPS x, y; scanner axis at the origin)."""
        ang = 2.0 * np.pi * np.arange(self.n_crystals) / self.n_crystals
        return self.radius_mm * np.stack([np.cos(ang), np.sin(ang)], axis=1)

    def lor_endpoints(self) -> tuple[np.ndarray, np.ndarray]:
        """Endpoints p1, p2 of each LOR, each (views, bins, 2) in mm."""
        pos = self.crystal_positions()
        a, b = self.lor_crystals()
        return pos[a], pos[b]

    def geometric_efficiency(self) -> np.ndarray:
        """cos(πt/N) per radial bin: the crystal's apparent width seen along the LOR."""
        return np.cos(np.pi * self.radial_index() / self.n_crystals)

    def lor_weight(self, pixel_area_mm2: float) -> float:
        """κ such that p_ij = κ · n_i · A_ij is the probability that a decay in pixel j is detected in
        LOR i (A in mm, n the normalisation with the geometric factor): for a 2-D ring, summing over all
        LORs through a point gives the scanner sensitivity."""
        n = self.n_crystals
        return self.sensitivity * 2.0 * math.pi * self.radius_mm / (n * n) / pixel_area_mm2

    # ------------------------------------------------------------------ normalisation
    def crystal_efficiencies(self) -> np.ndarray:
        """Relative efficiency of each (grouped) crystal: log-normal around 1, block-wise pattern, 0 in
        failed blocks. Fixed by ``norm_seed``: a property of the scanner, not of the patient."""
        rng = np.random.default_rng(self.norm_seed)
        n0 = self.crystals
        eff = rng.lognormal(0.0, self.crystal_efficiency_sd, n0)
        # block pattern: crystals at block edges collect less light
        pos = np.arange(n0) % self.crystals_per_block
        edge = np.minimum(pos, self.crystals_per_block - 1 - pos)
        eff *= 1.0 - 0.06 * (edge == 0)
        n_blocks = n0 // self.crystals_per_block
        for blk in self.failed_blocks:
            if not 0 <= blk < n_blocks:
                raise NMAIError(f"failed block {blk} does not exist; blocks are 0..{n_blocks - 1}")
            eff[blk * self.crystals_per_block:(blk + 1) * self.crystals_per_block] = 0.0
        eff = eff.reshape(self.n_crystals, self.crystal_group).mean(axis=1)
        return eff.astype(np.float64)

    def normalisation(self, efficiencies: np.ndarray | None = None) -> np.ndarray:
        """(views, bins) detection efficiency of each LOR: ε_a · ε_b · cos(πt/N)."""
        eff = self.crystal_efficiencies() if efficiencies is None else np.asarray(efficiencies, float)
        a, b = self.lor_crystals()
        return (eff[a] * eff[b] * self.geometric_efficiency()[None, :]).astype(np.float32)

    def lor_in_fov(self) -> np.ndarray:
        """(bins,) True where the LOR passes inside the transaxial FOV."""
        s = self.radius_mm * np.abs(np.sin(np.pi * self.radial_index() / self.n_crystals))
        return s <= self.transaxial_fov_mm / 2.0


DEFAULT_SCANNER = Scanner()
