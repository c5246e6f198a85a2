"""ROS message ⇄ array conversions: images, camera intrinsics, poses and their covariance.

Needs only the message packages (no node, no rclpy context); used by the registration node,
the simulator and the tests.

Images (``sensor_msgs/Image``, mono, 16-bit, float and colour encodings) ⇄ arrays, with every
malformed message refused with the reason: :mod:`.image_conversions`.

Intrinsics: ``CameraInfo`` ⇄ :class:`~sphere_reg_ros.core.carm.CarmGeometry` (``K``, or ``P``
for an uncalibrated camera; the source-to-detector distance is a parameter):
:mod:`.camera_info_conversions`.

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

The errors are :mod:`.conversion_errors`. Every public name of these modules is re-exported
here; callers import them from this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped

from ..core.geometry import (
    hat,
    pose_to_translation_quaternion,
    se3_adjoint,
    se3_inverse,
    translation_quaternion_to_pose,
)
from .camera_info_conversions import (
    camera_info_note,
    camera_info_to_geometry,
    geometry_to_camera_info,
)
from .conversion_errors import (
    CameraInfoConversionError,
    ConversionError,
    ImageConversionError,
    PoseConversionError,
)
from .image_conversions import ENCODINGS, image_to_numpy, numpy_to_image

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

_MM_PER_M = 1000.0


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
