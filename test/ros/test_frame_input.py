"""The node's input checks and intensity conversion (sphere_reg_ros.ros.frame_input), no node."""

from __future__ import annotations

import numpy as np
import pytest

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.ros import conversions as conv
from sphere_reg_ros.ros import params as P
from sphere_reg_ros.ros.diagnostics import ERROR, WARN
from sphere_reg_ros.ros.frame_input import (
    REASONS,
    FrameRejected,
    check_stamp,
    frame_geometry,
    line_integrals,
    match_camera_info,
    prepare_frame,
)

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
    np.testing.assert_allclose(
        line_integrals(counts, "intensity", 2000.0)[0, 0], np.log(2), rtol=1e-6
    )
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
    np.testing.assert_allclose(
        frame_geometry(None, s, 24, 32).intrinsic_matrix(), GEOMETRY.intrinsic_matrix()
    )
    # use_camera_info false: the parameters win even when CameraInfo is there
    s = _settings(use_camera_info=False, fx=100.0, fy=100.0, width=32, height=24)
    assert frame_geometry(info, s, 24, 32).fx == pytest.approx(100.0)
    with pytest.raises(
        FrameRejected, match=r"image 24x32 \(WxH\) disagrees with CameraInfo 32x24"
    ) as e:
        frame_geometry(info, _settings(), 32, 24)
    assert e.value.reason == "size_mismatch"


def test_prepare_frame_checks_in_order_and_every_reason_has_a_level():
    s = _settings(max_image_age_s=1.0)
    info = conv.geometry_to_camera_info(GEOMETRY)
    good = conv.numpy_to_image(np.ones((24, 32), np.float32), "32FC1")
    image, g = prepare_frame(good, info, s, age_s=0.5)
    assert (
        image.dtype == np.float32
        and image.shape == (24, 32)
        and g == frame_geometry(info, s, 24, 32)
    )
    mono16 = conv.numpy_to_image(np.full((24, 32), 1000, np.uint16), "mono16", is_bigendian=True)
    assert prepare_frame(mono16, info, s, 0.0)[0].max() == 1000.0
    cases = [
        (good, 1.5, "stale"),
        (good, -0.6, "future_stamp"),  # max_future_stamp_s 0.5 by default
        (conv.numpy_to_image(np.zeros((24, 32, 3), np.uint8), "bgr8"), 0.0, "unsupported_encoding"),
        (conv.numpy_to_image(np.full((24, 32), np.nan, np.float32), "32FC1"), 0.0, "non_finite"),
        (conv.numpy_to_image(np.ones((24, 31), np.float32), "32FC1"), 0.0, "size_mismatch"),
    ]
    for msg, age, reason in cases:
        with pytest.raises(FrameRejected) as e:
            prepare_frame(msg, info, s, age)
        assert e.value.reason == reason and reason in REASONS


def test_stamps_too_old_or_too_far_ahead_are_refused_with_how_far():
    s = _settings(max_image_age_s=2.0, max_future_stamp_s=0.5)
    for age in (2.0, 0.0, -0.5):  # limits inclusive
        check_stamp(age, s)
    with pytest.raises(
        FrameRejected,
        match=r"image stamp 3\.250 s ahead of the node clock .*max_future_stamp_s 0\.5",
    ) as e:
        check_stamp(-3.25, s)
    assert e.value.reason == "future_stamp" and REASONS["future_stamp"] == ERROR
    with pytest.raises(FrameRejected, match="stale image: stamp 2.50 s old"):
        check_stamp(2.5, s)
    check_stamp(-1e5, _settings(max_future_stamp_s=0.0))  # 0 = no limit


def _info(sec: float, width: int = 32):
    info = conv.geometry_to_camera_info(
        CarmGeometry(sdd=1020.0, height=24, width=width, delx=3.0, dely=3.0)
    )
    info.header.stamp.sec, info.header.stamp.nanosec = int(sec), int(round((sec - int(sec)) * 1e9))
    return info


NS = 1_000_000_000


