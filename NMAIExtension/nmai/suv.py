"""Standardised uptake value (SUV) from PET DICOM headers, after the QIBA vendor-neutral pseudo-code.

What a physicist needs to know (QIBA wiki "Standardized Uptake Value", pseudo-code of 2018-06-26):

* **Units BQML** (Bq/ml). ``SUVbw = Bq/ml × weight[kg]·1000 / decayed dose[Bq]``. With DecayCorrection
  ``START`` the images are decay-corrected to the scan start, so the injected dose is decayed from the
  injection to the scan start: ``dose · 2^(−Δt/T½)``. With ``ADMIN`` the images are already corrected to the
  administration time and the dose is used as is. ``NONE`` (not decay-corrected) is refused: it would need a
  per-frame correction.
* **Scan start** (see :func:`scan_start`): Series Date/Time if not after the earliest Acquisition Date/Time;
  else GE's private scan date/time (0009,xx0D) of "GEMS_PETD_01"; else back-computed from an image's
  Acquisition Date/Time, Frame Reference Time (0054,1300) and Actual Frame Duration (0018,1242); else the
  earliest Acquisition Date/Time.
* **Injection** (see :func:`injection_start`): RadiopharmaceuticalStartDateTime (0018,1078) when present;
  else RadiopharmaceuticalStartTime (0018,1072) on the *scan* date (equal to SeriesDate for an original
  series, and right for a series post-processed on a later day). If that lands more than 12 h after the scan
  start the scan crossed midnight and the injection was the previous day; a smaller positive gap is an
  inconsistent header and SUV is refused.
* **Units CNTS** (Philips): Bq/ml = rescaled value × Activity Concentration Scale Factor (7053,xx09);
  SUVbw = rescaled value × SUV Scale Factor (7053,xx00), so the Bq/ml→SUVbw factor is their ratio.
* **Units GML**: the pixels already are SUVbw (g/ml); nothing is scaled again.
* **SUVlbm** uses the Janmahasatian lean body mass (QIBA's choice) from weight, height (PatientSize, m) and
  sex: LBM = 9270·W/(6680+216·BMI) (male), 9270·W/(8780+244·BMI) (female), BMI = W/H².
  ``SUVlbm factor = SUVbw factor × LBM/W``.
* Images must be decay- and attenuation-corrected (CorrectedImage (0028,0051) containing DECY and ATTN, when
  the attribute is present). When something is missing the activity still loads, the factor is ``None``, and
  the reason is a sentence that names the tag and what to do.

Times are naive local datetimes; UTC offsets in DT values are ignored (DICOM stores scanner local time).
Everything here is pure Python over header values; :func:`header_from_datasets` reads them from pydicom.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Sequence

LN2 = math.log(2.0)
PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"
MIDNIGHT_THRESHOLD = timedelta(hours=12)


# ------------------------------------------------------------------------------------------ DICOM date/time
def parse_da(value: Any) -> date | None:
    """DICOM DA (``YYYYMMDD``, also the legacy ``YYYY.MM.DD``) -> date, or None when absent/invalid."""
    text = re.sub(r"[.\-]", "", str(value or "").strip())
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def parse_tm(value: Any) -> time | None:
    """DICOM TM (``HH[MM[SS[.ffffff]]]``, also the legacy ``HH:MM:SS``) -> time, or None."""
    text = str(value or "").strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text)
    if not m:
        return None
    hh, mm, ss = (int(g) if g else 0 for g in m.groups()[:3])
    micro = int((m.group(4) or "0").ljust(6, "0"))
    try:
        return time(hh, mm, min(ss, 59), micro)  # 60 = leap second in DICOM
    except ValueError:
        return None


def parse_dt(value: Any) -> datetime | None:
    """DICOM DT (``YYYYMMDD[HH[MM[SS[.ffffff]]]][&ZZXX]``) -> naive datetime (offset ignored), or None."""
    text = re.split(r"[+\-]", str(value or "").strip(), maxsplit=1)[0] if value else ""
    d = parse_da(text[:8])
    if d is None:
        return None
    t = parse_tm(text[8:]) if len(text) > 8 else time(0)
    return None if t is None else datetime.combine(d, t)


def combine(d: date | None, t: time | None) -> datetime | None:
    return None if d is None or t is None else datetime.combine(d, t)


# ------------------------------------------------------------------------------------------ header values
@dataclass
class FrameTiming:
    """Timing of one image (bed position / frame): start and QIBA back-computation inputs."""
    acquisition: datetime | None
    frame_reference_ms: float | None = None  # (0054,1300): scan start -> average-count-rate time, ms
    frame_duration_ms: float | None = None  # (0018,1242)


@dataclass
class SuvHeader:
    """The header values SUV depends on (one series). Units/decay/corrections are upper-case strings."""
    units: str | None = "BQML"
    decay_correction: str | None = "START"
    corrected_image: tuple[str, ...] | None = ("ATTN", "DECY")
    patient_weight_kg: float | None = None
    patient_size_m: float | None = None
    patient_sex: str | None = None
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    series_datetime: datetime | None = None
    frames: list[FrameTiming] = field(default_factory=list)
    ge_scan_datetime: datetime | None = None
    injection_datetime: datetime | None = None  # (0018,1078)
    injection_time: time | None = None  # (0018,1072)
    philips_suv_factor: float | None = None  # (7053,xx00)
    philips_activity_factor: float | None = None  # (7053,xx09)


@dataclass
class SuvResult:
    """What the reader needs: output units, factors (multiply Bq/ml by them) and why any is missing."""
    output_units: str = "Bq/ml"
    suv_bw_factor: float | None = None
    suv_lbm_factor: float | None = None
    suv_bw_unavailable_reason: str | None = None
    suv_lbm_unavailable_reason: str | None = None
    activity_unavailable_reason: str | None = None
    scan_datetime: datetime | None = None
    scan_datetime_source: str | None = None
    injection_datetime: datetime | None = None
    injection_datetime_source: str | None = None
    decay_time_s: float | None = None
    decayed_dose_bq: float | None = None
    lean_body_mass_kg: float | None = None
    warnings: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly fields for ``Volume.metadata``."""
        iso = (lambda v: v.isoformat() if v is not None else None)
        meta = {"suv_bw_factor": self.suv_bw_factor, "suv_lbm_factor": self.suv_lbm_factor,
                "scan_datetime": iso(self.scan_datetime), "scan_datetime_source": self.scan_datetime_source,
                "injection_datetime": iso(self.injection_datetime),
                "injection_datetime_source": self.injection_datetime_source,
                "decay_time_s": self.decay_time_s, "decayed_dose_bq": self.decayed_dose_bq,
                "lean_body_mass_kg": self.lean_body_mass_kg}
        if self.suv_bw_factor is None:
            meta["suv_bw_unavailable_reason"] = meta["suv_unavailable_reason"] = self.suv_bw_unavailable_reason
        if self.suv_lbm_factor is None:
            meta["suv_lbm_unavailable_reason"] = self.suv_lbm_unavailable_reason
        if self.activity_unavailable_reason:
            meta["activity_unavailable_reason"] = self.activity_unavailable_reason
        return meta


