"""C-arm geometry: intrinsics round trips, resizing and validation."""

import numpy as np
import pytest

from sphere_reg_ros.core.carm import CarmGeometry, CarmGeometryError


def test_intrinsics_round_trip_with_offsets():
    g = CarmGeometry(sdd=1100.0, height=96, width=128, delx=1.5, dely=1.8, x0=12.0, y0=-7.5)
    K = g.intrinsic_matrix()
    assert K[0, 0] == pytest.approx(1100.0 / 1.5)
    assert K[1, 2] == pytest.approx((96 - 1) / 2 - 7.5 / 1.8)
    back = CarmGeometry.from_intrinsics(K, height=96, width=128, sdd=1100.0)
    for key, value in g.to_dict().items():
        assert getattr(back, key) == pytest.approx(value)


def test_from_intrinsics_accepts_flat_camera_info_k():
    g = CarmGeometry(height=64, width=64, delx=4.0, dely=4.0)
    back = CarmGeometry.from_intrinsics(list(g.intrinsic_matrix().ravel()), 64, 64, sdd=g.sdd)
    assert back.fx == pytest.approx(g.fx) and back.cy == pytest.approx(g.cy)


def test_resize_keeps_physical_projection():
    g = CarmGeometry(sdd=1020.0, height=256, width=200, delx=1.0, dely=1.2, x0=5.0, y0=3.0)
    small = g.resized(64, 50)
    points = np.array([[10.0, -20.0, 600.0], [-50.0, 35.0, 700.0], [0.0, 0.0, 650.0]])
    uv = g.project(points)
    uv_small = small.project(points)
    # pixel-centre convention: u_small + 0.5 = (u + 0.5) * (50 / 200)
    np.testing.assert_allclose(uv_small[:, 0] + 0.5, (uv[:, 0] + 0.5) * 50 / 200, rtol=1e-12)
    np.testing.assert_allclose(uv_small[:, 1] + 0.5, (uv[:, 1] + 0.5) * 64 / 256, rtol=1e-12)
    assert g.downsampled(4.0).height == 64 and g.downsampled(4.0).width == 50


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sdd": 0.0}, "sdd must be positive"),
        ({"delx": -1.0}, "delx must be positive"),
        ({"height": 0}, "height must be a positive integer"),
        ({"width": 3.5}, "width must be a positive integer"),
        ({"x0": float("nan")}, "x0 must be a finite number"),
    ],
)
def test_invalid_geometry_is_rejected_with_reason(kwargs, message):
    with pytest.raises(CarmGeometryError, match=message):
        CarmGeometry(**kwargs)


def test_invalid_intrinsics_are_rejected():
    with pytest.raises(CarmGeometryError, match="positive focal"):
        CarmGeometry.from_intrinsics(np.diag([-1.0, 1.0, 1.0]), 64, 64)
    with pytest.raises(CarmGeometryError, match="3x3"):
        CarmGeometry.from_intrinsics(np.eye(2), 64, 64)
    with pytest.raises(CarmGeometryError, match="zero-skew"):
        CarmGeometry.from_intrinsics(np.array([[500.0, 3.0, 32], [0, 500, 32], [0, 0, 1]]), 64, 64)
    with pytest.raises(CarmGeometryError, match="unknown"):
        CarmGeometry.from_dict({"sdd": 1.0, "focal": 3})
