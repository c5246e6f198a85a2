"""C-arm (X-ray projection) geometry: pinhole intrinsics of a cone-beam source and flat detector.

Frames (see ``sphere_reg_ros.core``): the C-arm optical frame has its origin at the X-ray source,
``z`` towards the detector, ``x`` along image columns and ``y`` along image rows (down), exactly
like a ROS ``*_optical_frame``. Pixel coordinates follow OpenCV/ROS ``CameraInfo``: the centre of
pixel ``(row=0, col=0)`` is at ``(u, v) = (0, 0)``.

A point ``(x, y, z)`` in the optical frame projects to
``u = fx * x / z + cx`` and ``v = fy * y / z + cy`` with ``fx = sdd / delx``, ``fy = sdd / dely``,
``cx = (width - 1) / 2 + x0 / delx`` and ``cy = (height - 1) / 2 + y0 / dely``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


class CarmGeometryError(ValueError):
    """Invalid C-arm geometry (non-positive sizes, inconsistent intrinsics, ...)."""


@dataclass(frozen=True)
class CarmGeometry:
    """Intrinsics of a C-arm.

    Attributes:
        sdd: source-to-detector distance, mm.
        height: detector rows, pixels.
        width: detector columns, pixels.
        delx: pixel spacing along columns (x), mm/pixel.
        dely: pixel spacing along rows (y), mm/pixel.
        x0: principal-point offset from the detector centre along x, mm.
        y0: principal-point offset from the detector centre along y, mm.
    """

    sdd: float = 1020.0
    height: int = 128
    width: int = 128
    delx: float = 2.0
    dely: float = 2.0
    x0: float = 0.0
    y0: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sdd", "delx", "dely", "x0", "y0"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CarmGeometryError(
                    f"C-arm geometry: {name} must be a finite number, got {value!r}"
                )
        for name in ("sdd", "delx", "dely"):
            if getattr(self, name) <= 0:
                raise CarmGeometryError(
                    f"C-arm geometry: {name} must be positive, got {getattr(self, name)}"
                )
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise CarmGeometryError(
                    f"C-arm geometry: {name} must be a positive integer, got {value!r}"
                )

    # ------------------------------------------------------------------ intrinsics
    @property
    def fx(self) -> float:
        """Focal length along x in pixels."""
        return self.sdd / self.delx

    @property
    def fy(self) -> float:
        """Focal length along y in pixels."""
        return self.sdd / self.dely

    @property
    def cx(self) -> float:
        """Principal point column (pixel-centre convention of ROS/OpenCV)."""
        return (self.width - 1) / 2.0 + self.x0 / self.delx

    @property
    def cy(self) -> float:
        """Principal point row (pixel-centre convention of ROS/OpenCV)."""
        return (self.height - 1) / 2.0 + self.y0 / self.dely

    def intrinsic_matrix(self) -> np.ndarray:
        """The 3×3 pinhole matrix ``K`` (pixels), as carried by ``CameraInfo.k``."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_intrinsics(
        cls, K: np.ndarray, height: int, width: int, sdd: float = 1020.0
    ) -> "CarmGeometry":
        """Build the geometry from a 3×3 intrinsic matrix plus the image size.

        ``K`` fixes only ``sdd / pixel spacing``; the source-to-detector distance (mm) is supplied
        separately (it does not change the rendered image as long as the detector lies beyond
        the patient).

        Raises:
            CarmGeometryError: ``K`` is not a finite 3×3 pinhole matrix with positive focal
                lengths and zero skew, or the size is invalid.
        """
        K = np.asarray(K, dtype=np.float64)
        if K.size == 9:
            K = K.reshape(3, 3)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise CarmGeometryError(
                f"intrinsic matrix must be a finite 3x3 matrix, got shape {K.shape}"
            )
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise CarmGeometryError(
                f"intrinsic matrix needs positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}"
            )
        if abs(K[0, 1]) > 1e-9 * K[0, 0] or np.any(np.abs(K[2] - [0, 0, 1]) > 1e-9):
            raise CarmGeometryError(
                f"intrinsic matrix must be a zero-skew pinhole matrix, got {K.tolist()}"
            )
        delx = sdd / K[0, 0]
        dely = sdd / K[1, 1]
        x0 = (K[0, 2] - (width - 1) / 2.0) * delx
        y0 = (K[1, 2] - (height - 1) / 2.0) * dely
        return cls(
            sdd=float(sdd),
            height=int(height),
            width=int(width),
            delx=float(delx),
            dely=float(dely),
            x0=float(x0),
            y0=float(y0),
        )

    # ------------------------------------------------------------------ resampling
    def resized(self, height: int, width: int | None = None) -> "CarmGeometry":
        """The same detector sampled with ``height × width`` pixels (same field of view).

        Pixel spacings scale inversely with the pixel count; the principal-point offsets in mm
        are unchanged, so every 3-D point projects to the same physical detector position.
        """
        width = height if width is None else width
        if height < 1 or width < 1:
            raise CarmGeometryError(f"resized: size must be positive, got {height}x{width}")
        return replace(
            self,
            height=int(height),
            width=int(width),
            delx=self.delx * self.width / width,
            dely=self.dely * self.height / height,
        )

    def downsampled(self, factor: float) -> "CarmGeometry":
        """``resized`` by a factor (``factor > 1`` makes fewer, larger pixels)."""
        if not factor > 0:
            raise CarmGeometryError(f"downsample factor must be positive, got {factor}")
        height = max(1, int(round(self.height / factor)))
        width = max(1, int(round(self.width / factor)))
        return self.resized(height, width)

    def project(self, points_carm: np.ndarray) -> np.ndarray:
        """Project points ``(N, 3)`` in the C-arm optical frame (mm) to pixels ``(N, 2)`` (u, v)."""
        p = np.asarray(points_carm, dtype=np.float64).reshape(-1, 3)
        u = self.fx * p[:, 0] / p[:, 2] + self.cx
        v = self.fy * p[:, 1] / p[:, 2] + self.cy
        return np.stack([u, v], axis=-1)

    def to_dict(self) -> dict:
        """Plain dictionary (for checkpoints and JSON)."""
        return {
            "sdd": self.sdd,
            "height": self.height,
            "width": self.width,
            "delx": self.delx,
            "dely": self.dely,
            "x0": self.x0,
            "y0": self.y0,
        }

    @classmethod
    def from_dict(cls, values: dict) -> "CarmGeometry":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(values) - set(cls().to_dict())
        if unknown:
            raise CarmGeometryError(f"unknown C-arm geometry keys: {sorted(unknown)}")
        return cls(**values)
