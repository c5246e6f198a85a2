"""Image preprocessing of the public datasets (what diffdrrdata 0.0.7 does, written anew with
numpy/scipy) and resampling of an X-ray onto another detector geometry.

* DeepFluoro: centre crop to 1436 × 1436 (50 px off each side of the 1536² detector), Gaussian
  blur (σ = 1 px, 5 × 5 taps, mirrored border), then ``log(65487) − log(I)``.
* Ljubljana: subtract the background (the mode of the rows' modes, smallest value on ties),
  clip to ``[−1, 0]``, add 2 (values in ``[1, 2]``), then ``log(max) − log(I)``.

Both give line-integral-like images: attenuating structures bright.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from sphere_reg_ros.core.carm import CarmGeometry

from .hdf5 import DatasetError

__all__ = [
    "DEEPFLUORO_CROP",
    "DEEPFLUORO_I0",
    "deepfluoro_log_image",
    "ljubljana_log_image",
    "resample_to_geometry",
    "centre_crop",
]

#: Side of DeepFluoro's centre crop, pixels (diffdrrdata's ``center_crop(img, (1436, 1436))``).
DEEPFLUORO_CROP = 1436
#: DeepFluoro's unattenuated intensity (diffdrrdata's ``initial_energy``).
DEEPFLUORO_I0 = 65487.0


def centre_crop(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """The centre ``height × width`` of ``image`` and the removed top rows and left columns
    (rounded as torchvision's ``center_crop``: ``round((H − h) / 2)``)."""
    top = int(round((image.shape[0] - height) / 2.0))
    left = int(round((image.shape[1] - width) / 2.0))
    return image[top : top + height, left : left + width], top, left


def deepfluoro_log_image(pixels: np.ndarray, where: str) -> np.ndarray:
    """DeepFluoro's preprocessing of an already cropped image: blur, then −log(I / I0)."""
    blurred = ndi.gaussian_filter(
        np.asarray(pixels, dtype=np.float64), sigma=1.0, truncate=2.0, mode="mirror"
    )
    if not np.all(blurred > 0):
        raise DatasetError(f"{where}: non-positive detector intensities, cannot take the log")
    return (np.log(DEEPFLUORO_I0) - np.log(blurred)).astype(np.float32)


def _row_modes(image: np.ndarray) -> np.ndarray:
    """The most frequent value of each row (the smallest one on ties, as ``torch.mode``)."""
    modes = np.empty(image.shape[0], dtype=image.dtype)
    for r, row in enumerate(image):
        values, counts = np.unique(row, return_counts=True)
        modes[r] = values[np.argmax(counts)]
    return modes


def ljubljana_log_image(pixels: np.ndarray) -> np.ndarray:
    """Ljubljana's preprocessing: background subtraction, clipping, ``log(max) − log(I)``."""
    image = np.asarray(pixels, dtype=np.float32)
    modes = _row_modes(image)
    background = _row_modes(modes[None])[0]
    shifted = np.clip(image - background, -1.0, 0.0) + 2.0  # in [1, 2]
    return (np.log(shifted.max()) - np.log(shifted)).astype(np.float32)


def _overlap_weights(n_dst: int, n_src: int, scale: float, offset: float) -> np.ndarray:
    """``(n_dst, n_src)`` area weights: destination pixel ``j`` covers source coordinates
    ``[s(j − ½), s(j + ½)]`` with ``s(t) = scale·t + offset``; each row sums to 1 where the
    footprint lies inside the source."""
    j = np.arange(n_dst, dtype=np.float64)[:, None]
    k = np.arange(n_src, dtype=np.float64)[None, :]
    lo = np.maximum(scale * (j - 0.5) + offset, k - 0.5)
    hi = np.minimum(scale * (j + 0.5) + offset, k + 0.5)
    return np.clip(hi - lo, 0.0, None) / scale


def resample_to_geometry(
    image: np.ndarray, source: CarmGeometry, target: CarmGeometry
) -> np.ndarray:
    """``image`` (on ``source``) seen by ``target``: same source point and axes, other intrinsics.

    A ray's pixel on one detector maps affinely to its pixel on the other (``u_t = fx_t/fx_s ·
    (u_s − cx_s) + cx_t``, separable in rows and columns), so each target pixel is the area
    average of the source pixels under its footprint (exact box filter; anti-aliased when
    shrinking). Raises DatasetError when a target pixel reaches outside the source image.
    """
    if image.shape != (source.height, source.width):
        raise DatasetError(
            f"image is {image.shape}, geometry {source.height}x{source.width}: they must match"
        )
    sx, sy = source.fx / target.fx, source.fy / target.fy
    wx = _overlap_weights(target.width, source.width, sx, source.cx - sx * target.cx)
    wy = _overlap_weights(target.height, source.height, sy, source.cy - sy * target.cy)
    if min(wx.sum(axis=1).min(), wy.sum(axis=1).min()) < 1.0 - 1e-6:
        raise DatasetError("target field of view reaches outside the source image")
    return (wy @ np.asarray(image, dtype=np.float64) @ wx.T).astype(np.float32)
