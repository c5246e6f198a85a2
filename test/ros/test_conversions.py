"""Message ⇄ array conversions (sphere_reg_ros.ros.conversions): no node, message types only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.geometry import se3_exp, so3_log
from sphere_reg_ros.ros import conversions as conv

pytestmark = pytest.mark.ros


def _sample(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(7)
    dtype, channels = conv.ENCODINGS[encoding]
    shape = (h, w, channels) if channels > 1 else (h, w)
    if dtype.kind == "u":
        a = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=np.uint64).astype(dtype)
        a.flat[0], a.flat[-1] = np.iinfo(dtype).max, 0
        return a
    return rng.normal(size=shape).astype(dtype) * 1e3


# ----------------------------------------------------------------------------- images
@pytest.mark.parametrize("encoding", sorted(conv.ENCODINGS))
@pytest.mark.parametrize("pad", [0, 3], ids=["tight", "odd-padding"])
@pytest.mark.parametrize("bigendian", [False, True], ids=["little", "big"])
def test_image_round_trip_every_encoding(encoding, pad, bigendian):
    a = _sample(encoding)
    dtype, channels = conv.ENCODINGS[encoding]
    row = a.shape[1] * channels * dtype.itemsize
    msg = conv.numpy_to_image(
        a, encoding, step=row + pad, is_bigendian=bigendian, padding_byte=0xA5
    )
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, row + pad, encoding)
    assert msg.is_bigendian == int(bigendian)
    assert len(msg.data) == msg.step * msg.height
    out = conv.image_to_numpy(msg)
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_big_endian_mono16_is_byte_swapped_on_the_wire():
    a = np.array([[0x0102, 0xA0B0]], dtype=np.uint16)
    msg = conv.numpy_to_image(a, "mono16", is_bigendian=True, step=5, padding_byte=0xFF)
    assert bytes(msg.data) == bytes([0x01, 0x02, 0xA0, 0xB0, 0xFF])
    np.testing.assert_array_equal(conv.image_to_numpy(msg), a)
    # a hand-made big-endian message with padding, as a camera driver would send it
    from sensor_msgs.msg import Image

    m = Image(height=2, width=2, encoding="16UC1", is_bigendian=1, step=7)
    m.data = bytes([0, 1, 1, 0, 9, 9, 9, 0xFF, 0xFF, 0x12, 0x34, 9, 9, 9])
    np.testing.assert_array_equal(conv.image_to_numpy(m), [[1, 256], [65535, 0x1234]])


def test_channel_order_is_kept():
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    a[..., 0] = 10
    a[..., 2] = 200
    for enc in ("bgr8", "rgb8"):
        out = conv.image_to_numpy(conv.numpy_to_image(a, enc))
        assert out[0, 0].tolist() == [10, 0, 200]


def _raw(encoding="mono8", h=2, w=3, step=None, data=None):
    from sensor_msgs.msg import Image

    dtype, ch = conv.ENCODINGS.get(encoding, (np.dtype(np.uint8), 1))
    step = w * ch * dtype.itemsize if step is None else step
    m = Image(height=h, width=w, encoding=encoding, step=step)
    m.data = bytes(step * h) if data is None else data
    return m


@pytest.mark.parametrize(
    "msg,match,reason",
    [
        (_raw("yuv422"), "unsupported image encoding 'yuv422'", "unsupported_encoding"),
        (_raw("bayer_rggb8"), "unsupported image encoding", "unsupported_encoding"),
        (_raw(h=0, data=b""), "zero-size", "zero_size"),
        (_raw(w=0, step=0, data=b""), "zero-size", "zero_size"),
        (_raw(step=2), "step 2 is smaller than width 3", "bad_step"),
        (_raw("mono16", step=5), "step 5 is smaller", "bad_step"),
        (_raw(data=bytes(5)), "data holds 5 bytes, expected", "bad_data_length"),
        (_raw(step=4, data=bytes(6)), "data holds 6 bytes", "bad_data_length"),
    ],
    ids=[
        "yuv",
        "bayer",
        "zero-height",
        "zero-width",
        "step",
        "step16",
        "short-data",
        "padded-short",
    ],
)
def test_malformed_images_raise(msg, match, reason):
    with pytest.raises(conv.ImageConversionError, match=match) as info:
        conv.image_to_numpy(msg)
    assert info.value.reason == reason


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_raise_unless_allowed(bad):
    a = np.ones((3, 4), dtype=np.float32)
    a[1, 2] = bad
    msg = conv.numpy_to_image(a, "32FC1")
    with pytest.raises(
        conv.ImageConversionError, match="1 of 12 pixels are NaN or infinite"
    ) as info:
        conv.image_to_numpy(msg)
    assert info.value.reason == "non_finite"
    out = conv.image_to_numpy(msg, check_finite=False)
    assert not np.isfinite(out[1, 2])
    assert issubclass(conv.ImageConversionError, ValueError)


def test_numpy_to_image_rejects_bad_arrays():
    with pytest.raises(conv.ImageConversionError, match="unsupported"):
        conv.numpy_to_image(np.zeros((2, 2)), "yuv422")
    with pytest.raises(conv.ImageConversionError, match=r"\(H, W, 3\)"):
        conv.numpy_to_image(np.zeros((2, 2), np.uint8), "bgr8")
    with pytest.raises(conv.ImageConversionError, match="outside"):
        conv.numpy_to_image(np.full((2, 2), 300.0), "mono8")
    with pytest.raises(conv.ImageConversionError, match="zero-size"):
        conv.numpy_to_image(np.zeros((0, 2), np.float32), "32FC1")
    with pytest.raises(conv.ImageConversionError, match="step 3"):
        conv.numpy_to_image(np.zeros((2, 2), np.uint16), "mono16", step=3)


# ----------------------------------------------------------------------------- intrinsics
def test_camera_info_round_trip():
    g = CarmGeometry(sdd=1020.0, height=48, width=64, delx=1.5, dely=2.0, x0=3.0, y0=-4.5)
    msg = conv.geometry_to_camera_info(g)
    assert (msg.height, msg.width) == (48, 64)
    np.testing.assert_allclose(np.reshape(msg.k, (3, 3)), g.intrinsic_matrix())
    np.testing.assert_allclose(np.reshape(msg.p, (3, 4))[:, :3], g.intrinsic_matrix())
    back = conv.camera_info_to_geometry(msg, sdd_mm=1020.0)
    for name in ("sdd", "height", "width", "delx", "dely", "x0", "y0"):
        assert getattr(back, name) == pytest.approx(getattr(g, name), abs=1e-9), name
    # another sdd keeps K (the projection) and scales the spacings
    other = conv.camera_info_to_geometry(msg, sdd_mm=510.0)
    np.testing.assert_allclose(other.intrinsic_matrix(), g.intrinsic_matrix())
    assert other.delx == pytest.approx(0.75)


def test_camera_info_falls_back_to_p_and_honours_binning():
    g = CarmGeometry(sdd=1000.0, height=64, width=64, delx=2.0, dely=2.0)
    msg = conv.geometry_to_camera_info(g)
    assert conv.camera_info_note(msg) is None  # K used as it is: nothing to report
    msg.k = [0.0] * 9  # all zero: uncalibrated (sensor_msgs), so P's left 3x3, and the note says so
    np.testing.assert_allclose(
        conv.camera_info_to_geometry(msg, 1000.0).intrinsic_matrix(), g.intrinsic_matrix()
    )
    assert "K is all zero (uncalibrated camera); intrinsics taken from P" in conv.camera_info_note(
        msg
    )
    msg = conv.geometry_to_camera_info(g)
    msg.binning_x = msg.binning_y = 2
    binned = conv.camera_info_to_geometry(msg, 1000.0)
    assert (binned.height, binned.width, binned.delx) == (32, 32, pytest.approx(4.0))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda m: setattr(m, "k", [0.0] * 9) or setattr(m, "p", [0.0] * 12), "neither K nor P"),
        # K that is not all zero must have two positive focal lengths: no silent fall-back to P
        (
            lambda m: setattr(m, "k", [-500.0, 0.0, 32.0, 0.0, 500.0, 32.0, 0.0, 0.0, 1.0]),
            r"negative focal length \(fx -500, fy 500\)",
        ),
        (
            lambda m: setattr(m, "k", [500.0, 0.0, 32.0, 0.0, -1.0, 32.0, 0.0, 0.0, 1.0]),
            "negative focal length",
        ),
        (
            lambda m: setattr(m, "k", [500.0, 0.0, 32.0, 0.0, 0.0, 32.0, 0.0, 0.0, 1.0]),
            r"one positive and one zero focal length \(fx 500, fy 0\)",
        ),
        (
            lambda m: setattr(m, "k", [0.0, 0.0, 32.0, 0.0, 0.0, 32.0, 0.0, 0.0, 1.0]),
            "zero focal lengths but is not all zero",
        ),
        (lambda m: setattr(m, "k", [float("nan")] + [0.0] * 8), "non-finite"),
        (lambda m: setattr(m, "width", 0), "zero size"),
        (lambda m: setattr(m, "k", [500.0, 3.0, 32.0, 0.0, 500.0, 32.0, 0.0, 0.0, 1.0]), "skew"),
        (
            lambda m: setattr(m.roi, "width", 10) or setattr(m.roi, "height", 10),
            "region of interest",
        ),
    ],
)
def test_bad_camera_info_raises(mutate, match):
    msg = conv.geometry_to_camera_info(CarmGeometry(height=64, width=64))
    mutate(msg)
    with pytest.raises(conv.CameraInfoConversionError, match=match):
        conv.camera_info_to_geometry(msg, 1020.0)


# ----------------------------------------------------------------------------- poses
def _pose(seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(6, generator=g, dtype=torch.float64) * torch.tensor([200, 200, 200, 1, 1, 1.0])
    return se3_exp(xi).numpy()


def test_transform_stamped_round_trip_and_direction():
    from builtin_interfaces.msg import Time

    T_parent_from_child = _pose(1)
    stamp = Time(sec=12, nanosec=345)
    msg = conv.pose_to_transform_stamped(T_parent_from_child, "carm", "ct", stamp)
    assert (msg.header.frame_id, msg.child_frame_id) == ("carm", "ct")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    tr = msg.transform.translation
    np.testing.assert_allclose([tr.x, tr.y, tr.z], T_parent_from_child[:3, 3] / 1000.0)  # metres
    q = msg.transform.rotation
    assert q.x**2 + q.y**2 + q.z**2 + q.w**2 == pytest.approx(1.0)
    back = conv.transform_stamped_to_pose(msg)
    np.testing.assert_allclose(back, T_parent_from_child, atol=1e-9)
    # TF semantics: the child's origin, expressed in the parent frame, is the translation
    np.testing.assert_allclose(back @ [0, 0, 0, 1], np.r_[T_parent_from_child[:3, 3], 1])
    inv = conv.invert_pose(T_parent_from_child)
    np.testing.assert_allclose(inv @ T_parent_from_child, np.eye(4), atol=1e-9)


@pytest.mark.parametrize("parent,child", [("", "ct"), ("carm", ""), ("  ", "ct")])
def test_empty_frame_ids_are_refused(parent, child):
    with pytest.raises(conv.PoseConversionError, match="non-empty frame id"):
        conv.pose_to_transform_stamped(np.eye(4), parent, child)
    with pytest.raises(conv.PoseConversionError):
        conv.pose_to_pose_with_covariance(np.eye(4), None, "")


def test_non_rigid_poses_are_refused():
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(conv.PoseConversionError, match="rigid"):
        conv.pose_to_transform_stamped(bad, "a", "b")
    with pytest.raises(conv.PoseConversionError, match="finite"):
        conv.pose_to_transform_stamped(np.full((4, 4), np.nan), "a", "b")


@pytest.mark.parametrize("inverse", [False, True], ids=["carm_from_ct", "ct_from_carm"])
def test_covariance_mapping_matches_the_perturbed_published_pose(inverse):
    """The linear map behind covariance_to_ros, checked against finite perturbations (float64)."""
    T = _pose(3)
    T[:3, 3] = [10.0, -650.0, 40.0]  # a C-arm source 650 mm in front of the CT origin

    def published(M):
        return M if inverse else np.linalg.inv(M)

    P0 = published(T)
    eps = 1e-5
    rows = []
    for k in range(6):
        errors = []
        for sign in (1.0, -1.0):  # central differences
            d = np.zeros(6)
            d[k] = sign * eps
            P1 = published(se3_exp(torch.as_tensor(d)).numpy() @ T)
            e_p = (P1[:3, 3] - P0[:3, 3]) / 1000.0
            e_r = so3_log(torch.as_tensor(P1[:3, :3] @ P0[:3, :3].T)).numpy()
            errors.append(np.r_[e_p, e_r])
        rows.append((errors[0] - errors[1]) / (2 * eps))
    M = np.array(rows).T  # d(ros error) / d(delta)
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    C = A @ A.T
    expected = M @ C @ M.T
    got = conv.covariance_to_ros(T, C, inverse=inverse)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(
        conv.covariance_from_ros(T, got, inverse=inverse), C, rtol=1e-8, atol=1e-8
    )


def test_pose_with_covariance_round_trip_and_unknown_covariance():
    T = _pose(5)
    cov = np.diag([1e-6, 2e-6, 3e-6, 1e-4, 2e-4, 3e-4])
    msg = conv.pose_to_pose_with_covariance(T, cov, "carm_optical")
    assert msg.header.frame_id == "carm_optical"
    back, c = conv.pose_with_covariance_to_pose(msg)
    np.testing.assert_allclose(back, T, atol=1e-9)
    np.testing.assert_allclose(c, cov)
    unknown = conv.pose_to_pose_with_covariance(T, np.full((6, 6), np.nan), "carm")
    np.testing.assert_array_equal(np.reshape(unknown.pose.covariance, (6, 6)), -np.eye(6))