def test_camera_info_is_paired_by_stamp_not_by_arrival():
    # arrival order 100.0, 100.5, 101.0 (widths 30, 31, 32 tell them apart)
    buffer = [_info(100.0, 30), _info(100.5, 31), _info(101.0, 32)]
    assert match_camera_info(buffer, 100 * NS, 0.05, 1.0).width == 30  # not the newest
    assert (
        match_camera_info(buffer, 100 * NS + 40_000_000, 0.05, 1.0).width == 30
    )  # 40 ms: in tolerance
    assert (
        match_camera_info(buffer, 100 * NS + 460_000_000, 0.05, 1.0).width == 31
    )  # closer to 100.5
    # none within tolerance: the newest at or before the image, if at most camera_info_max_age_s older
    assert match_camera_info(buffer, 100 * NS + 300_000_000, 0.05, 1.0).width == 30
    assert match_camera_info(buffer, 101 * NS + 900_000_000, 0.05, 1.0).width == 32
    assert match_camera_info([], 100 * NS, 0.05, 1.0) is None  # none yet: the parameters
    assert REASONS["unmatched_camera_info"] == WARN


@pytest.mark.parametrize(
    "image_s,tolerance,max_age,why",
    [
        (
            102.5,
            0.05,
            1.0,
            r"the newest at or before it is 1\.500 s older \(camera_info_max_age_s 1\)",
        ),
        (
            99.0,
            0.05,
            1.0,
            "none is stamped at or before it",
        ),  # CameraInfo from after the image: never
        (100.3, 0.05, 0.0, "camera_info_max_age_s 0"),  # 0: strict pairing, no fall-back
        # 0.2 s before 100.5 (beyond 0.1 s), 0.3 s after 100.0 (beyond 0.25 s)
        (
            100.3,
            0.1,
            0.25,
            r"closest of the last 3 is 0\.200 s off \(camera_info_tolerance_s 0\.1\)",
        ),
    ],
)
def test_unmatched_camera_info_says_why(image_s, tolerance, max_age, why):
    buffer = [_info(100.0), _info(100.5), _info(101.0)]
    with pytest.raises(FrameRejected, match=why) as e:
        match_camera_info(buffer, int(round(image_s * NS)), tolerance, max_age)
    assert e.value.reason == "unmatched_camera_info"
    assert "no CameraInfo pairs with the image stamped" in str(e.value)


def test_zero_k_reaches_the_node_as_a_note_and_a_bad_k_as_bad_camera_info():
    info = conv.geometry_to_camera_info(GEOMETRY)
    info.k = [0.0] * 9
    np.testing.assert_allclose(
        frame_geometry(info, _settings(), 24, 32).intrinsic_matrix(), GEOMETRY.intrinsic_matrix()
    )
    info.k = [-340.0, 0.0, 15.5, 0.0, 340.0, 11.5, 0.0, 0.0, 1.0]
    with pytest.raises(FrameRejected, match="negative focal length") as e:
        frame_geometry(info, _settings(), 24, 32)
    assert e.value.reason == "bad_camera_info"


def test_reduction_factor_keeps_four_times_the_resolution_and_divides_both_sides():
    from sphere_reg_ros.ros.frame_input import reduction_factor

    assert reduction_factor(4096, 4096, 64) == 16  # 256 rows
    assert reduction_factor(1000, 1000, 64) == 2  # 3 does not divide 1000
    assert reduction_factor(32, 32, 32) == 1  # small images are left alone
    assert reduction_factor(1024, 1536, 64) == 4
    assert reduction_factor(997, 1024, 64) == 1  # a prime height: no integer factor


