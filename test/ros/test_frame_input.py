"""The node's input checks and intensity conversion (sphere_reg_ros.ros.frame_input), no node."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.ros import conversions as conv
from sphere_reg_ros.ros import params as P
from sphere_reg_ros.ros.frame_input import REASONS, FrameRejected, frame_geometry, line_integrals, prepare_frame

pytestmark = pytest.mark.ros

GEOMETRY = CarmGeometry(sdd=1020.0, height=24, width=32, delx=3.0, dely=3.0)


def _settings(**changes):
    return P.validate({**P.yaml_defaults(), **changes}, changed=set())


def test_line_integral_and_intensity_domains():
    img = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(line_integrals(img, "line_integral"), img.astype(np.float32))
    counts = np.array([[1000.0, 500.0], [0.0, 250.0]])
    out = line_integrals(counts, "intensity")  # I_max = the image's maximum
    np.testing.assert_allclose(out, [[0.0, np.log(2)], [-np.log(1e-6), np.log(4)]], rtol=1e-6)
    np.testing.assert_allclose(line_integrals(counts, "intensity", 2000.0)[0, 0], np.log(2), rtol=1e-6)
    with pytest.raises(FrameRejected, match="no positive pixel") as info:
        line_integrals(np.zeros((2, 2)), "intensity")
    assert info.value.reason == "bad_intensity"


def test_geometry_from_camera_info_or_the_fallback_parameters():
    info = conv.geometry_to_camera_info(GEOMETRY)
    g = frame_geometry(info, _settings(), 24, 32)
    np.testing.assert_allclose(g.intrinsic_matrix(), GEOMETRY.intrinsic_matrix())
    with pytest.raises(FrameRejected, match="no camera_info received") as e:
        frame_geometry(None, _settings(), 24, 32)
    assert e.value.reason == "no_intrinsics"
    s = _settings(fx=340.0, fy=340.0, width=32, height=24)  # cx, cy = -1: the image centre
    np.testing.assert_allclose(frame_geometry(None, s, 24, 32).intrinsic_matrix(), GEOMETRY.intrinsic_matrix())
    # use_camera_info false: the parameters win even when CameraInfo is there
    s = _settings(use_camera_info=False, fx=100.0, fy=100.0, width=32, height=24)
    assert frame_geometry(info, s, 24, 32).fx == pytest.approx(100.0)
    with pytest.raises(FrameRejected, match=r"image 24x32 \(WxH\) disagrees with CameraInfo 32x24") as e:
        frame_geometry(info, _settings(), 32, 24)
    assert e.value.reason == "size_mismatch"


def test_prepare_frame_checks_in_order_and_every_reason_has_a_level():
    s = _settings(max_image_age_s=1.0)
    info = conv.geometry_to_camera_info(GEOMETRY)
    good = conv.numpy_to_image(np.ones((24, 32), np.float32), "32FC1")
    image, g = prepare_frame(good, info, s, age_s=0.5)
    assert image.dtype == np.float32 and image.shape == (24, 32) and g == frame_geometry(info, s, 24, 32)
    mono16 = conv.numpy_to_image(np.full((24, 32), 1000, np.uint16), "mono16", is_bigendian=True)
    assert prepare_frame(mono16, info, s, 0.0)[0].max() == 1000.0
    cases = [
        (good, 1.5, "stale"),
        (conv.numpy_to_image(np.zeros((24, 32, 3), np.uint8), "bgr8"), 0.0, "unsupported_encoding"),
        (conv.numpy_to_image(np.full((24, 32), np.nan, np.float32), "32FC1"), 0.0, "non_finite"),
        (conv.numpy_to_image(np.ones((24, 31), np.float32), "32FC1"), 0.0, "size_mismatch"),
    ]
    for msg, age, reason in cases:
        with pytest.raises(FrameRejected) as e:
            prepare_frame(msg, info, s, age)
        assert e.value.reason == reason and reason in REASONS
