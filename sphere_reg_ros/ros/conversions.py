"""ROS message ⇄ array conversions: images, camera intrinsics, poses and their covariance.

Needs only the message packages (no node, no rclpy context); used by the registration node,
the simulator and the tests.

Images (``sensor_msgs/Image``): ``mono8``/``8UC1``, ``mono16``/``16UC1``, ``32FC1``, ``64FC1``,
``bgr8``, ``rgb8``. Decoding honours ``step`` (row padding; the padding bytes are ignored) and
``is_bigendian``; the array comes back in native byte order, ``(H, W)`` or ``(H, W, 3)``, as its
own copy. cv_bridge is used where it imports and works; its Python side breaks on numpy 2, so
every call to it is guarded and the own conversion (the same result) takes over. Every malformed
message raises :class:`ImageConversionError` (a ``ValueError``) saying what is wrong: unknown
encoding, zero size, ``step < width · bytes per pixel``, data length ``≠ step · height``, NaN or
inf pixels.

Intrinsics: ``CameraInfo`` ``K`` plus ``width``/``height`` ⇄
:class:`~sphere_reg_ros.core.carm.CarmGeometry`. ``K`` fixes only ``sdd / pixel spacing``; the
source-to-detector distance comes from a parameter (``sdd_mm``). An all-zero ``K`` means an
uncalibrated camera (sensor_msgs/CameraInfo); then ``P``'s left 3×3 is used and
:func:`camera_info_note` says so. Any other ``K`` without two positive focal lengths (a negative
one, one positive and one zero, zero focal lengths in an otherwise filled ``K``, non-finite
entries) is an error. Binning is honoured (the image is the binned one); a region of interest
that is not the full image is rejected.

Poses: a ``(4, 4)`` pose in millimetres ``T_parent_from_child`` ⇄ ``TransformStamped`` /
``PoseWithCovarianceStamped`` in metres and quaternions (REP-103). A ``TransformStamped`` with
``header.frame_id = parent`` and ``child_frame_id = child`` holds the child frame's pose in the
parent frame, i.e. it maps child coordinates to parent coordinates: ``p_parent = T · p_child``.
The SE(3) algebra (inverse, adjoint, quaternions) is :mod:`sphere_reg_ros.core.geometry`'s; this
module only validates messages and arrays and converts units and types.

Covariance: the registrar reports the covariance of a left-multiplied increment
``T_ct_from_carm ← exp(δ) T_ct_from_carm`` with ``δ = (v [mm], w [rad])`` in the CT frame.
ROS (``PoseWithCovariance``) wants the covariance of ``(x, y, z, rx, ry, rz)`` of the published
pose: position error (m) and rotation error (rad, about the fixed axes of ``header.frame_id``,
``R ← exp(e_r) R``). :func:`covariance_to_ros` maps one to the other for either direction of the
published pose (first-order, exact for the linearised errors); the order of the six entries is
already ROS's, only units and frames change.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.carm import CarmGeometry, CarmGeometryError
from ..core.geometry import (
    hat,
    pose_to_translation_quaternion,
    se3_adjoint,
    se3_inverse,
    translation_quaternion_to_pose,
)

__all__ = [
    "ENCODINGS",
    "ConversionError",
    "ImageConversionError",
    "CameraInfoConversionError",
    "PoseConversionError",
    "image_to_numpy",
    "numpy_to_image",
    "camera_info_to_geometry",
    "camera_info_note",
    "geometry_to_camera_info",
    "pose_to_transform_stamped",
    "transform_stamped_to_pose",
    "pose_to_pose_with_covariance",
    "pose_with_covariance_to_pose",
    "covariance_to_ros",
    "covariance_from_ros",
    "invert_pose",
    "pose_from_translation_quaternion",
]

log = logging.getLogger(__name__)

#: encoding -> (numpy dtype, channels). ``mono16``/``16UC1`` are the same layout, as are
#: ``mono8``/``8UC1``.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "64FC1": (np.dtype(np.float64), 1),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgb8": (np.dtype(np.uint8), 3),
}

_MM_PER_M = 1000.0


class ConversionError(ValueError):
    """A message that cannot be converted; the message says what is wrong."""


class ImageConversionError(ConversionError):
    """Unsupported or malformed ``sensor_msgs/Image`` (or an array that cannot become one).

    ``reason`` is a stable key: ``unsupported_encoding``, ``zero_size``, ``bad_step``,
    ``bad_data_length``, ``non_finite`` or ``bad_array``.
    """

    def __init__(self, message: str, reason: str = "bad_array") -> None:
        super().__init__(message)
        self.reason = reason


class CameraInfoConversionError(ConversionError):
    """``CameraInfo`` without usable intrinsics (zero K and P, bad size, skew, ROI, ...)."""


class PoseConversionError(ConversionError):
    """A pose that is not a finite rigid ``(4, 4)`` matrix, a bad covariance or an empty frame."""


# ----------------------------------------------------------------------------- cv_bridge
_BRIDGE: Any = None
_BRIDGE_BROKEN = False


def _cv_bridge():
    """A ``CvBridge`` when ROS's cv_bridge imports (a ROS 2 install), else None."""
    global _BRIDGE, _BRIDGE_BROKEN
    if _BRIDGE is None and not _BRIDGE_BROKEN:
        try:
            from cv_bridge import CvBridge  # ROS 2 install only; absent from PyPI

            _BRIDGE = CvBridge()
        except Exception as exc:  # ImportError, or its numpy-1 extension failing on numpy 2
            log.debug(
                "cv_bridge unavailable (%s: %s); using the own image conversion",
                type(exc).__name__,
                exc,
            )
            _BRIDGE_BROKEN = True
    return None if _BRIDGE_BROKEN else _BRIDGE


