"""Shared geometry cases for tests: identity (LPS), RAS-aligned (flipped i/j), oblique, and a left-handed flip."""

import numpy as np


def rotation(axis, degrees):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.array([[c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                     [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
                     [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)]])


GEOMETRIES = {
    "lps": dict(spacing=(2.0, 3.0, 4.0), origin=(-100.0, -120.5, 30.25), direction=np.eye(3)),
    "ras": dict(spacing=(1.5, 1.5, 3.27), origin=(200.0, 180.0, -400.0), direction=np.diag([-1.0, -1.0, 1.0])),
    "oblique": dict(spacing=(2.08, 2.08, 2.78), origin=(12.5, -33.0, 101.0),
                    direction=rotation((1, 2, 3), 17.0)),
    "flipped_k": dict(spacing=(4.0, 4.0, 3.0), origin=(0.0, 0.0, 0.0), direction=np.diag([1.0, 1.0, -1.0])),
}
