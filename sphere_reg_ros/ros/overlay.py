"""The registered overlay: the X-ray in 8 bit with the registered DRR's edges and a status line.

Pure numpy/OpenCV (no ROS types), so the simulator, the demo and the tests draw the same picture.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..core.masks import hatch_pattern

__all__ = ["to_uint8", "make_overlay", "EDGE_COLOUR_OK", "EDGE_COLOUR_FAIL", "MASK_COLOUR"]

#: BGR colours of the DRR edges for an accepted / a rejected registration.
EDGE_COLOUR_OK = (0, 255, 0)
EDGE_COLOUR_FAIL = (0, 0, 255)
#: BGR colour of the tint and hatching of masked pixels (what the CT cannot explain).
MASK_COLOUR = (200, 120, 0)


def to_uint8(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """``(H, W)`` → uint8 ``(H, W)``, the ``[low_pct, high_pct]`` percentiles stretched to 0–255.

    Non-finite pixels become 0; a constant image becomes all 0.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"image must be a non-empty (H, W) array, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = np.percentile(a[finite], [low_pct, high_pct])
    if not hi > lo:
        lo, hi = float(a[finite].min()), float(a[finite].max())
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = np.clip((np.where(finite, a, lo) - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    return out.astype(np.uint8)


def make_overlay(
    xray: np.ndarray,
    drr: np.ndarray | None,
    status: str,
    ok: bool = True,
    min_size: int = 256,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """BGR ``uint8`` overlay ``(H', W', 3)`` of the X-ray with the DRR's Canny edges.

    Args:
        xray: ``(H, W)`` line-integral image (bone bright).
        drr: ``(h, w)`` DRR at the registered pose (any size covering the same detector; resized
            bilinearly to the X-ray's size before edge detection), or None (no edges).
        status: one line of text drawn at the top-left.
        ok: edge colour green (accepted) or red (rejected).
        min_size: images smaller than this (pixels, shorter side) are upscaled by an integer
            factor first so that the text stays legible.
        valid: ``(H, W)`` bool, False where the registration masked the X-ray (collimator,
            metal, saturation: ``RegistrationResult.valid_mask``); drawn tinted and hatched.

    Returns:
        The overlay; ``H' = H · k``, ``W' = W · k`` with ``k = max(1, ceil(min_size / min(H, W)))``.
    """
    grey = to_uint8(xray)
    h, w = grey.shape
    k = max(1, int(np.ceil(min_size / max(1, min(h, w)))))
    if k > 1:
        grey = cv2.resize(grey, (w * k, h * k), interpolation=cv2.INTER_NEAREST)
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if valid is not None:
        masked = ~np.asarray(valid, dtype=bool)
        if masked.shape != (h, w):
            raise ValueError(f"valid mask {masked.shape} does not match the X-ray {(h, w)}")
        if k > 1:
            masked = np.kron(masked, np.ones((k, k), dtype=bool))
        out[masked] = (0.6 * out[masked] + 0.4 * np.array(MASK_COLOUR)).astype(np.uint8)
        out[hatch_pattern(masked)] = MASK_COLOUR
    if drr is not None:
        d = np.asarray(drr, dtype=np.float32)
        if d.ndim != 2 or d.size == 0:
            raise ValueError(f"drr must be a non-empty (h, w) array, got shape {d.shape}")
        d8 = to_uint8(cv2.resize(d, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR))
        d8 = cv2.GaussianBlur(d8, (5, 5), 1.2)
        edges = cv2.Canny(d8, 40, 110) > 0
        out[edges] = EDGE_COLOUR_OK if ok else EDGE_COLOUR_FAIL
    _status_band(out, status, (255, 255, 255) if ok else (0, 0, 255))
    return out


def _status_band(out: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    """Draw ``text`` on a darkened band across the top of ``out`` (in place), as large as fits."""
    font, w = cv2.FONT_HERSHEY_SIMPLEX, out.shape[1]
    scale = max(0.45, w / 700.0)
    while scale > 0.3 and cv2.getTextSize(text, font, scale, 1)[0][0] > w - 8:
        scale -= 0.05
    thickness = max(1, int(round(scale * 1.6)))
    (_, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    band = min(out.shape[0], text_h + baseline + 8)
    out[:band] = (out[:band].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (4, 4 + text_h), font, scale, colour, thickness, cv2.LINE_AA)
