"""Projector, back-projector, attenuation and count calibration of the PET simulator (nmai.sim)."""

import math

import numpy as np
import pytest
import torch

from nmai.sim.model import EmissionModel, GaussianPSF, volume_to_columns
from nmai.sim.projector import Grid2D, SystemMatrix
from nmai.sim.scanner import Scanner, frame_decay_integral

SCANNER = Scanner()


@pytest.fixture(scope="module")
def sm64():
    return SystemMatrix(SCANNER, Grid2D.centred(64, 64, 4.0))


def _dot(a, b):
    return float((a.double() * b.double()).sum())


def test_lor_geometry_matches_ring():
    a, b = SCANNER.lor_crystals()
    n = SCANNER.n_crystals
    t = SCANNER.radial_index()
    centre = int(np.flatnonzero(t == 0)[0])
    # the central bin of every view joins diametrically opposed crystals
    assert np.all((a[:, centre] - b[:, centre]) % n == n // 2)
    # every LOR lies at distance R|sin(pi t / N)| from the scanner axis
    p1, p2 = SCANNER.lor_endpoints()
    d = p2 - p1
    dist = np.abs(p1[..., 0] * d[..., 1] - p1[..., 1] * d[..., 0]) / np.hypot(d[..., 0], d[..., 1])
    expected = SCANNER.radius_mm * np.abs(np.sin(np.pi * t / n))
    np.testing.assert_allclose(dist, np.broadcast_to(expected, dist.shape), atol=1e-6)
    # 448 crystals -> 224 views, 344 bins; about 2.3 mm radial sampling at the centre
    assert (SCANNER.n_views, SCANNER.n_bins) == (224, 344)
    assert SCANNER.to_dict()["derived"]["bin_mm_at_centre"] == pytest.approx(math.pi * 328 / 448, rel=1e-3)


def test_backprojector_is_adjoint(sm64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(sm64.n_pixels, 3, generator=g)
    y = torch.rand(sm64.n_rows, 3, generator=g)
    lhs, rhs = _dot(sm64.forward(x), y), _dot(x, sm64.back(y))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    for k in (0, 3):
        yk = torch.rand(len(sm64.rows_of_subset(k, 8)), 3, generator=g)
        lhs, rhs = _dot(sm64.forward(x, k, 8), yk), _dot(x, sm64.back(yk, k, 8))
        assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_full_emission_model_is_adjoint(sm64):
    """c ⊙ A G m and m G Aᵀ (c ⊙ ·), with PSF, FOV mask and attenuation/normalisation weights."""
    g = torch.Generator().manual_seed(1)
    grid = sm64.grid
    psf = GaussianPSF(grid, 4.0, 6.0)
    assert not psf.identity
    c = torch.rand(sm64.n_rows, 4, generator=g) + 0.5
    model = EmissionModel(sm64, psf, grid.fov_mask(200.0), c)
    x = torch.rand(sm64.n_pixels, 4, generator=g)
    y = torch.rand(sm64.n_rows, 4, generator=g)
    lhs, rhs = _dot(model.project(x), y), _dot(x, model.backproject(y))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def _pv_disc(grid: Grid2D, radius: float, sub: int = 8) -> np.ndarray:
    """Fraction of each pixel inside a centred disc (sub × sub samples per pixel)."""
    off = (np.arange(sub) + 0.5) / sub - 0.5
    x, y = grid.centres()
    frac = np.zeros_like(x)
    for ox in off:
        for oy in off:
            frac += (x + ox * grid.dx) ** 2 + (y + oy * grid.dy) ** 2 <= radius ** 2
    return frac / sub ** 2


def test_attenuation_of_water_cylinder_matches_exp_minus_mu_l():
    grid = Grid2D.centred(128, 128, 2.0)
    sm = SystemMatrix(SCANNER, grid)
    radius, mu_water = 100.0, 0.096
    mu = mu_water * _pv_disc(grid, radius)
    att = torch.exp(-0.1 * sm.forward(volume_to_columns(mu[None]))).numpy().reshape(SCANNER.n_views, SCANNER.n_bins)
    t = SCANNER.radial_index()
    for tt in (0, 1, 20, -35):
        col = int(np.flatnonzero(t == tt)[0])
        s = SCANNER.radius_mm * math.sin(math.pi * tt / SCANNER.n_crystals)
        chord_cm = 2.0 * math.sqrt(radius ** 2 - s ** 2) / 10.0
        expected = math.exp(-mu_water * chord_cm)
        # every view (0..180 degrees) sees the same chord through a centred cylinder
        np.testing.assert_allclose(att[:, col], expected, rtol=0.01)
    # central LOR: exp(-0.096 * 20 cm) = 0.1466
    centre = int(np.flatnonzero(t == 0)[0])
    assert att[:, centre].mean() == pytest.approx(math.exp(-1.92), rel=0.005)


def test_counts_equal_sensitivity_times_decays(sm64):
    """Without attenuation and with ideal crystals, expected trues = sensitivity × decays in the frame."""
    grid = sm64.grid
    act = np.zeros((5, 64, 64), np.float32)
    act[:] = 5000.0 * _pv_disc(grid, 90.0, sub=4)
    voxel_ml = 0.064
    t_eff = frame_decay_integral(0.0, 180.0)
    geo = np.tile(SCANNER.geometric_efficiency(), SCANNER.n_views).astype(np.float32).reshape(-1, 1)
    c = torch.from_numpy(geo) * float(SCANNER.lor_weight(grid.pixel_area_mm2) * t_eff * voxel_ml)
    model = EmissionModel(sm64, GaussianPSF(grid, 4.0, 0.0), grid.fov_mask(594.0), c.expand(-1, 5).contiguous())
    counts = model.project(volume_to_columns(act)).sum(0).numpy()
    decays = act.sum(axis=(1, 2)) * voxel_ml * t_eff
    np.testing.assert_allclose(counts / decays, SCANNER.sensitivity, rtol=0.01)
    # NEMA 15 cps/kBq over a 700 mm line source, 258 mm axial FOV
    assert SCANNER.sensitivity == pytest.approx(0.015 * 700 / 258)


def test_large_crystal_option_coarsens_sampling():
    big = SCANNER.with_(crystal_group=2)
    assert (big.n_crystals, big.n_views, big.n_bins) == (224, 112, 172)
    assert big.effective_crystal_mm == 8.0
    assert big.resolution_fwhm_mm > SCANNER.resolution_fwhm_mm + 1.0
    assert 3.8 < SCANNER.resolution_fwhm_mm < 5.0
