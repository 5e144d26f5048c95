"""QIBA SUV rules on header values (nmai.suv), checked against hand formulas with explicit numbers."""

from __future__ import annotations

import math
from datetime import date, datetime, time

import pytest
from pydicom.dataset import Dataset

from nmai.suv import (FrameTiming, SuvHeader, average_count_rate_time_s, compute_suv, injection_start,
                      lean_body_mass_kg, parse_da, parse_dt, parse_tm, private_value, scan_start, to_float)

REL = 1e-6
SCAN = datetime(2024, 1, 1, 10, 0, 0)


def header(**kw) -> SuvHeader:
    """70 kg, 1.75 m male, 370 MBq FDG (T½ 6586.2 s) injected 09:00:00, series 10:00:00, START, BQML."""
    values = dict(units="BQML", decay_correction="START", corrected_image=("DECY", "ATTN"),
                  patient_weight_kg=70.0, patient_size_m=1.75, patient_sex="M", injected_dose_bq=370e6,
                  half_life_s=6586.2, series_datetime=SCAN, frames=[FrameTiming(SCAN, 90000.0, 180000.0)],
                  injection_time=time(9, 0, 0))
    values.update(kw)
    return SuvHeader(**values)


# ------------------------------------------------------------------------------------------ parsing
def test_parse_dicom_dates_and_times():
    assert parse_da("20240131") == date(2024, 1, 31)
    assert parse_da("2024.01.31") == date(2024, 1, 31)
    assert parse_da("") is None and parse_da(None) is None and parse_da("2024") is None
    assert parse_tm("101530.25") == time(10, 15, 30, 250000)
    assert parse_tm("1015") == time(10, 15)
    assert parse_tm("10:15:30") == time(10, 15, 30)
    assert parse_tm("10") == time(10)
    assert parse_tm("garbage") is None
    assert parse_dt("20240131101530.5+0100") == datetime(2024, 1, 31, 10, 15, 30, 500000)
    assert parse_dt("20240131") == datetime(2024, 1, 31)


def test_average_count_rate_time_is_half_frame_for_short_frames_and_exact_otherwise():
    assert average_count_rate_time_s(1.0, 6586.2) == pytest.approx(0.5, rel=1e-4)
    lam = math.log(2) / 6586.2
    expected = math.log(lam * 600.0 / (1 - math.exp(-lam * 600.0))) / lam  # 600 s frame
    assert average_count_rate_time_s(600.0, 6586.2) == pytest.approx(expected, rel=1e-12)
    assert average_count_rate_time_s(600.0, 6586.2) < 300.0  # earlier than the middle: activity decays


# ------------------------------------------------------------------------------------------ BQML
def test_start_decay_correction():
    r = compute_suv(header())
    expected = 70.0 * 1000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))
    assert r.output_units == "Bq/ml"
    assert r.suv_bw_factor == pytest.approx(expected, rel=REL)
    assert r.decay_time_s == 3600.0
    assert r.scan_datetime_source == "SeriesDate/SeriesTime"


def test_admin_decay_correction_uses_the_undecayed_dose():
    r = compute_suv(header(decay_correction="ADMIN"))
    assert r.suv_bw_factor == pytest.approx(70.0 * 1000.0 / 370e6, rel=REL)


def test_start_datetime_wins_over_start_time():
    r = compute_suv(header(injection_datetime=datetime(2024, 1, 1, 8, 30, 0), injection_time=time(9, 0, 0)))
    assert r.decay_time_s == 5400.0
    assert r.suv_bw_factor == pytest.approx(70000.0 / (370e6 * 2 ** (-5400.0 / 6586.2)), rel=REL)
    assert "0018,1078" in r.injection_datetime_source


def test_scan_crossing_midnight_puts_injection_on_the_previous_day():
    scan = datetime(2024, 1, 2, 0, 30, 0)
    r = compute_suv(header(series_datetime=scan, frames=[FrameTiming(scan)], injection_time=time(23, 30, 0)))
    assert r.injection_datetime == datetime(2024, 1, 1, 23, 30, 0)
    assert r.decay_time_s == 3600.0
    assert r.suv_bw_factor == pytest.approx(70000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), rel=REL)


