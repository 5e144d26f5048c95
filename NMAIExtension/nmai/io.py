"""Reading and writing volumes.

* NIfTI (``.nii``, ``.nii.gz``) and NRRD (``.nrrd``, ``.nhdr``) through SimpleITK. What a Volume is
  (modality, units, SUV factors, provenance) is kept in a JSON sidecar beside the image
  (``name.nii.gz`` -> ``name.json``, as BIDS does), because NIfTI has no place for it.
* A folder of DICOM files: PET through :mod:`nmai.dicom_pet` (activity in Bq/ml with SUV factors),
  other modalities through SimpleITK's series reader.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a crash or
a cancel never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import NMAIError
from .volume import MODALITIES, UNITS, Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_suffix(path) -> str:
    name = str(path).lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def sidecar_path(path) -> Path:
    path = Path(path)
    suffix = image_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.stem
    return path.with_name(stem + ".json")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(path) or path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path, *, replaceable=lambda folder: False):
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced only when it is empty or ``replaceable(path)`` says it is an earlier
    output of the same kind (so a user's folder of other files is never deleted).
    """
    import shutil

    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not replaceable(path))):
        raise NMAIError(f"{path} exists and is not an empty folder or an earlier output of this command; "
                        "choose a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------- SimpleITK
def to_sitk(volume: Volume):
    import SimpleITK as sitk

    array = volume.array
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.flatten()))
    return image


