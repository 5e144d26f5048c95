"""The one data type that crosses module boundaries: :class:`Volume`.

Conventions (the engine uses ITK's, conversion to Slicer's RAS happens only at the MRML boundary):

* ``array`` is indexed ``[k, j, i]`` (slice, row, column) exactly as ``SimpleITK.GetArrayFromImage``.
* ``spacing`` is ``(si, sj, sk)`` in mm, ``origin`` the LPS position (mm) of voxel ``(i, j, k) = (0, 0, 0)``,
  ``direction`` a 3×3 matrix whose *columns* are the LPS unit vectors of the i, j, k axes.
* ``quantity``/``units`` say what the numbers are (see ``UNITS``); PET stays in Bq/ml or SUV and says which.
* ``metadata`` is a JSON-serialisable dict (SUV factors, patient/study fields, provenance).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import NMAIError

# units -> (quantity, human description). Units are the contract: code checks them, never guesses.
UNITS = {
    "Bq/ml": ("activity_concentration", "PET activity concentration"),
    "SUVbw": ("suv", "standardised uptake value, body weight (g/ml)"),
    "SUVlbm": ("suv", "standardised uptake value, lean body mass (g/ml)"),
    "cm-1": ("linear_attenuation", "linear attenuation coefficient at 511 keV"),
    "HU": ("ct_number", "CT number (Hounsfield units)"),
    "a.u.": ("mr_signal", "MR signal, arbitrary units"),
    "label": ("label", "integer tissue/segment labels"),
    "1": ("ratio", "dimensionless"),
}

MODALITIES = ("PT", "CT", "MR", "SEG", "OT")


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "OT"
    units: str = "1"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.units not in UNITS:
            raise NMAIError(f"unknown units {self.units!r}; use one of {', '.join(UNITS)}")
        if self.modality not in MODALITIES:
            raise NMAIError(f"unknown modality {self.modality!r}; use one of {', '.join(MODALITIES)}")

    # ------------------------------------------------------------------ geometry
    @property
    def quantity(self) -> str:
        return UNITS[self.units][0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_lps(self) -> np.ndarray:
        """4×4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def index_to_ras(self) -> np.ndarray:
        """4×4 matrix mapping (i, j, k, 1) to RAS millimetres (what Slicer calls IJKToRAS)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.index_to_lps()

    @classmethod
    def from_index_to_lps(cls, array, matrix, **kw) -> "Volume":
        matrix = np.asarray(matrix, dtype=float)
        a = matrix[:3, :3]
        spacing = np.linalg.norm(a, axis=0)
        if np.any(spacing <= 0):
            raise NMAIError("degenerate voxel-to-patient matrix (zero spacing)")
        return cls(array, tuple(spacing), tuple(matrix[:3, 3]), a / spacing, **kw)

    @classmethod
    def from_index_to_ras(cls, array, matrix, **kw) -> "Volume":
        return cls.from_index_to_lps(array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(matrix, float), **kw)

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    # ------------------------------------------------------------------ derived volumes
    def derive(self, array: np.ndarray, *, units: str | None = None, modality: str | None = None,
               **metadata) -> "Volume":
        """A new Volume on this one's grid, with a copy of its metadata updated by ``metadata``."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"derived array shape {array.shape} != {self.array.shape}")
        meta = copy.deepcopy(self.metadata)
        meta.update(metadata)
        return Volume(array, self.spacing, self.origin, self.direction.copy(),
                      modality or self.modality, units or self.units, meta)

    def copy(self) -> "Volume":
        return self.derive(self.array.copy())

    # ------------------------------------------------------------------ SUV
    def suv_factor(self, kind: str = "bw") -> float | None:
        """Factor that turns this volume's Bq/ml into SUV (g/ml), or None when unavailable."""
        value = self.metadata.get(f"suv_{kind}_factor")
        return None if value is None else float(value)

    def to_units(self, units: str) -> "Volume":
        """Convert PET between Bq/ml, SUVbw and SUVlbm using the recorded factors."""
        if units == self.units:
            return self
        if self.modality != "PT" or units not in ("Bq/ml", "SUVbw", "SUVlbm") or \
                self.units not in ("Bq/ml", "SUVbw", "SUVlbm"):
            raise NMAIError(f"cannot convert {self.modality} volume from {self.units} to {units}")

        def factor(u):  # multiply Bq/ml by this to get u
            if u == "Bq/ml":
                return 1.0
            f = self.suv_factor(u[3:].lower())
            if f is None:
                reason = self.metadata.get(f"suv_{u[3:].lower()}_unavailable_reason",
                                           self.metadata.get("suv_unavailable_reason", "no SUV factor recorded"))
                raise NMAIError(f"{u} unavailable: {reason}")
            return f

        scale = factor(units) / factor(self.units)
        return self.derive((self.array.astype(np.float32) * np.float32(scale)), units=units)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (used by ``nmai info``)."""
        return {
            "modality": self.modality,
            "units": self.units,
            "quantity": self.quantity,
            "shape": [int(s) for s in self.shape[::-1]],  # (i, j, k) like spacing
            "spacing": [round(s, 6) for s in self.spacing],
            "origin_lps": [round(o, 6) for o in self.origin],
            "direction": [[round(float(v), 8) for v in row] for row in self.direction],
        }
