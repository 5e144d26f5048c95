"""The Dixon 4-class μ-map (Martinez-Möller et al., J Nucl Med 2009): the reference every PET/MR vendor ships.

Body voxels are classed as air, lung, fat or soft tissue from the Dixon water and fat images and given the
class's μ (``nmai.mu.DIXON4``). Bone has no class of its own: cortical bone is dark on MR, sits inside the
filled body outline and is given soft-tissue μ — which is why this method underestimates PET in and near
bone (Paulus et al., J Nucl Med 2015: about 25 % in bone).

Steps:
1. signal = water + fat; a threshold at ``body_fraction`` of the robust maximum separates body from air;
2. the body outline is filled slice by slice (axial) and the largest 3-D component kept — this fills
   dark bone and lungs into the body;
3. dark 3-D regions inside the body are lung when they hold at least ``min_lung_ml`` and are at least
   ``min_lung_area_cm2`` wide in one axial slice; thinner or smaller dark regions (cortical bone — even a
   long spine or femur shaft — bowel gas, vessels) stay soft tissue;
4. the rest is fat where the fat fraction fat / (water + fat) exceeds 0.5, else soft tissue.
"""

from __future__ import annotations

import numpy as np

from ..errors import NMAIError
from ..mu import DIXON4
from ..validate import check_same_grid, check_volume
from ..volume import Volume

CLASSES = {"air": 0, "lung": 1, "fat": 2, "soft_tissue": 3}


def dixon4_classes(water: Volume, fat: Volume, *, body_fraction: float = 0.1,
                   min_lung_ml: float = 50.0, min_lung_area_cm2: float = 10.0) -> np.ndarray:
    """Class index per voxel (``CLASSES``), on the water image's grid."""
    from scipy import ndimage

    check_volume(water, "water")
    check_volume(fat, "fat")
    check_same_grid(water, fat, ("water", "fat"))
    w = np.clip(water.array.astype(np.float32), 0, None)
    f = np.clip(fat.array.astype(np.float32), 0, None)
    signal = w + f
    scale = float(np.percentile(signal, 99.5))
    if scale <= 0:
        raise NMAIError("water + fat is zero almost everywhere; these are not Dixon MR images")
    bright = signal > body_fraction * scale
    body = np.stack([ndimage.binary_fill_holes(s) for s in bright])  # axial slices: [k] is the slice axis
    labels, n = ndimage.label(body)
    if n == 0:
        raise NMAIError("no body found in the MR images; check that water and fat images were selected")
    sizes = ndimage.sum_labels(body, labels, index=np.arange(1, n + 1))
    body = labels == (1 + int(np.argmax(sizes)))

    dark = body & ~bright
    dark_labels, n_dark = ndimage.label(dark)
    lung = np.zeros_like(body)
    if n_dark:
        voxel_ml = water.voxel_volume_ml
        pixel_cm2 = water.spacing[0] * water.spacing[1] / 100.0
        dark_ml = np.bincount(dark_labels.ravel(), minlength=n_dark + 1)[1:] * voxel_ml
        per_slice = np.zeros((n_dark + 1, dark.shape[0]))  # voxels of each region in each axial slice
        k_index = np.broadcast_to(np.arange(dark.shape[0])[:, None, None], dark.shape)
        np.add.at(per_slice, (dark_labels[dark], k_index[dark]), 1)
        widest_cm2 = per_slice[1:].max(axis=1) * pixel_cm2
        keep = (dark_ml >= min_lung_ml) & (widest_cm2 >= min_lung_area_cm2)
        lung = np.isin(dark_labels, 1 + np.flatnonzero(keep))

    fat_fraction = np.divide(f, signal, out=np.zeros_like(signal), where=signal > 0)
    classes = np.full(w.shape, CLASSES["air"], np.uint8)
    classes[body] = CLASSES["soft_tissue"]
    classes[body & bright & (fat_fraction > 0.5)] = CLASSES["fat"]
    classes[lung] = CLASSES["lung"]
    return classes


def dixon4_mumap(water: Volume, fat: Volume, **kw) -> Volume:
    """μ-map (cm⁻¹) by the Dixon 4-class method, on the water image's grid."""
    classes = dixon4_classes(water, fat, **kw)
    lut = np.zeros(len(CLASSES), np.float32)
    for name, index in CLASSES.items():
        lut[index] = DIXON4[name]
    return water.derive(lut[classes], units="cm-1", modality="OT", method="dixon4",
                        parameters={k: float(v) for k, v in kw.items()})
