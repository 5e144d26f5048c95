"""DICOM series reading (nmai.dicom) and PET writing (nmai.dicom_write), on factory-built and real data.

Expected values are hand formulas on the numbers the factory wrote (stored × slope + intercept, QIBA SUV).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_factory import ramp, write_rtstruct, write_series
from nmai.dicom import read_dicom_series
from nmai.dicom_write import write_pet_dicom_series
from nmai.errors import NMAIError
from nmai.io import read_volume
from nmai.volume import Volume

REL = 1e-6
F_3600 = 70.0 * 1000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))  # factory defaults: 70 kg, 370 MBq, 60 min
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def lps(volume: Volume, i, j, k) -> np.ndarray:
    return (volume.index_to_lps() @ np.array([i, j, k, 1.0]))[:3]


# ------------------------------------------------------------------------------------------ PET, vendors
def test_siemens_bqml_per_slice_slopes_and_suv(tmp_path):
    stored = ramp(4)
    slopes, intercepts = [0.5, 1.25, 3.0, 0.001], [0.0, 0.0, 2.0, -1.0]
    write_series(tmp_path, stored, slopes=slopes, intercepts=intercepts)
    v = read_dicom_series(tmp_path)
    assert (v.modality, v.units, v.array.dtype, v.shape) == ("PT", "Bq/ml", np.float32, (4, 3, 5))
    for k in range(4):
        np.testing.assert_allclose(v.array[k], stored[k] * slopes[k] + intercepts[k], rtol=REL)
    m = v.metadata
    assert m["suv_bw_factor"] == pytest.approx(F_3600, rel=REL)
    assert m["units_from_file"] and m["modality_from_file"]
    assert (m["patient_weight_kg"], m["patient_size_m"], m["patient_sex"]) == (70.0, 1.75, "M")
    assert (m["injected_dose_bq"], m["half_life_s"], m["decay_correction"], m["dicom_units"]) == \
        (370e6, 6586.2, "START", "BQML")
    assert (m["injection_datetime"], m["scan_datetime"]) == ("2024-01-01T09:00:00", "2024-01-01T10:00:00")
    assert m["radiopharmaceutical"] == "Fluorodeoxyglucose" and m["manufacturer"] == "SIEMENS"
    attrs = m["dicom_suv_attributes"]
    assert attrs["Units"] == "BQML" and attrs["PatientWeight"] == "70"
    assert attrs["RadiopharmaceuticalInformationSequence"][0]["RadionuclideTotalDose"] == "370000000"
    assert "slice_spacing_resampled" not in m
    assert v.to_units("SUVbw").array[1, 2, 3] == pytest.approx((1000 + 23 + 1) * 1.25 * F_3600, rel=REL)


def test_suv_lbm_from_file(tmp_path):
    write_series(tmp_path, ramp(2), header={"PatientSex": "F", "PatientSize": "1.6", "PatientWeight": "80"})
    v = read_dicom_series(tmp_path)
    bmi = 80.0 / 1.6 ** 2
    lbm = 9270.0 * 80.0 / (8780.0 + 244.0 * bmi)
    decayed = 370e6 * 2 ** (-3600.0 / 6586.2)
    assert v.metadata["suv_bw_factor"] == pytest.approx(80000.0 / decayed, rel=REL)
    assert v.metadata["suv_lbm_factor"] == pytest.approx(lbm * 1000.0 / decayed, rel=REL)


def test_start_datetime_and_midnight_from_files(tmp_path):
    write_series(tmp_path / "a", ramp(2), radio={"RadiopharmaceuticalStartDateTime": "20240101083000"})
    assert read_dicom_series(tmp_path / "a").metadata["suv_bw_factor"] == pytest.approx(
        70000.0 / (370e6 * 2 ** (-5400.0 / 6586.2)), rel=REL)
    write_series(tmp_path / "b", ramp(2), header={"SeriesDate": "20240102", "SeriesTime": "003000",
                                                  "AcquisitionDate": "20240102", "AcquisitionTime": "003000"},
                 radio={"RadiopharmaceuticalStartTime": "233000"})
    v = read_dicom_series(tmp_path / "b")
    assert v.metadata["injection_datetime"] == "2024-01-01T23:30:00"
    assert v.metadata["suv_bw_factor"] == pytest.approx(F_3600, rel=REL)


def test_admin_from_file(tmp_path):
    write_series(tmp_path, ramp(2), header={"DecayCorrection": "ADMIN"})
    assert read_dicom_series(tmp_path).metadata["suv_bw_factor"] == pytest.approx(70000.0 / 370e6, rel=REL)


def test_ge_post_processed_series_uses_private_scan_datetime(tmp_path):
    write_series(tmp_path, ramp(2), vendor="ge", ge_scan_datetime="20240101095000",
                 header={"SeriesTime": "143000", "AcquisitionTime": "100000"}, implicit_vr=True)
    v = read_dicom_series(tmp_path)
    assert v.metadata["scan_datetime"] == "2024-01-01T09:50:00"
    assert v.metadata["dicom_suv_attributes"]["GEPrivateScanDateTime"] == "20240101095000"
    assert v.metadata["suv_bw_factor"] == pytest.approx(70000.0 / (370e6 * 2 ** (-3000.0 / 6586.2)), rel=REL)


def test_siemens_post_processed_series_back_computes_from_frame_reference_time(tmp_path):
    lam = math.log(2) / 6586.2
    avg = math.log(lam * 180.0 / (1 - math.exp(-lam * 180.0))) / lam
    # bed 2 started at 10:03:00, 180 s after a scan start of 10:00:00
    write_series(tmp_path, ramp(2), header={"SeriesTime": "143000", "AcquisitionTime": "100300",
                                            "FrameReferenceTime": f"{(180.0 + avg) * 1000.0:.6f}"})
    v = read_dicom_series(tmp_path)
    assert "back-computed" in v.metadata["scan_datetime_source"]
    assert v.metadata["suv_bw_factor"] == pytest.approx(F_3600, rel=REL)


@pytest.mark.parametrize("block, implicit", [(0x10, False), (0x11, False), (None, True)])
def test_philips_cnts_both_factors(tmp_path, block, implicit):
    stored = ramp(3)
    write_series(tmp_path, stored, vendor="philips", slopes=[0.5, 2.0, 4.0], philips_suv=0.0004,
                 philips_activity=1.5, philips_block=block, implicit_vr=implicit)
    v = read_dicom_series(tmp_path)
    assert v.units == "Bq/ml" and v.metadata["dicom_units"] == "CNTS"
    for k, slope in enumerate([0.5, 2.0, 4.0]):
        np.testing.assert_allclose(v.array[k], stored[k] * slope * 1.5, rtol=REL)
    assert v.metadata["suv_bw_factor"] == pytest.approx(0.0004 / 1.5, rel=REL)
    np.testing.assert_allclose(v.to_units("SUVbw").array[2], stored[2] * 4.0 * 0.0004, rtol=1e-5)


def test_philips_cnts_suv_factor_only_loads_suvbw(tmp_path):
    stored = ramp(2)
    write_series(tmp_path, stored, vendor="philips", slopes=[0.5, 2.0], philips_suv=0.0004)
    v = read_dicom_series(tmp_path)
    assert v.units == "SUVbw" and v.metadata["suv_bw_factor"] is None
    np.testing.assert_allclose(v.array[1], stored[1] * 2.0 * 0.0004, rtol=REL)
    assert "Activity Concentration Scale Factor" in v.metadata["activity_unavailable_reason"]
    with pytest.raises(NMAIError):
        v.to_units("Bq/ml")


def test_gml_is_loaded_as_suv_and_not_scaled_twice(tmp_path):
    stored = ramp(2)
    write_series(tmp_path, stored, slopes=[0.001, 0.002], header={"Units": "GML"})
    v = read_dicom_series(tmp_path)
    assert v.units == "SUVbw" and v.metadata["suv_bw_factor"] is None
    np.testing.assert_allclose(v.array[1], stored[1] * 0.002, rtol=REL)


def test_cnts_without_factors_and_unknown_units_are_errors(tmp_path):
    write_series(tmp_path / "a", ramp(2), header={"Units": "CNTS"})
    with pytest.raises(NMAIError, match="7053"):
        read_dicom_series(tmp_path / "a")
    write_series(tmp_path / "b", ramp(2), header={"Units": "PROPCPS"})
    with pytest.raises(NMAIError, match="PROPCPS"):
        read_dicom_series(tmp_path / "b")


# ------------------------------------------------------------------------------------------ missing tags
@pytest.mark.parametrize("header, radio, words", [
    ({"PatientWeight": None}, {}, "PatientWeight (0010,1030) missing or zero"),
    ({"PatientWeight": "0"}, {}, "PatientWeight (0010,1030) missing or zero"),
    ({}, {"RadionuclideTotalDose": None}, "RadionuclideTotalDose (0018,1074)"),
    ({"CorrectedImage": ["ATTN", "SCAT"]}, {}, "lacks DECY"),
])
def test_missing_suv_tags_load_bqml_with_reason(tmp_path, header, radio, words):
    stored = ramp(2)
    write_series(tmp_path, stored, slopes=[2.0, 3.0], header=header, radio=radio)
    v = read_dicom_series(tmp_path)
    assert v.units == "Bq/ml" and v.metadata["suv_bw_factor"] is None
    np.testing.assert_allclose(v.array[1], stored[1] * 3.0, rtol=REL)
    assert words in v.metadata["suv_unavailable_reason"]
    with pytest.raises(NMAIError, match="SUV"):
        v.to_units("SUVbw")


def test_missing_units_assumed_bqml_with_warning(tmp_path):
    write_series(tmp_path, ramp(2), header={"Units": None})
    v = read_dicom_series(tmp_path)
    assert v.units == "Bq/ml" and not v.metadata["units_from_file"]
    assert any("Units (0054,1001) missing" in w for w in v.metadata["warnings"])


# ------------------------------------------------------------------------------------------ geometry
def test_uneven_spacing_is_resampled_onto_a_uniform_grid(tmp_path):
    positions = [0.0, 3.2, 6.6, 9.8, 13.0]  # mean 3.25 mm; slice 2 is 0.1 mm (3 %) off the grid
    ni = nj = 2
    stored = np.stack([np.full((nj, ni), int(round(p * 100)), np.int16) for p in positions])  # value = 100·z
    write_series(tmp_path, stored, positions=positions, origin=(5.0, 6.0, -40.0))
    v = read_dicom_series(tmp_path)
    assert v.spacing[2] == pytest.approx(3.25, rel=1e-9)
    assert v.origin == pytest.approx((5.0, 6.0, -40.0))
    info = v.metadata["slice_spacing_resampled"]
    assert info["min_mm"] == pytest.approx(3.2) and info["max_mm"] == pytest.approx(3.4)
    # value is linear in z, so interpolation is exact: slice k holds 100·(3.25·k)
    np.testing.assert_allclose(v.array[:, 0, 0], [100 * 3.25 * k for k in range(5)], rtol=1e-6)
    assert lps(v, 0, 0, 4)[2] == pytest.approx(-40.0 + 13.0)


def test_small_spacing_jitter_keeps_slices_and_uses_mean_spacing(tmp_path):
    positions = [0.0, 3.27, 6.53, 9.81]  # deviations ≤ 0.01 mm < 1 % of 3.27 mm
    write_series(tmp_path, ramp(4), positions=positions)
    v = read_dicom_series(tmp_path)
    assert v.spacing[2] == pytest.approx(9.81 / 3)
    assert "slice_spacing_resampled" not in v.metadata
    np.testing.assert_allclose(v.array, ramp(4).astype(np.float32))


def test_oblique_orientation_geometry(tmp_path):
    a, b = math.radians(30), math.radians(20)
    row = (math.cos(a), math.sin(a), 0.0)
    col = (-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b))
    positions = [9.0, 0.0, 3.0, 6.0]  # written out of order
    stored = ramp(4, 3, 5)
    write_series(tmp_path, stored, row=row, col=col, positions=positions, pixel_spacing=(2.5, 1.5),
                 origin=(100.0, -50.0, 20.0))
    v = read_dicom_series(tmp_path)
    assert v.spacing == pytest.approx((1.5, 2.5, 3.0))  # (column spacing, row spacing, slice spacing)
    # voxel (i, j, k) = (4, 2, k) of the slice written at position 6 mm (file slice 3, sorted index 2)
    normal = np.cross(row, col)
    ipp = np.array([100.0, -50.0, 20.0]) + 6.0 * normal
    expected = ipp + 4 * 1.5 * np.array(row) + 2 * 2.5 * np.array(col)
    np.testing.assert_allclose(lps(v, 4, 2, 2), expected, atol=1e-6)
    assert v.array[2, 2, 4] == stored[3, 2, 4]
    np.testing.assert_allclose(v.direction[:, 2], normal, atol=1e-9)


# ------------------------------------------------------------------------------------------ other inputs
def test_ct_and_mr_series(tmp_path):
    stored = ramp(3)
    write_series(tmp_path / "ct", stored, modality="CT", slopes=[1, 1, 1], intercepts=[-1024] * 3,
                 header={"KVP": "120"})
    ct = read_dicom_series(tmp_path / "ct")
    assert (ct.modality, ct.units, ct.metadata["kvp"]) == ("CT", "HU", 120.0)
    np.testing.assert_allclose(ct.array, stored - 1024.0)
    write_series(tmp_path / "mr", stored, modality="MR")
    mr = read_dicom_series(tmp_path / "mr")
    assert (mr.modality, mr.units) == ("MR", "a.u.")


def test_inputs_that_are_not_a_pet_image_series(tmp_path):
    with pytest.raises(NMAIError, match="RTSTRUCT"):
        read_dicom_series(write_rtstruct(tmp_path / "rs").parent)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NMAIError, match="no DICOM"):
        read_dicom_series(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not an image")
    with pytest.raises(NMAIError, match="no DICOM"):
        read_dicom_series(tmp_path / "text")
    with pytest.raises(NMAIError, match="no such"):
        read_dicom_series(tmp_path / "missing")


def test_corrupt_dicom_file_is_an_error_naming_it(tmp_path):
    paths = write_series(tmp_path, ramp(2))
    paths[0].write_bytes(paths[0].read_bytes()[:200])  # truncated inside the header
    with pytest.raises(NMAIError, match=paths[0].name):
        read_dicom_series(tmp_path)


def test_truncated_pixel_data_is_an_error(tmp_path):
    paths = write_series(tmp_path, ramp(2, 30, 30))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 600])
    with pytest.raises(NMAIError, match=paths[1].name):
        read_dicom_series(tmp_path)


def test_non_dicom_files_are_skipped(tmp_path):
    write_series(tmp_path, ramp(2))
    (tmp_path / "README.txt").write_text("exported by a PACS")
    (tmp_path / ".DS_Store").write_bytes(b"\x00" * 200)
    assert read_dicom_series(tmp_path).shape == (2, 3, 5)


def test_several_series_need_a_choice(tmp_path):
    write_series(tmp_path, ramp(2), series_uid="1.2.3.4", seed=1)
    write_series(tmp_path, ramp(3), modality="CT", series_uid="1.2.3.5", seed=100)
    with pytest.raises(NMAIError, match=r"2 DICOM series .*1\.2\.3\.4.*1\.2\.3\.5"):
        read_dicom_series(tmp_path)
    assert read_dicom_series(tmp_path, series_uid="1.2.3.5").modality == "CT"
    one_file = next(p for p in tmp_path.iterdir() if pydicom.dcmread(p).SeriesInstanceUID == "1.2.3.4")
    assert read_dicom_series(one_file).modality == "PT"
    assert read_volume(one_file).shape == (2, 3, 5)


def test_multiframe_and_dynamic_series_are_refused(tmp_path):
    write_series(tmp_path / "mf", ramp(2), per_slice=lambda k, ds: setattr(ds, "NumberOfFrames", 2))
    with pytest.raises(NMAIError, match="multi-frame"):
        read_dicom_series(tmp_path / "mf")
    write_series(tmp_path / "dyn", ramp(4), positions=[0, 0, 2, 2])
    with pytest.raises(NMAIError, match="same|share one slice position"):
        read_dicom_series(tmp_path / "dyn")


def test_read_volume_dispatches_and_checks_units(tmp_path):
    write_series(tmp_path, ramp(2))
    v = read_volume(tmp_path, modality="PT")
    assert v.units == "Bq/ml"
    with pytest.raises(NMAIError, match="units"):
        read_volume(tmp_path, units="HU")


# ------------------------------------------------------------------------------------------ writer
def _synthetic(direction=None) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.gamma(2.0, 4000.0, size=(6, 7, 8)).astype(np.float32)
    array[2] = 0.0  # an empty slice
    return Volume(array, (2.0, 3.0, 4.0), (-10.0, 20.0, -30.0),
                  np.eye(3) if direction is None else direction, "PT", "Bq/ml")


@pytest.mark.parametrize("style", ["siemens", "ge", "philips"])
def test_writer_round_trip_keeps_geometry_values_and_suv(tmp_path, style):
    a = math.radians(25)
    direction = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1.0]])
    vol = _synthetic(direction)
    inj, scan = dt.datetime(2026, 1, 15, 9, 0, 0), dt.datetime(2026, 1, 15, 10, 0, 0, 500000)
    out = write_pet_dicom_series(vol, tmp_path / "series", patient_weight_kg=75.0, injected_dose_bq=2.6e8,
                                 injection_datetime=inj, scan_datetime=scan, vendor_style=style,
                                 units="CNTS" if style == "philips" else "BQML", patient_size_m=1.8,
                                 patient_sex="F", philips_activity_factor=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no temporary folder left
    back = read_volume(out)
    assert back.same_grid(vol, tol=1e-5)
    peak = np.abs(vol.array).max(axis=(1, 2))
    assert np.all(np.abs(back.array - vol.array) <= (peak / 32767.0 * 0.51 + 1e-3)[:, None, None])
    expected = 75.0 * 1000.0 / (2.6e8 * 2 ** (-3600.5 / 6586.2))
    assert back.metadata["suv_bw_factor"] == pytest.approx(expected, rel=REL)
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.DecayCorrection == "START" and {"ATTN", "DECY"} <= set(ds.CorrectedImage)
    assert ds.Units == ("CNTS" if style == "philips" else "BQML")


def test_writer_gml_post_processed_and_identity(tmp_path):
    vol = _synthetic()
    vol.metadata["dicom_suv_attributes"] = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
                                            "PatientID": "P42"}
    inj, scan = dt.datetime(2026, 1, 15, 23, 30), dt.datetime(2026, 1, 16, 0, 30)
    suv = vol.derive(vol.array / 5000.0, units="SUVbw")
    out = write_pet_dicom_series(suv, tmp_path / "gml", patient_weight_kg=75.0, injected_dose_bq=2.6e8,
                                 injection_datetime=inj, scan_datetime=scan, units="GML")
    back = read_dicom_series(out)
    assert back.units == "SUVbw"
    np.testing.assert_allclose(back.array, suv.array, atol=suv.array.max() / 32767)
    ds = pydicom.dcmread(next(out.iterdir()))
    assert (ds.StudyInstanceUID, ds.PatientID) == ("1.2.826.0.1.3680043.8.498.1", "P42")
    # series written hours later (post-processed): the acquisition time still gives the scan start
    out2 = write_pet_dicom_series(vol, tmp_path / "late", patient_weight_kg=75.0, injected_dose_bq=2.6e8,
                                  injection_datetime=inj, scan_datetime=scan,
                                  series_datetime=scan + dt.timedelta(hours=5))
    assert read_dicom_series(out2).metadata["suv_bw_factor"] == pytest.approx(
        75000.0 / (2.6e8 * 2 ** (-3600.0 / 6586.2)), rel=REL)


def test_writer_refuses_existing_folder_nan_and_non_pet(tmp_path):
    vol = _synthetic()
    kw = dict(patient_weight_kg=75.0, injected_dose_bq=2.6e8, injection_datetime=dt.datetime(2026, 1, 1, 9),
              scan_datetime=dt.datetime(2026, 1, 1, 10))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(NMAIError, match="not an empty folder"):
        write_pet_dicom_series(vol, tmp_path / "full", **kw)
    assert (tmp_path / "full" / "keep.txt").exists()
    write_pet_dicom_series(vol, tmp_path / "full", overwrite=True, **kw)
    assert not (tmp_path / "full" / "keep.txt").exists() and len(list((tmp_path / "full").iterdir())) == 6
    bad = vol.derive(np.where(vol.array > 9000, np.nan, vol.array))
    with pytest.raises(NMAIError, match="NaN"):
        write_pet_dicom_series(bad, tmp_path / "nan", **kw)
    assert not (tmp_path / "nan").exists()
    with pytest.raises(NMAIError):
        write_pet_dicom_series(vol.derive(vol.array, modality="CT", units="HU"), tmp_path / "ct", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


# ------------------------------------------------------------------------------------------ real data
def _real(name: str) -> Path:
    folder = REAL / name
    if not folder.is_dir():
        pytest.skip(f"real data {folder} not present")
    return folder


def test_real_ge_discovery_st_suv_factor_matches_hand_computation():
    folder = _real("ge-discovery-st-fdg-wholebody")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    ds = headers[0]
    radio = ds.RadiopharmaceuticalInformationSequence[0]
    series = dt.datetime.strptime(ds.SeriesDate + ds.SeriesTime.split(".")[0], "%Y%m%d%H%M%S")
    earliest = min(dt.datetime.strptime(h.AcquisitionDate + h.AcquisitionTime.split(".")[0], "%Y%m%d%H%M%S")
                   for h in headers)
    assert series <= earliest  # QIBA: the series time is the scan start
    injection = dt.datetime.strptime(ds.SeriesDate + radio.RadiopharmaceuticalStartTime.split(".")[0],
                                     "%Y%m%d%H%M%S")
    delta = (series - injection).total_seconds()
    expected = float(ds.PatientWeight) * 1000.0 / (
        float(radio.RadionuclideTotalDose) * 2 ** (-delta / float(radio.RadionuclideHalfLife)))
    v = read_dicom_series(folder)
    assert v.metadata["suv_bw_factor"] == pytest.approx(expected, rel=REL)
    assert (v.units, v.shape) == ("Bq/ml", (len(headers), int(ds.Rows), int(ds.Columns)))
    z = sorted(float(h.ImagePositionPatient[2]) for h in headers)
    assert v.spacing == pytest.approx((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]),
                                       (z[-1] - z[0]) / (len(z) - 1)))
    assert v.origin[2] == pytest.approx(z[0])
    info = v.metadata["slice_spacing_resampled"]
    assert info["min_mm"] == pytest.approx(3.19, abs=1e-3) and info["max_mm"] == pytest.approx(3.29, abs=1e-3)
    # a slice that sits on the uniform grid keeps its own slope-scaled values
    h_last = max(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    raw = pydicom.dcmread(h_last.filename).pixel_array * float(h_last.RescaleSlope) + float(
        h_last.RescaleIntercept)
    np.testing.assert_allclose(v.array[-1], raw, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["nema-iec-phantom-recon1", "nema-iec-phantom-recon2"])
def test_real_nema_phantom_loads_bqml_without_suv(name):
    v = read_dicom_series(_real(name))
    assert (v.modality, v.units, v.shape[1:]) == ("PT", "Bq/ml", (192, 192))
    assert v.metadata["suv_bw_factor"] is None
    assert "PatientWeight (0010,1030)" in v.metadata["suv_unavailable_reason"]
    assert not v.metadata["units_from_file"]
    assert any("Units (0054,1001) missing" in w for w in v.metadata["warnings"])
    assert np.isfinite(v.array).all() and v.array.max() > 0


def test_pixel_decoding_falls_back_to_simpleitk(tmp_path, monkeypatch):
    stored = ramp(2)
    write_series(tmp_path, stored, slopes=[0.5, 3.0], intercepts=[0.0, 7.0])

    def no_handler(self):
        raise RuntimeError("no pixel data handler for this transfer syntax")
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_handler))
    v = read_dicom_series(tmp_path)
    np.testing.assert_allclose(v.array[1], stored[1] * 3.0 + 7.0, rtol=REL)


def test_dicom_without_preamble_is_read(tmp_path):
    paths = write_series(tmp_path, ramp(2), implicit_vr=True)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.preamble = None
        del ds.file_meta
        ds.save_as(p, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert p.read_bytes()[128:132] != b"DICM"
    assert read_dicom_series(tmp_path).metadata["suv_bw_factor"] == pytest.approx(F_3600, rel=REL)
