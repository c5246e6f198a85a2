"""``sensor_msgs/Image`` ⇄ arrays (part of :mod:`.conversions`, which re-exports it).

Images (``sensor_msgs/Image``): ``mono8``/``8UC1``, ``mono16``/``16UC1``, ``32FC1``, ``64FC1``,
``bgr8``, ``rgb8``. Decoding honours ``step`` (row padding; the padding bytes are ignored) and
``is_bigendian``; the array comes back in native byte order, ``(H, W)`` or ``(H, W, 3)``, as its
own copy. cv_bridge is used where it imports and works; its Python side breaks on numpy 2, so
every call to it is guarded and the own conversion (the same result) takes over. Every malformed
message raises :class:`ImageConversionError` (a ``ValueError``) saying what is wrong: unknown
encoding, zero size, ``step < width · bytes per pixel``, data length ``≠ step · height``, NaN or
inf pixels.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from .conversion_errors import ImageConversionError

__all__ = ["ENCODINGS", "image_to_numpy", "numpy_to_image"]

# the logger of the conversions module, whose part this is
log = logging.getLogger("sphere_reg_ros.ros.conversions")

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
