"""Input checks shared by every task: fail early, in one line that names the problem and the fix."""

from __future__ import annotations

import numpy as np

from .errors import NMAIError
from .volume import Volume

PET_UNITS = ("Bq/ml", "SUVbw", "SUVlbm")


def check_volume(volume: Volume, name: str = "input") -> Volume:
    """Refuse empty, 2-D, non-finite and all-zero volumes."""
    shape = volume.array.shape
    if volume.array.ndim != 3:
        raise NMAIError(f"{name}: expected a 3-D volume, got {volume.array.ndim}-D data of shape {shape}")
    if volume.array.size == 0:
        raise NMAIError(f"{name}: the volume is empty (shape {shape}); load the full series")
    if min(shape) < 2:
        raise NMAIError(f"{name}: this is a 2-D image (shape {shape[::-1]}); a 3-D volume of several "
                        "slices is needed — load the whole series, not a single slice")
    if not np.issubdtype(volume.array.dtype, np.number):
        raise NMAIError(f"{name}: voxel type {volume.array.dtype} is not numeric")
    finite = np.isfinite(volume.array)
    if not finite.all():
        bad = int(finite.size - finite.sum())
        raise NMAIError(f"{name}: {bad} voxels are NaN or infinite; fix the reconstruction/export or "
                        "mask them before running")
    if not np.any(volume.array):
        raise NMAIError(f"{name}: every voxel is zero; check that the right series was loaded")
    return volume


def check_pet(volume: Volume, name: str = "PET") -> Volume:
    """A PET volume in Bq/ml or SUV; anything else is refused with the reason."""
    check_volume(volume, name)
    if volume.modality not in ("PT", "OT"):
        raise NMAIError(f"{name}: this is a {volume.modality} volume ({volume.units}), not PET; "
                        "select the PET series")
    if volume.units not in PET_UNITS:
        raise NMAIError(f"{name}: units are {volume.units!r}, not PET activity; declare them with "
                        "--units Bq/ml or --units SUVbw if the file does not say")
    data = volume.array.astype(np.float64)
    negative, positive = float(-data[data < 0].sum()), float(data[data > 0].sum())
    if negative > 0.3 * positive:
        raise NMAIError(f"{name}: negative voxels sum to {negative / max(positive, 1e-30):.0%} of the positive "
                        "ones; this is not a PET activity image (was a difference image or CT selected?)")
    return volume


def check_same_grid(a: Volume, b: Volume, names=("first", "second")) -> None:
    if not a.same_grid(b, tol=1e-3):
        raise NMAIError(f"{names[0]} and {names[1]} have different geometry (shape {a.shape} vs {b.shape}, "
                        f"spacing {a.spacing} vs {b.spacing}); resample one onto the other first")


def check_mr(volume: Volume, name: str = "MR") -> Volume:
    """An MR image: refuse PET, CT and μ-maps given as MR."""
    check_volume(volume, name)
    if volume.modality not in ("MR", "OT") or volume.units not in ("a.u.", "1"):
        hint = {"PT": "a PET image", "CT": "a CT", "SEG": "a segmentation"}.get(volume.modality,
                                                                               f"{volume.units} data")
        raise NMAIError(f"{name}: this is {hint} ({volume.modality}, {volume.units}), not an MR image; "
                        "select the MR series")
    return volume
