"""The public datasets' camera model, converted to the project's C-arm optical frame.

Both datasets (as diffdrrdata reads them) describe a projection by a pinhole matrix ``K``
(pixels), its detector's pixel spacings, and a rigid transform into a *dataset camera frame*
``C`` with the X-ray source at the origin and the detector on ``−z``: a point ``(X, Y, Z)`` of
``C`` (``Z < 0``) lands on pixel ``u = K[0,2] + |K[0,0]|·X/|Z|`` (column), ``v = K[1,2] +
|K[1,1]|·Y/|Z|`` (row) of the stored image (DeepFluoro stores negative focal lengths; as in
diffdrrdata only their magnitudes are used). Pixel ``(0, 0)`` is the centre of the first
pixel, as the dataset's 2-D landmarks show.

``(column, row, towards the detector)`` = ``(X, Y, −Z)`` is a left-handed triple, so no rotation
maps ``C`` onto an optical frame (``x`` along columns, ``y`` along rows, ``z`` towards the
detector, right-handed) for the stored image: the stored image is the shadow seen from behind
the detector. The loaders therefore mirror it (columns reversed), which makes it the view from
the source, and use ``T_C_from_optical = diag(−1, 1, −1)``. A projection flagged for a 180°
rotation ("rot-180-for-up") is also turned by 180° (rows and columns reversed) and its optical
frame with it (``diag(1, −1, −1)`` in all); the principal point moves with the pixels.
"""

from __future__ import annotations

import numpy as np

from sphere_reg_ros.core.carm import CarmGeometry, CarmGeometryError

from .hdf5 import DatasetError

__all__ = ["DatasetCamera", "dataset_camera", "orthonormalised"]


class DatasetCamera:
    """One projection's intrinsics and frame change, for an image of ``height × width`` pixels
    (after any crop) with ``K`` in the same pixels.

    Attributes:
        geometry: the project's :class:`CarmGeometry` of the converted (mirrored, maybe turned)
            image; ``sdd`` is the dataset's focal length in mm, ``(|K00|·col_spacing +
            |K11|·row_spacing) / 2``, and ``fx``, ``fy`` are ``|K00|``, ``|K11|`` exactly.
        T_C_from_optical: ``(4, 4)`` the optical frame in the dataset camera frame.
        rot180: whether the image is turned by 180°.
    """

    def __init__(self, geometry: CarmGeometry, T_C_from_optical: np.ndarray, rot180: bool):
        self.geometry, self.T_C_from_optical, self.rot180 = geometry, T_C_from_optical, rot180

    def image(self, stored: np.ndarray) -> np.ndarray:
        """The stored ``(H, W)`` image in the optical frame's pixel order (a contiguous copy)."""
        out = stored[::-1, :] if self.rot180 else stored[:, ::-1]  # turned + mirrored = rows
        return np.ascontiguousarray(out)

    def pixels(self, uv: np.ndarray) -> np.ndarray:
        """Stored pixel positions ``(..., 2)`` (u column, v row) in the converted image."""
        uv = np.asarray(uv, dtype=np.float64)
        h, w = self.geometry.height, self.geometry.width
        if self.rot180:
            return np.stack([uv[..., 0], (h - 1) - uv[..., 1]], axis=-1)
        return np.stack([(w - 1) - uv[..., 0], uv[..., 1]], axis=-1)


def dataset_camera(
    K: np.ndarray,
    height: int,
    width: int,
    col_spacing: float,
    row_spacing: float,
    rot180: bool,
    *,
    where: str,
) -> DatasetCamera:
    """The converted camera of a ``height × width`` image with pinhole matrix ``K`` (3, 3).

    Raises:
        DatasetError: ``K`` is not a zero-skew pinhole matrix with non-zero focal lengths, or the
            sizes or spacings are not positive (the message starts with ``where``).
    """
    K = np.asarray(K, dtype=np.float64)
    fx, fy = abs(K[0, 0]), abs(K[1, 1])
    if (
        K.shape != (3, 3)
        or not np.all(np.isfinite(K))
        or fx == 0
        or fy == 0
        or abs(K[0, 1]) > 1e-9 * fx
        or np.abs(K[2] - [0.0, 0.0, 1.0]).max() > 1e-9
        or abs(K[1, 0]) > 1e-9 * fy
    ):
        raise DatasetError(f"{where}: not a zero-skew pinhole matrix with focal lengths: {K}")
    if not (col_spacing > 0 and row_spacing > 0):
        raise DatasetError(
            f"{where}: pixel spacings must be positive ({col_spacing}, {row_spacing})"
        )
    if rot180:
        cx, cy, R = K[0, 2], (height - 1) - K[1, 2], np.diag([1.0, -1.0, -1.0])
    else:
        cx, cy, R = (width - 1) - K[0, 2], K[1, 2], np.diag([-1.0, 1.0, -1.0])
    sdd = (fx * col_spacing + fy * row_spacing) / 2.0
    K_optical = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    try:
        geometry = CarmGeometry.from_intrinsics(K_optical, int(height), int(width), sdd=sdd)
    except CarmGeometryError as exc:
        raise DatasetError(f"{where}: {exc}") from exc
    T = np.eye(4)
    T[:3, :3] = R
    return DatasetCamera(geometry, T, bool(rot180))


def orthonormalised(T: np.ndarray) -> np.ndarray:
    """``T`` (4, 4) with its rotation replaced by the nearest rotation matrix (SVD): products of
    the files' single-precision transforms drift from orthonormal by ~1e-6."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:  # cannot happen for the rigid inputs checked on reading
        raise DatasetError(f"pose is a reflection, not a rotation: {T.tolist()}")
    out = np.array(T, dtype=np.float64)
    out[:3, :3] = R
    out[3] = [0.0, 0.0, 0.0, 1.0]
    return out