# ------------------------------------------------------------------------------------------ QIBA rules
def average_count_rate_time_s(frame_duration_s: float, half_life_s: float) -> float:
    """Time after frame start at which the count rate equals its frame average (QIBA):
    ``1/λ · ln(λT / (1 − e^(−λT)))``, about T/2 for T ≪ T½."""
    lam = LN2 / half_life_s
    x = lam * frame_duration_s
    return math.log(x / (1.0 - math.exp(-x))) / lam


def scan_start(series: datetime | None, frames: Sequence[FrameTiming], ge_scan: datetime | None,
               half_life_s: float | None) -> tuple[datetime | None, str | None]:
    """Scan start datetime and the rule that gave it (QIBA order; see module docstring)."""
    acquisitions = [f.acquisition for f in frames if f.acquisition is not None]
    earliest = min(acquisitions) if acquisitions else None
    if series is not None and (earliest is None or series <= earliest):
        return series, "SeriesDate/SeriesTime"
    if ge_scan is not None:
        return ge_scan, "GE private scan date/time (0009,xx0D)"
    usable = [f for f in frames if f.acquisition is not None and (f.frame_reference_ms or 0) > 0
              and (f.frame_duration_ms or 0) > 0]
    if usable and half_life_s:
        f = min(usable, key=lambda f: f.acquisition)
        offset = average_count_rate_time_s(f.frame_duration_ms / 1000.0, half_life_s) - f.frame_reference_ms / 1000.0
        return (f.acquisition + timedelta(seconds=offset),
                "back-computed from AcquisitionTime, FrameReferenceTime and ActualFrameDuration")
    if earliest is not None:
        return earliest, "earliest AcquisitionDate/AcquisitionTime"
    return None, None


def injection_start(start_datetime: datetime | None, start_time: time | None,
                    scan: datetime | None) -> tuple[datetime | None, str | None, str | None]:
    """Injection datetime, its source, and a problem (sentence) or None."""
    if start_datetime is not None:
        return start_datetime, "RadiopharmaceuticalStartDateTime (0018,1078)", None
    if start_time is None:
        return None, None, None
    if scan is None:
        return None, "RadiopharmaceuticalStartTime (0018,1072)", None
    injection = datetime.combine(scan.date(), start_time)
    source = "RadiopharmaceuticalStartTime (0018,1072) on the scan date"
    if injection > scan:
        if injection - scan >= MIDNIGHT_THRESHOLD:
            return injection - timedelta(days=1), source + " (previous day: the scan crossed midnight)", None
        return injection, source, (f"RadiopharmaceuticalStartTime {start_time.isoformat()} is after the scan "
                                   f"start {scan.time().isoformat()}; check the injection time")
    return injection, source, None


