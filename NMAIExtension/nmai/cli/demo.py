"""``nmai demo --out DIR``: the main jobs end to end on built-in data.

1. Synthetic FDG PET (known activity, weight and dose) is written as a DICOM series with SUV tags, imported
   through the same reader used for scanner data, checked against the SUV it was made with, filtered, and
   written back as NIfTI in Bq/ml and SUV.
2. A simulated whole-body PET/MR phantom's Dixon MR is turned into μ-maps by the shipped U-Net and by the
   Dixon 4-class method, each compared with the true μ-map.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from ..errors import NMAIError
from ..filters import gaussian_filter
from ..io import read_volume, write_json, write_volume
from ..volume import Volume

WEIGHT_KG = 75.0
DOSE_BQ = 3.5e6 * WEIGHT_KG  # 3.5 MBq/kg FDG
F18_HALF_LIFE_S = 6586.2


def add_parser(sub):
    p = sub.add_parser("demo", help="run the main job on built-in synthetic data and say where the results are",
                       description="Synthetic FDG PET written as a DICOM series with SUV tags, imported through "
                                   "the scanner-data reader (QIBA SUV checked), Gaussian-filtered and written "
                                   "back as NIfTI in Bq/ml and SUV. Running it again replaces its outputs.")
    p.add_argument("--out", default="nmai-demo", help="output folder (default ./nmai-demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic patient")
    p.set_defaults(func=run)


def synthetic_pet(seed: int = 0, shape=(48, 96, 96), spacing=(4.0, 4.0, 4.0)) -> Volume:
    """A small torso: body, liver, bladder and three lesions, in Bq/ml at scan time, with Poisson-like noise."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    x, y, z = (i - ni / 2) * spacing[0], (j - nj / 2) * spacing[1], (k - nk / 2) * spacing[2]
    decayed = DOSE_BQ * 2 ** (-3600 / F18_HALF_LIFE_S)  # 60 min uptake
    suv1 = decayed / (WEIGHT_KG * 1000.0)  # Bq/ml that reads SUV 1
    act = np.zeros(shape, np.float32)
    act[(x / 160) ** 2 + (y / 110) ** 2 <= 1] = 0.8 * suv1
    act[((x + 60) / 70) ** 2 + ((y + 10) / 55) ** 2 + ((z - 30) / 50) ** 2 <= 1] = 2.2 * suv1  # liver
    act[((x - 0) / 35) ** 2 + ((y - 20) / 30) ** 2 + ((z + 70) / 25) ** 2 <= 1] = 15 * suv1  # bladder
    for (cx, cy, cz, r, suv) in [(50, -20, 20, 12, 8.0), (-40, 40, -20, 8, 6.0), (80, 30, 50, 6, 10.0)]:
        act[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r] = suv * suv1
    noisy = rng.poisson(act / suv1 * 20.0) * (suv1 / 20.0)  # about 20 counts per SUV unit per voxel
    return Volume(noisy.astype(np.float32), spacing=spacing[::-1], origin=(-192.0, -192.0, -96.0),
                  modality="PT", units="Bq/ml")


def _attenuation_demo(seed: int, out: Path, outputs: dict, progress) -> dict:
    """A simulated whole-body PET/MR phantom: μ-maps from its Dixon MR by the U-Net and by Dixon 4-class,
    compared with the true μ-map (bone Dice, μ MAE)."""
    from ..attenuation.dixon import dixon4_mumap
    from ..attenuation.training import mu_metrics
    from ..attenuation.unet import unet_mumap
    from ..sim import make_phantom

    progress(0.0, "simulating a whole-body PET/MR phantom")
    phantom = make_phantom("wholebody", seed=seed, mr=True)
    water, fat = phantom.volumes["mr_water"], phantom.volumes["mr_fat"]
    progress(0.5, "μ-map from Dixon MR: U-Net and Dixon 4-class")
    maps = {"unet": unet_mumap({"water": water, "fat": fat}, progress=progress.sub(0.5, 0.9)),
            "dixon4": dixon4_mumap(water, fat)}
    for name, volume in [("mr_water", water), ("mr_fat", fat), ("mumap_true", phantom.mumap),
                         ("mumap_unet", maps["unet"]), ("mumap_dixon4", maps["dixon4"])]:
        outputs[name] = write_volume(volume, out / f"{name}.nii.gz")
    progress(1.0, "μ-maps compared")
    return {name: mu_metrics(m.array, phantom.mumap.array) for name, m in maps.items()}


def run(args, progress):
    from ..dicom_write import write_pet_dicom_series

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress(0.0, "making a synthetic FDG PET")
    pet = synthetic_pet(args.seed)
    injection = dt.datetime(2026, 1, 15, 9, 0, 0)
    scan = injection + dt.timedelta(minutes=60)
    dicom_dir = out / "pet_dicom"
    progress(0.1, f"writing it as a DICOM PET series to {dicom_dir}")
    write_pet_dicom_series(pet, dicom_dir, patient_weight_kg=WEIGHT_KG, injected_dose_bq=DOSE_BQ,
                           injection_datetime=injection, scan_datetime=scan, half_life_s=F18_HALF_LIFE_S,
                           overwrite=True)  # the demo's own folder: a second run replaces it
    progress(0.3, "importing the DICOM series (QIBA SUV)")
    imported = read_volume(dicom_dir)
    expected = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2 ** (-3600.0 / F18_HALF_LIFE_S))
    got = imported.suv_factor("bw")
    if got is None or abs(got / expected - 1) > 1e-6:
        raise NMAIError(f"demo self-check failed: SUV factor {got} != {expected}")
    progress(0.3, "Gaussian post-filter, 6 mm FWHM")
    filtered = gaussian_filter(imported, 6.0, progress=progress.sub(0.3, 0.4))
    outputs = {
        "pet_bqml": write_volume(imported, out / "pet_bqml.nii.gz"),
        "pet_suv": write_volume(imported.to_units("SUVbw"), out / "pet_suv.nii.gz"),
        "pet_gaussian6mm_suv": write_volume(filtered.to_units("SUVbw"), out / "pet_gaussian6mm_suv.nii.gz"),
    }
    attenuation = _attenuation_demo(args.seed, out, outputs, progress.sub(0.45, 0.95))
    suv = imported.to_units("SUVbw").array
    summary = {"suv_bw_factor": got, "suv_bw_factor_expected": expected,
               "suv_max_raw": float(suv.max()),
               "suv_max_gaussian6mm": float(filtered.to_units("SUVbw").array.max()),
               "attenuation": attenuation,
               "outputs": {k: str(v) for k, v in outputs.items()}, "dicom_series": str(dicom_dir)}
    write_json(out / "demo.json", summary)
    progress(1.0, "done")
    lines = [f"NMAI demo finished. Results in {out.resolve()}:",
             f"  DICOM PET series with SUV tags : {dicom_dir}",
             f"  SUVbw factor (QIBA)            : {got:.6g} g/ml per Bq/ml (expected {expected:.6g})"]
    for method, m in attenuation.items():
        lines.append(f"  μ-map {method:<24}: bone Dice {m['bone_dice']:.2f}, μ MAE {m['mu_mae_body_cm-1']:.4f} cm-1")
    lines += [f"  {k:<31}: {v}" for k, v in outputs.items()]
    lines.append(f"  summary                        : {out / 'demo.json'}")
    return {**summary, "message": "\n".join(lines)}
