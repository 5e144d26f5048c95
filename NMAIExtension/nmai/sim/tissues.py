"""Tissue classes: label values and per-tissue FDG uptake, CT number and MR properties.

Each entry: label value, FDG SUVbw range at ~60 min p.i., CT number range (HU, 120 kVp), proton density
(relative), Dixon fat fraction, relative T1-weighted signal (3 T spoiled gradient echo: fat bright, WM >
GM > CSF, cortical bone and air dark). Values are drawn uniformly in their ranges per phantom seed, so
every phantom has its own, plausible set. μ at 511 keV comes from the CT number through
:func:`nmai.mu.hu_to_mu` (bilinear, Carney 2006), which puts cortical bone (HU 900–1400) at
0.14–0.17 cm⁻¹, trabecular bone at ~0.11, soft tissue ~0.10, fat ~0.09, lung ~0.02 cm⁻¹.

SUV sources: typical normal-organ FDG uptake (e.g. Zincirkeser et al., Mol Imaging Radionucl Ther 2007;
Wang et al., J Nucl Med Technol 2017; EANM guideline reference regions: liver 2–3, blood pool 1.5–2);
brain grey matter 7–11, white matter ~3; urine in the bladder highly variable (5–25).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    name: str
    label: int
    suv: tuple[float, float]
    hu: tuple[float, float]
    pd: float          # relative proton density (MR signal of water + fat at full relaxation)
    ff: tuple[float, float]   # Dixon fat fraction
    t1w: float         # relative T1-weighted signal


TISSUES = [
    #      name                label  SUV range      HU range         PD    fat fraction   T1w
    Tissue("air", 0, (0.0, 0.0), (-1000, -1000), 0.0, (0.0, 0.0), 0.0),
    Tissue("lung", 1, (0.4, 0.8), (-860, -760), 0.08, (0.0, 0.0), 0.03),
    Tissue("fat_subcutaneous", 2, (0.2, 0.4), (-115, -85), 0.90, (0.85, 0.92), 1.00),
    Tissue("fat_visceral", 3, (0.3, 0.5), (-105, -75), 0.88, (0.80, 0.90), 0.95),
    Tissue("muscle", 4, (0.6, 1.0), (40, 60), 0.75, (0.01, 0.05), 0.35),
    Tissue("bone_cortical", 5, (0.3, 0.6), (900, 1400), 0.05, (0.1, 0.3), 0.03),
    Tissue("bone_trabecular", 6, (1.2, 2.0), (180, 350), 0.55, (0.35, 0.55), 0.65),
    Tissue("brain_grey_matter", 7, (7.0, 11.0), (35, 45), 0.82, (0.0, 0.0), 0.42),
    Tissue("brain_white_matter", 8, (2.5, 3.5), (25, 32), 0.70, (0.0, 0.0), 0.58),
    Tissue("csf", 9, (0.2, 0.4), (5, 15), 1.00, (0.0, 0.0), 0.10),
    Tissue("liver", 10, (2.0, 2.8), (50, 70), 0.72, (0.02, 0.15), 0.55),
    Tissue("spleen", 11, (1.6, 2.2), (40, 55), 0.80, (0.0, 0.02), 0.38),
    Tissue("kidney", 12, (2.0, 3.5), (30, 40), 0.85, (0.0, 0.02), 0.40),
    Tissue("bladder", 13, (5.0, 25.0), (0, 15), 1.00, (0.0, 0.0), 0.08),
    Tissue("myocardium", 14, (1.5, 10.0), (35, 50), 0.75, (0.0, 0.02), 0.36),
    Tissue("blood_pool", 15, (1.4, 2.0), (35, 50), 0.85, (0.0, 0.0), 0.30),
    Tissue("air_internal", 16, (0.0, 0.0), (-1000, -950), 0.0, (0.0, 0.0), 0.0),
    Tissue("gut", 17, (1.2, 2.2), (20, 40), 0.70, (0.02, 0.08), 0.42),
    Tissue("scalp", 18, (0.6, 1.0), (20, 40), 0.70, (0.10, 0.25), 0.50),
    Tissue("marrow_yellow", 19, (0.6, 1.0), (-60, 0), 0.90, (0.75, 0.90), 0.95),
    Tissue("csf_spinal", 20, (0.3, 0.6), (10, 25), 1.00, (0.0, 0.0), 0.12),
    # NEMA NU 2 / IEC body phantom materials (activities set by the phantom, not by SUV)
    Tissue("water", 30, (1.0, 1.0), (0, 0), 1.00, (0.0, 0.0), 0.10),
    Tissue("pmma", 31, (0.0, 0.0), (120, 130), 0.0, (0.0, 0.0), 0.0),
    Tissue("lung_insert", 32, (0.0, 0.0), (-720, -680), 0.0, (0.0, 0.0), 0.0),
]

BY_NAME = {t.name: t for t in TISSUES}
BY_LABEL = {t.label: t for t in TISSUES}
LESION_LABEL_BASE = 100      # lesions are 100, 101, ...
SPHERE_LABEL_BASE = 40       # NEMA spheres 40..45 (10..37 mm)

SOFT_TISSUE = ("muscle", "fat_subcutaneous", "fat_visceral", "gut", "scalp")
BONE = ("bone_cortical", "bone_trabecular", "marrow_yellow")


def L(name: str) -> int:
    """Label value of a tissue name."""
    return BY_NAME[name].label


@dataclass
class Properties:
    """Values for one label in one phantom."""

    suv: float
    hu: float
    pd: float
    ff: float
    t1w: float

    def as_dict(self) -> dict:
        return {"suv": round(self.suv, 4), "hu": round(self.hu, 2), "pd": self.pd, "fat_fraction": round(self.ff, 4),
                "t1w": self.t1w}


def sample_properties(rng: np.random.Generator, names=None) -> dict[int, Properties]:
    """Draw one value per tissue from its ranges."""
    out = {}
    for t in TISSUES:
        if names is not None and t.name not in names:
            continue
        out[t.label] = Properties(float(rng.uniform(*t.suv)), float(rng.uniform(*t.hu)), t.pd,
                                  float(rng.uniform(*t.ff)), t.t1w)
    return out


LESION_TISSUE = Properties(suv=1.0, hu=40.0, pd=0.80, ff=0.02, t1w=0.40)   # soft-tissue lesion (node, nodule)