def decayed_dose_bq(dose_bq: float, half_life_s: float, decay_time_s: float) -> float:
    """Injected activity decayed over ``decay_time_s``: ``dose · 2^(−Δt/T½)``."""
    return dose_bq * 2.0 ** (-decay_time_s / half_life_s)


def lean_body_mass_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Janmahasatian et al., Clin Pharmacokinet 2005 (QIBA); sex ``M`` or ``F``."""
    bmi = weight_kg / height_m ** 2
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    if sex == "F":
        return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)
    raise ValueError(f"lean body mass needs sex M or F, got {sex!r}")


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def compute_suv(h: SuvHeader) -> SuvResult:
    """All SUV factors for one series (see module docstring for the rules)."""
    r = SuvResult()
    units = (h.units or "").upper()
    decay = (h.decay_correction or "").upper()
    r.scan_datetime, r.scan_datetime_source = scan_start(h.series_datetime, h.frames, h.ge_scan_datetime,
                                                         h.half_life_s)
    r.injection_datetime, r.injection_datetime_source, injection_problem = injection_start(
        h.injection_datetime, h.injection_time, r.scan_datetime)
    if r.scan_datetime and r.injection_datetime:
        r.decay_time_s = (r.scan_datetime - r.injection_datetime).total_seconds()

    problems: list[str] = []
    if units == "GML":
        r.output_units = "SUVbw"
        r.activity_unavailable_reason = "the file stores SUVbw (Units GML); activity in Bq/ml cannot be recovered"
        problems.append(r.activity_unavailable_reason)
    elif units == "CNTS" and not _positive(h.philips_activity_factor):
        r.output_units = "SUVbw"
        r.activity_unavailable_reason = ("Units CNTS without the Philips Activity Concentration Scale Factor "
                                         "(7053,xx09); activity in Bq/ml cannot be computed, the volume is "
                                         "loaded in SUVbw from the SUV Scale Factor (7053,xx00)")
        problems.append(r.activity_unavailable_reason)
    elif units == "CNTS" and _positive(h.philips_suv_factor):
        r.suv_bw_factor = h.philips_suv_factor / h.philips_activity_factor
    else:
        problems += _bqml_problems(h, r, decay, injection_problem)
        if not problems:
            dose = h.injected_dose_bq if decay == "ADMIN" else decayed_dose_bq(
                h.injected_dose_bq, h.half_life_s, r.decay_time_s)
            r.decayed_dose_bq = dose
            r.suv_bw_factor = h.patient_weight_kg * 1000.0 / dose
    if problems:
        r.suv_bw_unavailable_reason = "; ".join(problems) + "; SUV cannot be computed"
    _lean_body_mass(h, r)
    return r


def _bqml_problems(h: SuvHeader, r: SuvResult, decay: str, injection_problem: str | None) -> list[str]:
    """Sentences naming each missing or inconsistent input of the BQML formula (empty list: all good)."""
    problems: list[str] = []
    if not _positive(h.patient_weight_kg):
        problems.append("PatientWeight (0010,1030) missing or zero — enter the weight")
    if not _positive(h.injected_dose_bq):
        problems.append("RadionuclideTotalDose (0018,1074) missing or zero — enter the injected activity")
    if decay == "START":
        if not _positive(h.half_life_s):
            problems.append("RadionuclideHalfLife (0018,1075) missing or zero — enter the half-life")
        if r.injection_datetime is None:
            problems.append("RadiopharmaceuticalStartTime (0018,1072) and StartDateTime (0018,1078) missing "
                            "— enter the injection time")
        if r.scan_datetime is None:
            problems.append("SeriesDate/SeriesTime and AcquisitionDate/AcquisitionTime missing — the scan "
                            "start is unknown")
        if injection_problem:
            problems.append(injection_problem)
        elif r.decay_time_s is not None and r.decay_time_s < 0:
            problems.append(f"the injection ({r.injection_datetime}) is after the scan start "
                            f"({r.scan_datetime}); check the injection time")
    elif not decay:
        problems.append("DecayCorrection (0054,1102) missing; SUV needs START or ADMIN")
    elif decay != "ADMIN":
        problems.append(f"DecayCorrection (0054,1102) is {decay}; SUV needs START or ADMIN")
    corrections = {c.upper() for c in (h.corrected_image or ())}
    if h.corrected_image and "DECY" not in corrections:
        problems.append("CorrectedImage (0028,0051) lacks DECY: the images are not decay-corrected")
    if h.corrected_image and "ATTN" not in corrections:
        problems.append("CorrectedImage (0028,0051) lacks ATTN: the images are not attenuation-corrected")
    return problems


def _lean_body_mass(h: SuvHeader, r: SuvResult) -> None:
    sex = (h.patient_sex or "").strip().upper()
    if not (_positive(h.patient_weight_kg) and _positive(h.patient_size_m) and sex in ("M", "F")):
        r.suv_lbm_unavailable_reason = ("SUVlbm needs PatientWeight (0010,1030), PatientSize (0010,1020, "
                                        "height in m) and PatientSex (0010,0040) M or F — enter them")
        return
    r.lean_body_mass_kg = lean_body_mass_kg(h.patient_weight_kg, h.patient_size_m, sex)
    if r.suv_bw_factor is None:
        r.suv_lbm_unavailable_reason = r.suv_bw_unavailable_reason or "SUVbw is unavailable"
        return
    r.suv_lbm_factor = r.suv_bw_factor * r.lean_body_mass_kg / h.patient_weight_kg


# ------------------------------------------------------------------------------------------ pydicom access
def private_value(ds, group: int, creator: str, offset: int) -> Any:
    """Value of private element (group, xx<offset>) in the block ``creator`` reserves, or None.

    The creator is matched case-insensitively, ignoring padding. When no creator element exists at all in
    the group (anonymisers sometimes drop it), the conventional block 0x10 is used.
    """
    from pydicom.tag import Tag

    block = None
    any_creator = False
    for elem in range(0x10, 0x100):
        tag = Tag(group, elem)
        if tag in ds:
            any_creator = True
            if _text(ds[tag].value).lower() == creator.lower():
                block = elem
                break
    if block is None and not any_creator:
        block = 0x10
    if block is None:
        return None
    tag = Tag(group, (block << 8) | offset)
    return ds[tag].value if tag in ds else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="ignore")
    return str(value).strip("\x00 ").strip()


def to_float(value: Any) -> float | None:
    """DS/IS/FD/UN value -> float, or None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        text = _text(value)
        try:
            return float(text.split("\\")[0])
        except ValueError:
            import struct
            if len(value) in (4, 8):
                return struct.unpack("<f" if len(value) == 4 else "<d", value)[0]
            return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        out = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return out if out is None or math.isfinite(out) else None


