"""The errors of the message ⇄ array conversions (:mod:`.conversions` and its parts)."""

from __future__ import annotations

__all__ = [
    "ConversionError",
    "ImageConversionError",
    "CameraInfoConversionError",
    "PoseConversionError",
]


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
