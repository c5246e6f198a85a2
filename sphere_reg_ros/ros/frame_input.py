"""From an incoming ``Image`` (+ ``CameraInfo``) to what the registrar takes, or a reason to refuse.

:func:`prepare_frame` runs the node's input checks in order and returns the line-integral image
``(H, W)`` float32 and its :class:`~sphere_reg_ros.core.carm.CarmGeometry`, or raises
:class:`FrameRejected` whose ``reason`` is a key of :data:`REASONS` (the diagnostic ``status``):

=======================  =====  ==============================================================
reason                   level  when
=======================  =====  ==============================================================
``stale``                WARN   stamp older than ``max_image_age_s`` on arrival (node clock;
                                an unstamped image, stamp 0, is stale too)
``unsupported_encoding`` ERROR  encoding not mono8, mono16, 16UC1, 32FC1
``zero_size``            ERROR  height or width 0
``bad_step``             ERROR  ``step`` smaller than ``width`` × bytes per pixel
``bad_data_length``      ERROR  ``len(data) != step × height``
``non_finite``           WARN   NaN or inf pixels (32FC1)
``bad_camera_info``      ERROR  CameraInfo without usable K/P, with skew or a partial ROI
``no_intrinsics``        ERROR  no CameraInfo yet and no fx/fy/width/height parameters
``size_mismatch``        ERROR  image size differs from the CameraInfo (or parameters) size
``bad_intensity``        WARN   ``image_domain: intensity`` with no positive pixel
=======================  =====  ==============================================================

Intensity domain: ``line_integral`` takes pixel values as they are (−log attenuation line
integrals, bone bright; our simulator and benchmark publish 32FC1 so); ``intensity`` takes raw
detector counts ``I`` (bone dark) and converts them with ``−log(I / I_max)``, ``I_max`` the
``intensity_max`` parameter or, when 0, the image's maximum; counts are clipped to
``≥ 1e-6 · I_max`` first.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from ..core.carm import CarmGeometry, CarmGeometryError
from . import conversions as conv
from .diagnostics import ERROR, OK, WARN

__all__ = ["ACCEPTED_ENCODINGS", "REASONS", "FrameRejected", "line_integrals", "frame_geometry",
           "prepare_frame"]

#: Encodings the node registers (conversions can decode more, e.g. bgr8 for the overlay).
ACCEPTED_ENCODINGS = ("mono8", "mono16", "16UC1", "32FC1")

#: Diagnostic ``status`` value → level, for everything the node reports about a frame or a CT.
REASONS = {
    "ok": OK, "waiting": OK, "ct_loaded": OK,
    "stale": WARN, "non_finite": WARN, "bad_intensity": WARN,
    "unsupported_encoding": ERROR, "bad_step": ERROR, "bad_data_length": ERROR,
    "zero_size": ERROR, "size_mismatch": ERROR, "no_intrinsics": ERROR, "bad_camera_info": ERROR,
    "frame_conflict": ERROR, "registration_failed": ERROR, "rejected_cost": ERROR,
    "rejected_covariance": ERROR, "ct_load_failed": ERROR, "internal_error": ERROR,
}


class FrameRejected(ValueError):
    """A frame the node will not register; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def line_integrals(image: np.ndarray, domain: str, intensity_max: float = 0.0) -> np.ndarray:
    """``(H, W)`` float32 line integrals of a decoded image (see the module docstring)."""
    img = np.asarray(image, dtype=np.float64)
    if domain == "line_integral":
        return img.astype(np.float32)
    if domain != "intensity":
        raise ValueError(f"image_domain must be 'line_integral' or 'intensity', got {domain!r}")
    i_max = float(intensity_max) if intensity_max > 0 else float(img.max())
    if not i_max > 0:
        raise FrameRejected("bad_intensity", "intensity image has no positive pixel (I_max <= 0)")
    return (-np.log(np.clip(img, 1e-6 * i_max, None) / i_max)).astype(np.float32)


def frame_geometry(info: CameraInfo | None, s, height: int, width: int) -> CarmGeometry:
    """Geometry of a ``height × width`` image: CameraInfo when used and present, else parameters.

    ``s``: the node's settings (``use_camera_info``, ``sdd_mm``, ``fx``, ``fy``, ``cx``, ``cy``,
    ``width``, ``height``).
    """
    if s.use_camera_info and info is not None:
        try:
            g = conv.camera_info_to_geometry(info, s.sdd_mm)
        except conv.CameraInfoConversionError as exc:
            raise FrameRejected("bad_camera_info", str(exc)) from exc
        source = "CameraInfo"
    else:
        if not (s.fx > 0 and s.fy > 0 and s.width > 0 and s.height > 0):
            raise FrameRejected("no_intrinsics", "no camera_info received and the fallback intrinsics "
                                "(fx, fy, width, height parameters) are not set")
        cx = s.cx if s.cx >= 0 else (s.width - 1) / 2.0
        cy = s.cy if s.cy >= 0 else (s.height - 1) / 2.0
        K = np.array([[s.fx, 0.0, cx], [0.0, s.fy, cy], [0.0, 0.0, 1.0]])
        try:
            g = CarmGeometry.from_intrinsics(K, int(s.height), int(s.width), sdd=float(s.sdd_mm))
        except CarmGeometryError as exc:
            raise FrameRejected("no_intrinsics", f"fallback intrinsics unusable: {exc}") from exc
        source = "the intrinsics parameters"
    if (g.height, g.width) != (height, width):
        raise FrameRejected("size_mismatch", f"image {width}x{height} (WxH) disagrees with {source} "
                            f"{g.width}x{g.height}")
    return g


def prepare_frame(msg: Image, info: CameraInfo | None, s, age_s: float) -> tuple[np.ndarray, CarmGeometry]:
    """Checks + conversion of one frame (``age_s``: its age on arrival). Raises FrameRejected."""
    if s.max_image_age_s > 0 and age_s > s.max_image_age_s:
        raise FrameRejected("stale", f"stale image: stamp {age_s:.2f} s old on arrival "
                            f"(max_image_age_s {s.max_image_age_s:g})")
    if msg.encoding not in ACCEPTED_ENCODINGS:
        raise FrameRejected("unsupported_encoding", f"unsupported image encoding {msg.encoding!r} "
                            f"(accepted: {', '.join(ACCEPTED_ENCODINGS)})")
    try:
        pixels = conv.image_to_numpy(msg)
    except conv.ImageConversionError as exc:
        raise FrameRejected(exc.reason if exc.reason in REASONS else "bad_data_length", str(exc)) from exc
    geometry = frame_geometry(info, s, *pixels.shape)
    return line_integrals(pixels, s.image_domain, s.intensity_max), geometry
