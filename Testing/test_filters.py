"""Gaussian post-filter and Richardson-Lucy deconvolution: FWHM in mm with anisotropic spacing, activity
conserved, geometry kept."""

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import NMAIError, Volume
from nmai.filters import gaussian_filter, richardson_lucy


def fwhm_of_profile(profile, spacing):
    """FWHM (mm) of a sampled Gaussian from its second moment (exact for a Gaussian)."""
    x = (np.arange(profile.size) - np.argmax(profile)) * spacing
    p = profile / profile.sum()
    sigma = np.sqrt(np.sum(p * x ** 2) - np.sum(p * x) ** 2)
    return sigma * 2 * np.sqrt(2 * np.log(2))


def test_point_source_gets_the_requested_fwhm_along_each_axis():
    spacing = (2.0, 3.0, 5.0)  # i, j, k
    arr = np.zeros((41, 61, 81), np.float32)
    arr[20, 30, 40] = 1000.0
    out = gaussian_filter(Volume(arr, spacing=spacing, modality="PT", units="Bq/ml"), 12.0).array
    assert fwhm_of_profile(out[20, 30, :], spacing[0]) == pytest.approx(12.0, rel=0.02)
    assert fwhm_of_profile(out[20, :, 40], spacing[1]) == pytest.approx(12.0, rel=0.02)
    assert fwhm_of_profile(out[:, 30, 40], spacing[2]) == pytest.approx(12.0, rel=0.03)
    assert out.sum() == pytest.approx(1000.0, rel=1e-4)


def test_uniform_region_is_unbiased_and_geometry_units_kept():
    g = GEOMETRIES["oblique"]
    arr = np.full((10, 12, 14), 5000.0, np.float32)
    v = Volume(arr, modality="PT", units="SUVbw", metadata={"suv_bw_factor": 1.0}, **g)
    out = gaussian_filter(v, 8.0)
    np.testing.assert_allclose(out.array, 5000.0, rtol=1e-5)
    assert out.same_grid(v) and out.units == "SUVbw" and out.modality == "PT"
    assert out.metadata["method"] == "gaussian"
    np.testing.assert_array_equal(v.array, 5000.0)  # input untouched


def test_zero_fwhm_is_identity_and_negative_refused():
    v = Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), modality="PT", units="Bq/ml")
    np.testing.assert_array_equal(gaussian_filter(v, 0.0).array, v.array)
    with pytest.raises(NMAIError, match="FWHM"):
        gaussian_filter(v, -1.0)


def test_richardson_lucy_narrows_a_blurred_point_toward_the_analytic_width():
    # a point blurred to 10 mm FWHM, deconvolved with an 8 mm Gaussian: the exact answer is a point blurred
    # to sqrt(10^2 - 8^2) = 6 mm; RL approaches it from above, keeping the activity and staying >= 0
    spacing = (2.0, 2.0, 3.0)
    arr = np.zeros((31, 41, 41), np.float32)
    arr[15, 20, 20] = 1000.0
    g = GEOMETRIES["oblique"]
    blurred = gaussian_filter(Volume(arr, spacing=spacing, origin=g["origin"], direction=g["direction"],
                                     modality="PT", units="Bq/ml"), 10.0)
    before = blurred.array.copy()
    widths = []
    for n in (5, 40):
        out = richardson_lucy(blurred, 8.0, n)
        widths.append(fwhm_of_profile(out.array[15, 20, :], spacing[0]))
        assert out.array.min() >= 0 and out.array.sum() == pytest.approx(1000.0, rel=1e-3)
    assert widths[0] < 10.0 and widths[1] < widths[0] and widths[1] == pytest.approx(6.0, abs=0.2)
    assert out.same_grid(blurred) and out.units == "Bq/ml" and out.modality == "PT"
    assert out.metadata["parameters"] == {"fwhm_mm": 8.0, "iterations": 40}
    np.testing.assert_array_equal(blurred.array, before)  # input untouched


def test_richardson_lucy_keeps_a_uniform_image_and_refuses_zero_iterations():
    v = Volume(np.full((8, 9, 10), 3.5, np.float32), spacing=(4.0, 4.0, 3.0), modality="PT", units="SUVbw")
    np.testing.assert_allclose(richardson_lucy(v, 6.0, 10).array, 3.5, rtol=1e-5)
    with pytest.raises(NMAIError, match="at least 1 iteration"):
        richardson_lucy(v, 6.0, 0)