def header_from_datasets(datasets: Sequence[Any]) -> SuvHeader:
    """Collect :class:`SuvHeader` from the slices of one PET series (pydicom datasets)."""
    ds = datasets[0]
    radio = ds.RadiopharmaceuticalInformationSequence[0] if ds.get("RadiopharmaceuticalInformationSequence") \
        else {}
    corrected = ds.get("CorrectedImage")
    if corrected is not None and not isinstance(corrected, str):
        corrected = tuple(str(c) for c in corrected)
    elif corrected:
        corrected = (str(corrected),)
    frames = []
    for d in datasets:
        acq = parse_dt(d.get("AcquisitionDateTime")) or combine(
            parse_da(d.get("AcquisitionDate")), parse_tm(d.get("AcquisitionTime")))
        frames.append(FrameTiming(acq, to_float(d.get("FrameReferenceTime")), to_float(d.get("ActualFrameDuration"))))
    sex = _text(ds.get("PatientSex") or "") or None
    return SuvHeader(
        units=_text(ds.get("Units") or "").upper() or None,
        decay_correction=_text(ds.get("DecayCorrection") or "").upper() or None,
        corrected_image=corrected or None,
        patient_weight_kg=to_float(ds.get("PatientWeight")),
        patient_size_m=to_float(ds.get("PatientSize")),
        patient_sex=sex,
        injected_dose_bq=to_float(radio.get("RadionuclideTotalDose")),
        half_life_s=to_float(radio.get("RadionuclideHalfLife")),
        series_datetime=combine(parse_da(ds.get("SeriesDate")), parse_tm(ds.get("SeriesTime"))),
        frames=frames,
        ge_scan_datetime=parse_dt(_text(private_value(ds, 0x0009, GE_CREATOR, 0x0D) or "")),
        injection_datetime=parse_dt(radio.get("RadiopharmaceuticalStartDateTime")),
        injection_time=parse_tm(radio.get("RadiopharmaceuticalStartTime")),
        philips_suv_factor=to_float(private_value(ds, 0x7053, PHILIPS_CREATOR, 0x00)),
        philips_activity_factor=to_float(private_value(ds, 0x7053, PHILIPS_CREATOR, 0x09)),
    )