def test_injection_recorded_just_after_scan_start_is_refused_not_shifted_a_day():
    r = compute_suv(header(injection_time=time(10, 5, 0)))
    assert r.suv_bw_factor is None
    assert "RadiopharmaceuticalStartTime" in r.suv_bw_unavailable_reason
    inj, _, problem = injection_start(None, time(10, 5), SCAN)
    assert inj == datetime(2024, 1, 1, 10, 5) and "check the injection time" in problem


def test_post_processed_series_uses_earliest_acquisition():
    acq = [FrameTiming(datetime(2024, 1, 1, 10, 3, 0)), FrameTiming(datetime(2024, 1, 1, 10, 0, 0))]
    scan, source = scan_start(datetime(2024, 1, 1, 15, 0, 0), acq, None, 6586.2)
    assert scan == datetime(2024, 1, 1, 10, 0, 0) and "earliest" in source
    r = compute_suv(header(series_datetime=datetime(2024, 1, 1, 15, 0, 0), frames=acq))
    assert r.suv_bw_factor == pytest.approx(70000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), rel=REL)


def test_post_processed_series_prefers_ge_private_scan_datetime():
    acq = [FrameTiming(datetime(2024, 1, 1, 10, 0, 0))]
    r = compute_suv(header(series_datetime=datetime(2024, 1, 1, 15, 0, 0), frames=acq,
                           ge_scan_datetime=datetime(2024, 1, 1, 9, 58, 0)))
    assert r.scan_datetime == datetime(2024, 1, 1, 9, 58, 0) and "GE" in r.scan_datetime_source
    assert r.suv_bw_factor == pytest.approx(70000.0 / (370e6 * 2 ** (-3480.0 / 6586.2)), rel=REL)


def test_post_processed_series_back_computes_scan_start_from_frame_reference_time():
    # second bed: acquired 10:05:00 for 240 s; frame reference time 300 s + average-count-rate time
    lam = math.log(2) / 6586.2
    avg = math.log(lam * 240.0 / (1 - math.exp(-lam * 240.0))) / lam
    frames = [FrameTiming(datetime(2024, 1, 1, 10, 5, 0), (300.0 + avg) * 1000.0, 240000.0)]
    r = compute_suv(header(series_datetime=datetime(2024, 1, 1, 15, 0, 0), frames=frames))
    assert "back-computed" in r.scan_datetime_source
    assert abs((r.scan_datetime - datetime(2024, 1, 1, 10, 0, 0)).total_seconds()) < 1e-3
    assert r.suv_bw_factor == pytest.approx(70000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), rel=REL)


def test_series_time_equal_to_acquisition_is_used():
    scan, source = scan_start(SCAN, [FrameTiming(SCAN)], datetime(2024, 1, 1, 9, 0), 6586.2)
    assert scan == SCAN and source == "SeriesDate/SeriesTime"


# ------------------------------------------------------------------------------------------ SUVlbm
def test_suv_lbm_janmahasatian_male_and_female():
    bmi = 70.0 / 1.75 ** 2  # 22.857...
    lbm_m = 9270.0 * 70.0 / (6680.0 + 216.0 * bmi)
    lbm_f = 9270.0 * 70.0 / (8780.0 + 244.0 * bmi)
    assert lean_body_mass_kg(70.0, 1.75, "M") == pytest.approx(lbm_m, rel=1e-12)
    bw = 70000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))
    r = compute_suv(header())
    assert r.suv_lbm_factor == pytest.approx(lbm_m * 1000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), rel=REL)
    assert r.suv_lbm_factor == pytest.approx(bw * lbm_m / 70.0, rel=REL)
    r = compute_suv(header(patient_sex="F"))
    assert r.suv_lbm_factor == pytest.approx(bw * lbm_f / 70.0, rel=REL)


def test_suv_lbm_unavailable_without_height_or_sex():
    for kw in ({"patient_size_m": None}, {"patient_sex": "O"}):
        r = compute_suv(header(**kw))
        assert r.suv_bw_factor is not None and r.suv_lbm_factor is None
        assert "PatientSize" in r.suv_lbm_unavailable_reason


