"""``sensor_msgs/CameraInfo`` ⇄ :class:`~sphere_reg_ros.core.carm.CarmGeometry` (part of
:mod:`.conversions`, which re-exports it).

Intrinsics: ``CameraInfo`` ``K`` plus ``width``/``height`` ⇄
:class:`~sphere_reg_ros.core.carm.CarmGeometry`. ``K`` fixes only ``sdd / pixel spacing``; the
source-to-detector distance comes from a parameter (``sdd_mm``). An all-zero ``K`` means an
uncalibrated camera (sensor_msgs/CameraInfo); then ``P``'s left 3×3 is used and
:func:`camera_info_note` says so. Any other ``K`` without two positive focal lengths (a negative
one, one positive and one zero, zero focal lengths in an otherwise filled ``K``, non-finite
entries) is an error. Binning is honoured (the image is the binned one); a region of interest
that is not the full image is rejected.
"""

from __future__ import annotations

import math

import numpy as np
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from ..core.carm import CarmGeometry, CarmGeometryError
from .conversion_errors import CameraInfoConversionError

__all__ = ["camera_info_to_geometry", "camera_info_note", "geometry_to_camera_info"]


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
