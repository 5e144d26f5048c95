"""Resampling one volume onto another's grid (SimpleITK), for inputs of different geometry."""

from __future__ import annotations

import numpy as np

from .volume import Volume


def resample_like(volume: Volume, reference: Volume, *, interpolation: str = "linear",
                  default: float = 0.0) -> Volume:
    """``volume`` resampled onto ``reference``'s grid (shape, spacing, origin, direction), in patient space.

    Voxels of the reference grid that fall outside ``volume`` get ``default``. ``interpolation`` is
    ``linear``, ``nearest`` (labels) or ``bspline``.
    """
    import SimpleITK as sitk

    from .io import to_sitk

    if volume.same_grid(reference, tol=1e-6):
        return volume
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
              "bspline": sitk.sitkBSpline}[interpolation]
    ref = to_sitk(reference.derive(np.zeros(reference.shape, np.uint8)))
    out = sitk.Resample(to_sitk(volume.derive(volume.array.astype(np.float32))), ref, sitk.Transform(),
                        interp, float(default), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(out)
    if interpolation == "nearest":
        array = array.astype(volume.array.dtype)
    return Volume(array, reference.spacing, reference.origin, reference.direction.copy(),
                  volume.modality, volume.units, dict(volume.metadata, resampled_to_reference=True))