# ------------------------------------------------------------------------------------------ unavailable
@pytest.mark.parametrize("kw, words", [
    ({"patient_weight_kg": None}, "PatientWeight (0010,1030) missing or zero"),
    ({"patient_weight_kg": 0.0}, "PatientWeight (0010,1030) missing or zero"),
    ({"injected_dose_bq": None}, "RadionuclideTotalDose (0018,1074)"),
    ({"half_life_s": None}, "RadionuclideHalfLife (0018,1075)"),
    ({"injection_time": None}, "RadiopharmaceuticalStartTime (0018,1072)"),
    ({"series_datetime": None, "frames": []}, "scan start is unknown"),
    ({"decay_correction": "NONE"}, "DecayCorrection (0054,1102) is NONE"),
    ({"corrected_image": ("ATTN", "SCAT")}, "lacks DECY"),
    ({"corrected_image": ("DECY",)}, "lacks ATTN"),
    ({"injection_datetime": datetime(2024, 1, 1, 11, 0)}, "after the scan start"),
])
def test_missing_inputs_give_none_and_a_reason(kw, words):
    r = compute_suv(header(**kw))
    assert r.output_units == "Bq/ml"
    assert r.suv_bw_factor is None and r.suv_lbm_factor is None
    assert words in r.suv_bw_unavailable_reason and r.suv_bw_unavailable_reason.endswith("SUV cannot be computed")
    meta = r.metadata()
    assert meta["suv_unavailable_reason"] == r.suv_bw_unavailable_reason and meta["suv_bw_factor"] is None


def test_admin_does_not_need_times():
    r = compute_suv(header(decay_correction="ADMIN", injection_time=None, series_datetime=None, frames=[]))
    assert r.suv_bw_factor == pytest.approx(70000.0 / 370e6, rel=REL)


# ------------------------------------------------------------------------------------------ CNTS / GML
def test_philips_cnts_both_factors():
    r = compute_suv(header(units="CNTS", philips_suv_factor=0.000321, philips_activity_factor=1.5))
    assert r.output_units == "Bq/ml"
    assert r.suv_bw_factor == pytest.approx(0.000321 / 1.5, rel=REL)


def test_philips_cnts_suv_factor_only_loads_suv():
    r = compute_suv(header(units="CNTS", philips_suv_factor=0.000321))
    assert r.output_units == "SUVbw" and r.suv_bw_factor is None
    assert "7053" in r.activity_unavailable_reason and r.metadata()["activity_unavailable_reason"]


def test_philips_cnts_activity_factor_only_uses_the_header_formula():
    r = compute_suv(header(units="CNTS", philips_activity_factor=2.0))
    assert r.suv_bw_factor == pytest.approx(70000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), rel=REL)


def test_gml_is_already_suv():
    r = compute_suv(header(units="GML"))
    assert r.output_units == "SUVbw" and r.suv_bw_factor is None
    assert "GML" in r.activity_unavailable_reason


# ------------------------------------------------------------------------------------------ private tags
def test_private_value_follows_the_creator_block():
    ds = Dataset()
    ds.add_new((0x7053, 0x0010), "LO", "SOME OTHER CREATOR")
    ds.add_new((0x7053, 0x1000), "DS", "999")
    ds.add_new((0x7053, 0x0012), "LO", "philips pet private group  ")
    ds.add_new((0x7053, 0x1200), "DS", "0.0005")
    ds.add_new((0x7053, 0x1209), "DS", "1.25")
    assert to_float(private_value(ds, 0x7053, "Philips PET Private Group", 0x00)) == 0.0005
    assert to_float(private_value(ds, 0x7053, "Philips PET Private Group", 0x09)) == 1.25


def test_private_value_raw_block_without_creator_and_decoy_creator():
    ds = Dataset()
    ds.add_new((0x7053, 0x1000), "UN", b"0.0007 ")
    assert to_float(private_value(ds, 0x7053, "Philips PET Private Group", 0x00)) == 0.0007
    ds.add_new((0x7053, 0x0010), "LO", "SOME OTHER CREATOR")
    assert private_value(ds, 0x7053, "Philips PET Private Group", 0x00) is None
