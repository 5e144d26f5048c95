"""Linear attenuation at 511 keV: CT number -> μ (bilinear), and the Dixon 4-class values.

Bilinear conversion after Carney et al., Med Phys 33:976 (2006): below the break point the tissue is
treated as an air/water mixture, μ = 9.6e-5 · (HU + 1000) cm⁻¹; above it as a water/bone mixture whose
slope depends on the tube voltage (kVp) because bone's CT number does.
"""

from __future__ import annotations

import numpy as np

from .errors import NMAIError

MU_WATER_511 = 0.096  # cm^-1

# kVp -> (slope a [cm^-1/HU], intercept b [cm^-1], break point [HU]) from Carney et al. 2006, Table 1
CARNEY = {
    80: (3.64e-5, 6.26e-2, 50.0),
    100: (4.43e-5, 5.44e-2, 52.0),
    110: (4.92e-5, 4.88e-2, 43.0),
    120: (5.10e-5, 4.71e-2, 47.0),
    130: (5.51e-5, 4.24e-2, 37.0),
    140: (5.64e-5, 4.08e-2, 30.0),
}

# Dixon 4-class μ values (Martinez-Möller et al., J Nucl Med 2009), cm^-1
DIXON4 = {"air": 0.0, "lung": 0.0224, "fat": 0.0854, "soft_tissue": 0.1}


def hu_to_mu(hu, kvp: int = 120) -> np.ndarray:
    """μ at 511 keV (cm⁻¹) from CT numbers (HU); values below air clip to 0."""
    if kvp not in CARNEY:
        raise NMAIError(f"no bilinear CT->μ coefficients for {kvp} kVp; use one of {sorted(CARNEY)}")
    a, b, bp = CARNEY[kvp]
    hu = np.asarray(hu, dtype=np.float32)
    low = 9.6e-5 * (hu + 1000.0)
    high = a * (hu + 1000.0) + b
    return np.clip(np.where(hu <= bp, low, high), 0.0, None).astype(np.float32)


def mu_to_hu(mu, kvp: int = 120) -> np.ndarray:
    """Inverse of :func:`hu_to_mu` (for μ ≥ 0): the pseudo-CT that a μ-map implies."""
    a, b, bp = CARNEY[kvp]
    mu = np.asarray(mu, dtype=np.float32)
    mu_bp = 9.6e-5 * (bp + 1000.0)
    low = mu / 9.6e-5 - 1000.0
    high = (mu - b) / a - 1000.0
    return np.where(mu <= mu_bp, low, high).astype(np.float32)