def _decode_with_bridge(msg: Image, expected: np.ndarray) -> np.ndarray | None:
    """cv_bridge's decoding, used only when it matches the own one in shape and dtype."""
    global _BRIDGE_BROKEN
    bridge = _cv_bridge()
    if bridge is None:
        return None
    try:
        out = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception as exc:  # numpy 2 breaks its Python side; never let that lose a frame
        log.warning(
            "cv_bridge failed (%s: %s); using the own image conversion from now on",
            type(exc).__name__,
            exc,
        )
        _BRIDGE_BROKEN = True
        return None
    if out.shape != expected.shape or out.dtype.kind != expected.dtype.kind:
        return None
    return np.array(out, dtype=expected.dtype.newbyteorder("="), copy=True)


# ----------------------------------------------------------------------------- images
def _layout(encoding: str) -> tuple[np.dtype, int]:
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(ENCODINGS)})",
            "unsupported_encoding",
        )
    return ENCODINGS[encoding]


def image_to_numpy(
    msg: Image, *, check_finite: bool = True, use_cv_bridge: bool = True, copy: bool = True
) -> np.ndarray:
    """Pixels of ``msg`` as a native-byte-order array ``(H, W)`` (one channel) or ``(H, W, 3)``.

    Channel order is the message's (``bgr8`` stays BGR, ``rgb8`` stays RGB). ``copy=False``: a
    read-only view of ``msg.data`` where the layout allows (native byte order, rows unpadded;
    cv_bridge is not used), else a copy; for callers that only read the pixels while ``msg`` lives
    (the node, which saves a full-size copy of large frames so).

    Raises:
        ImageConversionError: unsupported encoding, zero height or width, ``step`` smaller
            than a row, ``len(data) != step · height``, NaN/inf pixels (float encodings, when
            ``check_finite``).
    """
    dtype, channels = _layout(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(
            f"zero-size image ({h}x{w}, encoding {msg.encoding})", "zero_size"
        )
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width {w} x {channels * dtype.itemsize} bytes/pixel "
            f"= {row_bytes} ({msg.encoding})",
            "bad_step",
        )
    try:  # bytes / array.array('B') / memoryview: no copy
        raw = np.frombuffer(msg.data, dtype=np.uint8)
    except (TypeError, ValueError):
        raw = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if raw.size != step * h:
        raise ImageConversionError(
            f"data holds {raw.size} bytes, expected step {step} x height {h} = {step * h}",
            "bad_data_length",
        )
    rows = raw.reshape(h, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = (
        np.ascontiguousarray(rows).view(wire).reshape((h, w, channels) if channels > 1 else (h, w))
    )
    if not copy and pixels.dtype.isnative:
        out = pixels.view()
        out.flags.writeable = False
    else:
        out = pixels.astype(dtype.newbyteorder("="), copy=True)
    if use_cv_bridge and copy:
        bridged = _decode_with_bridge(msg, out)
        if bridged is not None:
            out = bridged
    if check_finite and out.dtype.kind == "f":
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        if bad:
            raise ImageConversionError(
                f"{bad} of {out.size} pixels are NaN or infinite", "non_finite"
            )
    return out


def numpy_to_image(
    array: np.ndarray,
    encoding: str,
    header: Header | None = None,
    *,
    step: int | None = None,
    is_bigendian: bool = False,
    padding_byte: int = 0,
) -> Image:
    """``sensor_msgs/Image`` of ``array`` (``(H, W)`` or ``(H, W, 3)``) in ``encoding``.

    ``step`` larger than a row adds ``step - row`` padding bytes (value ``padding_byte``) at the
    end of each row; ``is_bigendian`` writes multi-byte pixels big-endian. Values are cast to the
    encoding's dtype (integers must already lie in its range).

    Raises:
        ImageConversionError: unknown encoding, wrong shape, empty array, values out of range
            for an integer encoding, ``step`` smaller than a row.
    """
    dtype, channels = _layout(encoding)
    a = np.asarray(array)
    want = 3 if channels > 1 else 2
    if a.ndim != want or (channels > 1 and a.shape[2] != channels):
        raise ImageConversionError(
            f"{encoding} needs an array of shape {'(H, W, 3)' if channels > 1 else '(H, W)'}, "
            f"got {a.shape}"
        )
    if a.size == 0:
        raise ImageConversionError(f"zero-size array {a.shape}")
    if dtype.kind == "u" and a.dtype.kind != "u":
        info = np.iinfo(dtype)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ImageConversionError(f"non-finite values cannot be encoded as {encoding}")
        if a.min() < info.min or a.max() > info.max:
            raise ImageConversionError(f"values outside [{info.min}, {info.max}] for {encoding}")
    h, w = a.shape[:2]
    row_bytes = w * channels * dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than a row ({row_bytes} bytes)")
    rows = np.ascontiguousarray(a.astype(dtype.newbyteorder(">" if is_bigendian else "<")))
    rows = rows.view(np.uint8).reshape(h, row_bytes)
    if step > row_bytes:
        pad = np.full((h, step - row_bytes), padding_byte, dtype=np.uint8)
        rows = np.concatenate([rows, pad], axis=1)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(h), int(w)
    msg.encoding = encoding
    msg.is_bigendian = 1 if is_bigendian else 0
    msg.step = step
    msg.data = rows.tobytes()
    return msg


# ----------------------------------------------------------------------------- intrinsics
def _intrinsic_matrix(msg: CameraInfo) -> tuple[np.ndarray, str | None]:
    """The 3×3 intrinsic matrix of ``msg`` and a note when it is not ``K`` (see the module docstring).

    Raises:
        CameraInfoConversionError: non-finite K, a K with a negative focal length or one positive
            and one non-positive (or zero focal lengths in a K that is not all zero), or an
            all-zero K whose P has no positive focal lengths either.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise CameraInfoConversionError(
            f"CameraInfo K has non-finite entries: {K.reshape(-1).tolist()}"
        )
    fx, fy = float(K[0, 0]), float(K[1, 1])
    if fx > 0 and fy > 0:
        return K, None
    if fx < 0 or fy < 0:
        raise CameraInfoConversionError(
            f"CameraInfo K has a negative focal length (fx {fx:g}, fy {fy:g})"
        )
    if fx > 0 or fy > 0:
        raise CameraInfoConversionError(
            f"CameraInfo K has one positive and one zero focal length "
            f"(fx {fx:g}, fy {fy:g}); both must be > 0"
        )
    if np.any(K != 0):
        raise CameraInfoConversionError(
            "CameraInfo K has zero focal lengths but is not all zero "
            f"(an all-zero K means uncalibrated): {K.reshape(-1).tolist()}"
        )
    P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    if not (np.all(np.isfinite(P)) and P[0, 0] > 0 and P[1, 1] > 0):
        raise CameraInfoConversionError(
            "CameraInfo has neither K nor P with positive focal lengths "
            "(K all zero: uncalibrated camera)"
        )
    return P[
        :, :3
    ].copy(), "CameraInfo K is all zero (uncalibrated camera); intrinsics taken from P"


def camera_info_note(msg: CameraInfo) -> str | None:
    """What :func:`camera_info_to_geometry` did that a user should know of, else None.

    Today one case: an all-zero ``K`` (uncalibrated) whose intrinsics were taken from ``P``.

    Raises:
        CameraInfoConversionError: as :func:`camera_info_to_geometry` for K and P.
    """
    return _intrinsic_matrix(msg)[1]


def camera_info_to_geometry(msg: CameraInfo, sdd_mm: float) -> CarmGeometry:
    """C-arm geometry of the images that go with ``msg`` (``sdd_mm``: source-to-detector, mm).

    Uses ``K`` when both its focal lengths are positive; an all-zero ``K`` (uncalibrated, per
    sensor_msgs) falls back to the left 3×3 of ``P`` (:func:`camera_info_note` reports that).
    With binning ``b_x, b_y > 1`` the geometry is that of the binned image,
    ``width // b_x × height // b_y`` pixels over the same detector.

    Raises:
        CameraInfoConversionError: zero size; a K with a negative focal length, one positive and
            one non-positive, or non-finite entries; an all-zero K without a usable P; skew;
            a partial region of interest.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise CameraInfoConversionError(f"CameraInfo has zero size ({h}x{w})")
    K, _ = _intrinsic_matrix(msg)
    roi = msg.roi
    if (roi.width or roi.height) and (
        roi.x_offset or roi.y_offset or roi.width != w or roi.height != h
    ):
        raise CameraInfoConversionError(
            f"CameraInfo region of interest {roi.width}x{roi.height}+{roi.x_offset}+{roi.y_offset} "
            "is not supported (publish full images)"
        )
    if not (math.isfinite(sdd_mm) and sdd_mm > 0):
        raise CameraInfoConversionError(f"sdd_mm must be positive, got {sdd_mm}")
    try:
        geometry = CarmGeometry.from_intrinsics(K, h, w, sdd=float(sdd_mm))
    except CarmGeometryError as exc:
        raise CameraInfoConversionError(f"CameraInfo intrinsics unusable: {exc}") from exc
    bx, by = max(1, int(msg.binning_x)), max(1, int(msg.binning_y))
    if bx > 1 or by > 1:
        geometry = geometry.resized(max(1, h // by), max(1, w // bx))
    return geometry


def geometry_to_camera_info(geometry: CarmGeometry, header: Header | None = None) -> CameraInfo:
    """``CameraInfo`` of ``geometry``: ``K``, ``P = [K | 0]``, ``R = I``, no distortion."""
    K = geometry.intrinsic_matrix()
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(geometry.height), int(geometry.width)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in K.reshape(-1)]
    msg.r = [float(v) for v in np.eye(3).reshape(-1)]
    msg.p = [float(v) for v in np.hstack([K, np.zeros((3, 1))]).reshape(-1)]
    return msg


# ----------------------------------------------------------------------------- poses
def _rigid(T: Any, name: str = "pose") -> np.ndarray:
    if isinstance(T, torch.Tensor):
        T = T.detach().cpu().numpy()
    M = np.asarray(T, dtype=np.float64)
    if M.shape == (1, 4, 4):
        M = M[0]
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise PoseConversionError(f"{name} must be a finite (4, 4) matrix, got shape {M.shape}")
    R = M[:3, :3]
    if (
        not np.allclose(R.T @ R, np.eye(3), atol=1e-5)
        or np.linalg.det(R) < 0
        or not np.allclose(M[3], [0, 0, 0, 1], atol=1e-9)
    ):
        raise PoseConversionError(f"{name} is not a rigid transform")
    return M


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse ``(4, 4)`` float64 of a rigid pose ``T`` ``(4, 4)`` (mm): ``core.geometry.se3_inverse``.

    Raises:
        PoseConversionError: not a finite rigid ``(4, 4)`` pose.
    """
    return se3_inverse(torch.from_numpy(_rigid(T))).numpy()


def _check_frame(frame: str, what: str) -> str:
    if not isinstance(frame, str) or not frame.strip():
        raise PoseConversionError(f"{what} must be a non-empty frame id, got {frame!r}")
    return frame


def _set_translation_rotation(T: np.ndarray, translation, rotation) -> None:
    t, q = pose_to_translation_quaternion(torch.as_tensor(T, dtype=torch.float64), unit="m")
    translation.x, translation.y, translation.z = (float(v) for v in t.tolist())
    rotation.x, rotation.y, rotation.z, rotation.w = (float(v) for v in q.tolist())


def _pose_from(translation, rotation) -> np.ndarray:
    return pose_from_translation_quaternion(
        [translation.x, translation.y, translation.z],
        [rotation.x, rotation.y, rotation.z, rotation.w],
    )


def pose_from_translation_quaternion(translation_m, quaternion_xyzw) -> np.ndarray:
    """``(4, 4)`` pose in mm from a translation (3, metres) and a quaternion (4, x y z w)."""
    t = torch.as_tensor(np.asarray(translation_m, dtype=np.float64).reshape(3))
    q = torch.as_tensor(np.asarray(quaternion_xyzw, dtype=np.float64).reshape(4))
    if not bool(torch.isfinite(t).all() & torch.isfinite(q).all()) or float(q.norm()) < 1e-12:
        raise PoseConversionError("pose has non-finite values or a zero quaternion")
    return translation_quaternion_to_pose(t, q, unit="m").numpy()


def pose_to_transform_stamped(
    T_parent_from_child: np.ndarray, parent: str, child: str, stamp: Time | None = None
) -> TransformStamped:
    """``TransformStamped`` (metres) of ``T_parent_from_child`` ``(4, 4)`` in mm.

    ``header.frame_id = parent``, ``child_frame_id = child``: the child's pose in the parent,
    mapping child coordinates to parent coordinates (the TF convention).

    Raises:
        PoseConversionError: not a rigid ``(4, 4)`` pose, or an empty frame id.
    """
    M = _rigid(T_parent_from_child)
    msg = TransformStamped()
    msg.header.frame_id = _check_frame(parent, "parent frame")
    msg.child_frame_id = _check_frame(child, "child frame")
    if stamp is not None:
        msg.header.stamp = stamp
    _set_translation_rotation(M, msg.transform.translation, msg.transform.rotation)
    return msg


def transform_stamped_to_pose(msg: TransformStamped) -> np.ndarray:
    """``T_parent_from_child`` ``(4, 4)`` in mm of a ``TransformStamped`` (metres)."""
    return _pose_from(msg.transform.translation, msg.transform.rotation)


def _check_cov(cov: np.ndarray, name: str) -> np.ndarray:
    C = np.asarray(cov, dtype=np.float64)
    if C.size == 36:
        C = C.reshape(6, 6)
    if C.shape != (6, 6):
        raise PoseConversionError(f"{name} must be (6, 6), got {C.shape}")
    return C


def _increment_to_ros(T: np.ndarray, inverse: bool) -> np.ndarray:
    """``(6, 6)`` linear map from the registrar's increment ``(v [mm], w [rad])`` of ``T_ct_from_carm``
    to the ROS pose error ``(x, y, z [m], rx, ry, rz [rad])`` of the published pose."""
    T_t = torch.from_numpy(T)
    if inverse:
        P, A = T_t, torch.eye(6, dtype=torch.float64)
    else:
        # T^-1 exp(-δ) = exp(-Ad_{T^-1} δ) T^-1: a left increment of the inverse pose
        P = se3_inverse(T_t)
        A = se3_adjoint(P)
    J = torch.eye(6, dtype=torch.float64)
    J[:3, 3:] = -hat(P[:3, 3])  # position error = v' + w' × t
    S = torch.diag(torch.tensor([1.0 / _MM_PER_M] * 3 + [1.0] * 3, dtype=torch.float64))
    return (S @ J @ A).numpy()


def covariance_to_ros(
    T_ct_from_carm: np.ndarray, cov_increment: np.ndarray, inverse: bool
) -> np.ndarray:
    """ROS pose covariance ``(6, 6)`` (m², m·rad, rad²) of the published pose.

    Args:
        T_ct_from_carm: the registered pose ``(4, 4)``, mm.
        cov_increment: covariance ``(6, 6)`` of ``δ = (v [mm], w [rad])`` in
            ``T_ct_from_carm ← exp(δ) T_ct_from_carm`` (the registrar's). NaN entries stay NaN.
        inverse: False when the published pose is ``T_carm_from_ct`` (frame_id = C-arm frame),
            True when it is ``T_ct_from_carm`` (frame_id = CT frame).

    Returns:
        Covariance of ``(x, y, z, rx, ry, rz)``: position error of the published pose's origin in
        the header frame (m) and rotation error about the header frame's axes (rad).
    """
    C = _check_cov(cov_increment, "covariance")
    M = _increment_to_ros(_rigid(T_ct_from_carm), inverse)
    out = M @ C @ M.T
    return 0.5 * (out + out.T)


def covariance_from_ros(
    T_ct_from_carm: np.ndarray, cov_ros: np.ndarray, inverse: bool
) -> np.ndarray:
    """Inverse of :func:`covariance_to_ros`: the increment covariance ``(6, 6)`` (mm, rad)."""
    C = _check_cov(cov_ros, "ROS covariance")
    Minv = np.linalg.inv(_increment_to_ros(_rigid(T_ct_from_carm), inverse))
    out = Minv @ C @ Minv.T
    return 0.5 * (out + out.T)


def pose_to_pose_with_covariance(
    T_parent_from_child: np.ndarray,
    cov_ros: np.ndarray | None,
    frame_id: str,
    stamp: Time | None = None,
) -> PoseWithCovarianceStamped:
    """``PoseWithCovarianceStamped`` of the child's pose in ``frame_id`` (mm in, metres out).

    ``cov_ros``: ``(6, 6)`` in ROS units and order (see :func:`covariance_to_ros`); None or
    non-finite entries publish ``-1`` on the diagonal ("unknown" in REP-145 terms) and zeros
    elsewhere.
    """
    M = _rigid(T_parent_from_child)
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = _check_frame(frame_id, "frame_id")
    if stamp is not None:
        msg.header.stamp = stamp
    _set_translation_rotation(M, msg.pose.pose.position, msg.pose.pose.orientation)
    if cov_ros is None or not np.all(np.isfinite(_check_cov(cov_ros, "covariance"))):
        C = -np.eye(6)
    else:
        C = _check_cov(cov_ros, "covariance")
    msg.pose.covariance = [float(v) for v in C.reshape(-1)]
    return msg


def pose_with_covariance_to_pose(msg: PoseWithCovarianceStamped) -> tuple[np.ndarray, np.ndarray]:
    """``(T (4, 4) mm, covariance (6, 6) in ROS units)`` of a ``PoseWithCovarianceStamped``."""
    T = _pose_from(msg.pose.pose.position, msg.pose.pose.orientation)
    return T, np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