@pytest.mark.parametrize("domain", ["line_integral", "intensity"])
def test_reduced_line_integrals_equal_full_size_conversion_then_block_means(domain):
    from sphere_reg_ros.ros.frame_input import reduced_line_integrals

    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4000, (96, 64), dtype=np.uint16)
    full = line_integrals(counts, domain)
    for f in (1, 2, 4, 8):
        out = reduced_line_integrals(counts, domain, 0.0, f)
        assert out.dtype == np.float32 and out.shape == (96 // f, 64 // f)
        expected = full.reshape(96 // f, f, 64 // f, f).astype(np.float64).mean(axis=(1, 3))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        reduced_line_integrals(counts, domain, 0.0, 5)


def test_the_conversion_of_a_large_frame_makes_no_full_size_float_copy():
    """A 2048² mono16 frame: prepare_frame's own allocations (tracemalloc; numpy reports to it)
    stay far below one full-size float32 array (16 MiB), let alone float64 (32 MiB); the result is
    the reduced float32 image with the geometry resized to it (same field of view)."""
    import tracemalloc

    size = 2048
    s = _settings(
        resolution=64, use_camera_info=False, fx=2000.0, fy=2000.0, width=size, height=size
    )
    msg = conv.numpy_to_image(
        np.random.default_rng(0).integers(1, 60000, (size, size), dtype=np.uint16), "mono16"
    )
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        image, g = prepare_frame(msg, None, s, 0.0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert image.dtype == np.float32 and image.shape == (256, 256)
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert (g.height, g.width) == (256, 256)
    assert g.width * g.delx == pytest.approx(size * 1020.0 / 2000.0)  # field of view unchanged
    full = line_integrals(conv.image_to_numpy(msg), "line_integral")
    np.testing.assert_allclose(image, full.reshape(256, 8, 256, 8).mean(axis=(1, 3)), rtol=1e-5)


def test_frames_over_max_image_pixels_are_refused_before_decoding():
    s = _settings(max_image_pixels=100)
    msg = conv.numpy_to_image(np.ones((24, 32), dtype=np.float32), "32FC1")
    msg.data = b""  # never decoded: the size fields decide
    with pytest.raises(FrameRejected, match="more than max_image_pixels 100") as e:
        prepare_frame(msg, conv.geometry_to_camera_info(GEOMETRY), s, 0.0)
    assert e.value.reason == "too_large" and REASONS["too_large"] == ERROR
    image, _ = prepare_frame(
        conv.numpy_to_image(np.ones((24, 32), dtype=np.float32), "32FC1"),
        conv.geometry_to_camera_info(GEOMETRY),
        _settings(max_image_pixels=0),
        0.0,
    )
    assert image.shape == (24, 32)


def test_a_dicom_header_gives_the_intrinsics_without_camera_info(tmp_path):
    """dicom_geometry_path: the header's intrinsics for frames without a paired CameraInfo (a
    whole-factor binned image resized), validated when set, a missing tag named."""
    import pydicom

    from sphere_reg_ros.evaluation.xvr_dicom import write_xray_dicom

    g = CarmGeometry(sdd=1100.0, height=48, width=64, delx=0.6, dely=0.5, x0=3.0, y0=-2.0)
    path = str(write_xray_dicom(tmp_path / "c.dcm", np.ones((48, 64)), g))
    s = _settings(dicom_geometry_path=path)
    P.validate(s.values)  # a usable file is accepted
    assert frame_geometry(None, s, 48, 64).to_dict() == pytest.approx(g.to_dict())
    assert frame_geometry(None, s, 24, 32).to_dict() == pytest.approx(g.resized(24, 32).to_dict())
    with pytest.raises(FrameRejected, match="DICOM header") as exc:
        frame_geometry(None, s, 40, 64)
    assert exc.value.reason == "size_mismatch"
    info = conv.geometry_to_camera_info(GEOMETRY)  # a paired CameraInfo still wins
    assert frame_geometry(info, s, 24, 32).fx == pytest.approx(GEOMETRY.fx)
    ds = pydicom.dcmread(path)
    del ds.DistanceSourceToDetector
    ds.save_as(tmp_path / "no_sdd.dcm")
    with pytest.raises(P.ParameterError, match=r"DistanceSourceToDetector \(0018,1110\)"):
        P.validate({**s.values, "dicom_geometry_path": str(tmp_path / "no_sdd.dcm")})
    with pytest.raises(P.ParameterError, match="no such readable file"):
        P.validate({**s.values, "dicom_geometry_path": str(tmp_path / "none.dcm")})