def from_sitk(image, **kw) -> Volume:
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise NMAIError(f"expected a 3-D volume, got a {image.GetDimension()}-D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise NMAIError("expected a scalar volume, got a multi-component (vector/RGB) image")
    array = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return Volume(array, image.GetSpacing(), image.GetOrigin(), direction, **kw)


# ---------------------------------------------------------------------------------------------- public API
def read_volume(path, *, modality: str | None = None, units: str | None = None) -> Volume:
    """Read a NIfTI/NRRD file (with its sidecar, if any) or a DICOM series folder.

    ``modality``/``units`` fill in what the file does not say; they never override a sidecar or DICOM
    header that does (a mismatch is an error, so a CT is never silently treated as PET).
    """
    path = Path(path)
    if not path.exists():
        raise NMAIError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in (".dcm", ".ima") or _looks_like_dicom(path):
        from .dicom import read_dicom_series

        volume = read_dicom_series(path)
    else:
        volume = _read_image_file(path)
    declared = {"modality": modality, "units": units}
    for key, value in declared.items():
        if value is None:
            continue
        current = getattr(volume, key)
        if volume.metadata.get(f"{key}_from_file") and current != value:
            raise NMAIError(f"{path}: file says {key} is {current!r}, but {value!r} was required")
        setattr(volume, key, value)
    return volume


def _looks_like_dicom(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_image_file(path: Path) -> Volume:
    import SimpleITK as sitk

    if not image_suffix(path):
        raise NMAIError(f"{path}: unsupported file type; use NIfTI (.nii/.nii.gz), NRRD (.nrrd) "
                        "or a DICOM folder")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise NMAIError(f"{path}: cannot read image ({first[:200]})") from None
    volume = from_sitk(image)
    if image_suffix(path) in (".nii", ".nii.gz") and np.issubdtype(volume.array.dtype, np.floating):
        stored = _nifti_float_voxels(path)  # ITK's NIfTI reader silently turns NaN into 0
        if stored is not None and stored.size == volume.array.size and not np.isfinite(stored).all():
            bad = ~np.isfinite(stored.reshape(volume.array.shape))
            volume.array = volume.array.copy()
            volume.array[bad] = stored.reshape(volume.array.shape)[bad]
    info = _read_sidecar(path)
    if info is not None:
        volume.metadata.update(info.get("metadata", {}))
        if "units" in info:
            volume.units = info["units"]
            volume.metadata["units_from_file"] = True
        if "modality" in info:
            volume.modality = info["modality"]
            volume.metadata["modality_from_file"] = True
    volume.metadata.setdefault("source", str(path))
    return volume


def _read_sidecar(path: Path) -> dict | None:
    """The sidecar of ``path``, checked; None when there is none or it describes another image."""
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise NMAIError(f"{side}: sidecar is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(info, dict):
        raise NMAIError(f"{side}: sidecar must be a JSON object; fix or delete it")
    if info.get("image", path.name) != path.name:
        return None  # x.json written for x.nrrd says nothing about x.nii.gz
    if "units" in info and info["units"] not in UNITS:
        raise NMAIError(f"{side}: units {info['units']!r} unknown; use one of {', '.join(UNITS)}")
    if "modality" in info and info["modality"] not in MODALITIES:
        raise NMAIError(f"{side}: modality {info['modality']!r} unknown; use one of {', '.join(MODALITIES)}")
    meta = info.get("metadata", {})
    if not isinstance(meta, dict):
        raise NMAIError(f"{side}: 'metadata' must be a JSON object; fix or delete the sidecar")
    for key in ("suv_bw_factor", "suv_lbm_factor"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise NMAIError(f"{side}: {key} must be a positive number or null, not {value!r}")
    return info


def _nifti_float_voxels(path: Path) -> np.ndarray | None:
    """The voxels stored in a float NIfTI-1 file, in file order (None for other types or odd headers)."""
    import gzip

    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        header = fh.read(348)
        if len(header) < 348:
            return None
        for order in "<>":
            if np.frombuffer(header[:4], f"{order}i4")[0] == 348:
                break
        else:
            return None
        dims = np.frombuffer(header[40:56], f"{order}i2")
        dtype = {16: f"{order}f4", 64: f"{order}f8"}.get(int(np.frombuffer(header[70:72], f"{order}i2")[0]))
        if dtype is None:
            return None
        offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
        count = int(np.prod(dims[1:1 + max(int(dims[0]), 1)].astype(np.int64)))
        fh.read(max(offset - 348, 0))
        return np.frombuffer(fh.read(count * np.dtype(dtype).itemsize), dtype)


def refuse_overwriting(out, *inputs) -> None:
    """Refuse an output path that is one of the inputs or would replace an input's sidecar."""
    out = Path(out).resolve()
    taken = {sidecar_path(out)}
    for item in inputs:
        if item is None:
            continue
        src = Path(item).resolve()
        if out == src or (src.is_dir() and src in out.parents):
            raise NMAIError(f"--out {out} would overwrite the input {src}; choose another output name")
        if image_suffix(src) and sidecar_path(src) in taken:
            raise NMAIError(f"--out {out} would replace the sidecar {sidecar_path(src)} of the input {src}; "
                            "choose an output name with another stem")


def write_volume(volume: Volume, path, *, dtype=None) -> Path:
    """Write ``volume`` atomically as NIfTI/NRRD plus its JSON sidecar. Returns the image path."""
    import SimpleITK as sitk

    path = Path(path)
    if image_suffix(path) not in (".nii.gz", ".nii", ".nrrd", ".mha"):
        raise NMAIError(f"{path}: output must end in .nii.gz, .nii, .nrrd or .mha")
    if path.is_dir():
        raise NMAIError(f"{path} is a folder; give a file name ending in .nii.gz, .nii, .nrrd or .mha")
    side = sidecar_path(path)
    if side.exists():
        try:
            owner = json.loads(side.read_text()).get("image", path.name)
        except (OSError, ValueError, AttributeError):
            owner = path.name
        if owner != path.name and (path.parent / owner).exists():
            raise NMAIError(f"{side} describes {owner}; writing {path.name} would mislabel it — choose an "
                            "output name with another stem")
    out = volume if dtype is None else volume.derive(volume.array.astype(dtype))
    meta = {k: v for k, v in out.metadata.items() if not k.endswith("_from_file")}
    with atomic_path(path) as tmp:
        sitk.WriteImage(to_sitk(out), str(tmp), useCompression=True)
    write_json(side, {"image": path.name, "modality": out.modality, "units": out.units,
                      "quantity": out.quantity, "metadata": meta})
    return path
