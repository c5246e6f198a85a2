"""Masks of what the CT cannot explain, detected from the X-ray alone.

An X-ray carries content no DRR of the CT can reproduce: collimator shutters, metal instruments
(K-wires, screws) and saturated detector pixels. Left in the residuals they move the cost's
minimum away from the true pose (a shutter edge is the strongest edge of the image). This module
finds them in a line-integral image (log domain, bone bright; shape ``(H, W)``) and returns a
*valid* mask (True = the CT may explain the pixel); the LM gives masked pixels zero weight and
the residual models standardise over the valid pixels only.

Detectors (all on a copy reduced to at most ``MaskConfig.detect_size`` pixels a side):

* **Collimator shutters** are straight or circular boundaries beyond which the image is
  uniformly *brighter* (few primary quanta pass a shutter, so the line integral jumps up). For
  every normal direction ``φ`` (``angles`` of them over 360°, so any side and any rotation) the
  image is rotated so that ``φ`` points along the columns; for each offset ``d`` the step
  ``D(row) = mean(band outside d) − mean(band inside d)`` is taken per row and its median over
  the rows is the edge score (a shutter steps up along its whole length; anatomy edges are
  neither straight nor consistent). The strongest edges above ``edge_threshold`` (relative to
  the image's robust spread) are taken greedily, each suppressing its neighbours in angle, and
  everything beyond them is masked. A circular field is scored the same way in polar
  coordinates about a few candidate centres (median over angles of the radial step).
* **Metal**: pixels whose white top-hat (the image minus its grey opening over a window wider
  than a wire) exceeds ``metal_threshold`` times the robust spread, dilated by ``metal_dilate``.
* **Saturation**: plateaus at the image's extreme values (a clipped detector), when more than
  ``saturation_min_fraction`` of the pixels share the minimum or the maximum.

A margin of ``margin`` (fraction of the side) is added inside each shutter edge for detector blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "hatch_pattern",
    "MaskConfig",
    "ImageMasks",
    "detect_masks",
    "shutter_edges",
    "resize_mask",
]


@dataclass(frozen=True)
class MaskConfig:
    """Settings of :func:`detect_masks` (fractions refer to the image side, thresholds to the
    image's robust spread: the interquartile range of its central half)."""

    collimator: bool = True
    circular: bool = True
    metal: bool = True
    saturation: bool = True
    detect_size: int = 128
    angles: int = 120
    max_edges: int = 8
    max_inset: float = 0.3
    band: float = 0.025
    edge_threshold: float = 0.6
    suppress_deg: float = 20.0
    margin: float = 0.015
    metal_window: float = 0.06
    metal_threshold: float = 2.0
    metal_dilate: int = 1
    saturation_min_fraction: float = 0.005
    max_masked_fraction: float = 0.8

    def __post_init__(self) -> None:
        if not (isinstance(self.detect_size, int) and 16 <= self.detect_size <= 1024):
            raise ValueError(f"detect_size must be an int in [16, 1024], got {self.detect_size!r}")
        if not (isinstance(self.angles, int) and self.angles >= 4):
            raise ValueError(f"angles must be an int >= 4, got {self.angles!r}")
        for name in (
            "max_inset",
            "band",
            "margin",
            "metal_window",
            "saturation_min_fraction",
            "max_masked_fraction",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v < 1):
                raise ValueError(f"{name} must be a fraction in [0, 1), got {v!r}")
        for name in ("edge_threshold", "metal_threshold", "suppress_deg"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")

    @classmethod
    def off(cls) -> "MaskConfig":
        """Detect nothing (every pixel valid)."""
        return cls(collimator=False, circular=False, metal=False, saturation=False)


@dataclass(frozen=True)
class ImageMasks:
    """Masks of one image, ``(H, W)`` bool tensors at the image's size (True = affected), and
    ``valid`` (True = usable). ``edges`` lists the shutter edges found as
    ``(angle_rad, inset_fraction, score)``; ``circle`` the circular field ``(cx, cy, r)`` in
    fractions of the side, or None."""

    valid: torch.Tensor
    collimator: torch.Tensor
    metal: torch.Tensor
    saturated: torch.Tensor
    edges: tuple[tuple[float, float, float], ...] = ()
    circle: tuple[float, float, float] | None = None

    @property
    def masked_fraction(self) -> float:
        return float(1.0 - self.valid.float().mean())

    def fractions(self) -> dict[str, float]:
        """Masked share of the image per cause and in all."""
        return {
            "masked": self.masked_fraction,
            "collimator": float(self.collimator.float().mean()),
            "metal": float(self.metal.float().mean()),
            "saturated": float(self.saturated.float().mean()),
        }


def _spread(img: torch.Tensor) -> float:
    """Interquartile range of the central half of ``img`` (H, W), floored (never 0)."""
    H, W = img.shape
    core = img[H // 4 : H - H // 4, W // 4 : W - W // 4].flatten().double()
    q = torch.quantile(core, torch.tensor([0.25, 0.75], dtype=torch.float64))
    full = float(img.max() - img.min())
    return max(float(q[1] - q[0]), 1e-3 * full, 1e-12)


def _rotation_grid(shape: tuple[int, int], phi: torch.Tensor) -> torch.Tensor:
    """Sampling grids (A, H, W, 2) that rotate an image so that direction ``phi`` (A,) -- angle
    from +columns towards +rows -- points along +columns."""
    c, s = torch.cos(phi), torch.sin(phi)
    z = torch.zeros_like(c)
    theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], -2)
    return F.affine_grid(theta, (len(phi), 1, *shape), align_corners=False)


def _band_steps(
    values: torch.Tensor, valid: torch.Tensor, j: torch.Tensor, band: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps along the last axis at each index of ``j`` (J,): mean of the valid ``values`` in the
    ``band`` after the index minus the mean in the ``band`` ending at it. Returns the steps
    (..., J) (NaN where undefined) and where they are defined (..., J): at least one valid value
    outside and a full band inside."""
    n = values.shape[-1]
    cs = F.pad(torch.cumsum(values * valid, -1), (1, 0))
    cn = F.pad(torch.cumsum(valid.to(values.dtype), -1), (1, 0))
    jo0, jo1 = (j + 1).clamp(max=n), (j + 1 + band).clamp(max=n)
    ji0, ji1 = (j + 1 - band).clamp(min=0), j + 1
    out_sum, out_n = cs[..., jo1] - cs[..., jo0], cn[..., jo1] - cn[..., jo0]
    in_sum, in_n = cs[..., ji1] - cs[..., ji0], cn[..., ji1] - cn[..., ji0]
    ok = (out_n >= 1) & (in_n >= band)
    d = torch.where(ok, out_sum / out_n.clamp_min(1) - in_sum / in_n.clamp_min(1), torch.nan)
    return d, ok


def _step_scores(
    img: torch.Tensor, phi: torch.Tensor, band: int, max_inset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Median over rows of the outward step at each offset, per angle: scores (A, J) and the
    offsets' insets (J,) as fractions of the side (0 = the image border). NaN pixels of ``img``
    (already masked) take no part."""
    H, W = img.shape
    grid = _rotation_grid((H, W), phi.to(img.dtype))
    known = torch.isfinite(img)
    x = torch.where(known, img, 0.0).expand(len(phi), 1, H, W)
    rot = F.grid_sample(x, grid, align_corners=False)[:, 0]
    ones = known.to(img.dtype).expand(len(phi), 1, H, W)
    valid = F.grid_sample(ones, grid, align_corners=False)[:, 0] > 0.999
    j = torch.arange(int(W * (1.0 - max_inset)), W - 1)  # column of the last inside pixel
    d, ok = _band_steps(rot, valid, j, band)
    enough = ok.sum(1) >= 0.2 * H  # a line needs a fair length inside the image
    score = torch.nanmedian(d, dim=1).values
    score = torch.where(enough & torch.isfinite(score), score, torch.full_like(score, -math.inf))
    inset = (W - 1 - j).to(img.dtype) / W
    return score, inset


def shutter_edges(
    img: torch.Tensor, config: MaskConfig = MaskConfig(), spread: float | None = None
) -> list[tuple[float, float, float]]:
    """Straight shutter edges of ``img`` (H, W) as ``(angle_rad, inset, score)``: beyond the line
    at distance ``(0.5 − inset)·W`` from the centre along direction ``angle`` (from +columns
    towards +rows) the image steps up by ``score`` robust spreads (``spread``: the image's, computed
    when not given)."""
    H, W = img.shape
    spread = _spread(img) if spread is None else spread
    phi = torch.arange(config.angles, dtype=torch.float64) * (2 * math.pi / config.angles)
    band = max(2, int(round(config.band * W)))
    score, inset = _step_scores(img.double(), phi, band, config.max_inset)
    score = score / spread
    edges: list[tuple[float, float, float]] = []
    best, arg = score.max(dim=1)
    avail = torch.ones(len(phi), dtype=torch.bool)
    sup = math.radians(config.suppress_deg)
    for _ in range(config.max_edges):
        cand = torch.where(avail, best, torch.full_like(best, -math.inf))
        k = int(cand.argmax())
        if not float(cand[k]) > config.edge_threshold:
            break
        edges.append((float(phi[k]), float(inset[arg[k]]), float(cand[k])))
        dphi = torch.remainder(phi - phi[k] + math.pi, 2 * math.pi) - math.pi
        avail &= dphi.abs() > sup
    if len(edges) <= 1:
        return edges
    # verification: each edge again, with what the others mask taken out (two shutters meeting
    # at a corner make diagonal lines through the corner step up too)
    kept = []
    for e in edges:
        others = torch.zeros((H, W), dtype=torch.bool)
        for o in edges:
            if o is not e:
                others |= _beyond((H, W), o[0], o[1], 0.0)
        s, ins = _step_scores(
            torch.where(others, torch.nan, img.double()),
            torch.tensor([e[0]], dtype=torch.float64),
            band,
            config.max_inset,
        )
        j = int(torch.argmin((ins - e[1]).abs()))
        if float(s[0, j]) / spread > config.edge_threshold:
            kept.append(e)
    return kept


def _circle(
    img: torch.Tensor, config: MaskConfig, spread: float
) -> tuple[float, float, float, float] | None:
    """Best circular field ``(cx, cy, r, score)`` (fractions of the side, score in ``spread``s)."""
    H, W = img.shape
    n_ang, n_rad = 72, W // 2 + W // 4
    ang = torch.arange(n_ang, dtype=torch.float64) * (2 * math.pi / n_ang)
    rad = torch.arange(n_rad, dtype=torch.float64) / (W / 2)  # in half sides
    best = None
    band = max(2, int(round(config.band * W)))
    for cy in (-0.1, 0.0, 0.1):
        for cx in (-0.1, 0.0, 0.1):
            gx = cx + rad[None, :] * torch.cos(ang[:, None])
            gy = cy + rad[None, :] * torch.sin(ang[:, None])
            grid = torch.stack([gx, gy], -1)[None]
            polar = F.grid_sample(img.double()[None, None], grid, align_corners=False)[
                0, 0
            ]  # (A, R)
            inside = (gx.abs() < 1) & (gy.abs() < 1)
            j = torch.arange(int(n_rad * 0.35), n_rad - band)
            d, ok = _band_steps(polar, inside, j, band)
            enough = ok.sum(0) >= 0.5 * n_ang
            s = torch.where(
                enough,
                torch.nanmedian(d, dim=0).values,
                torch.full((len(j),), -math.inf, dtype=torch.float64),
            )
            k = int(s.argmax())
            cand = (
                0.5 + 0.5 * cx,
                0.5 + 0.5 * cy,
                float(rad[j[k]]) / 2 + 0.5 / W,
                float(s[k]) / spread,
            )
            if best is None or cand[3] > best[3]:
                best = cand
    return best if best is not None and best[3] > config.edge_threshold else None


def _beyond(shape: tuple[int, int], phi: float, inset: float, margin: float) -> torch.Tensor:
    """(H, W) bool: pixels beyond the edge ``(phi, inset)`` widened inwards by ``margin``."""
    H, W = shape
    y = (torch.arange(H, dtype=torch.float64) + 0.5) / H - 0.5
    x = (torch.arange(W, dtype=torch.float64) + 0.5) / W - 0.5
    t = x[None, :] * math.cos(phi) + y[:, None] * math.sin(phi)  # in sides, from the centre
    return t > 0.5 - inset - margin


def _metal(img: torch.Tensor, config: MaskConfig, spread: float) -> torch.Tensor:
    H, W = img.shape
    k = max(3, 2 * int(round(config.metal_window * W / 2)) + 1)
    x = img.double()[None, None]
    pad = k // 2
    ero = -F.max_pool2d(F.pad(-x, (pad,) * 4, mode="replicate"), k, stride=1)
    opened = F.max_pool2d(F.pad(ero, (pad,) * 4, mode="replicate"), k, stride=1)
    tophat = (x - opened)[0, 0]
    mask = tophat > config.metal_threshold * spread
    if config.metal_dilate > 0 and bool(mask.any()):
        d = 2 * config.metal_dilate + 1
        mask = (
            F.max_pool2d(mask.double()[None, None], d, stride=1, padding=config.metal_dilate)[0, 0]
            > 0
        )
    return mask


def _saturated(img: torch.Tensor, config: MaskConfig) -> torch.Tensor:
    lo, hi = img.min(), img.max()
    tol = 1e-6 * max(float(hi - lo), 1e-12)
    out = torch.zeros_like(img, dtype=torch.bool)
    for plateau in (img <= lo + tol, img >= hi - tol):
        if float(plateau.double().mean()) > config.saturation_min_fraction:
            out |= plateau
    return out


def detect_masks(image: torch.Tensor | np.ndarray, config: MaskConfig = MaskConfig()) -> ImageMasks:
    """Masks of one line-integral image ``(H, W)`` (see the module docstring).

    Raises ValueError for anything but a finite 2-D image. If more than
    ``max_masked_fraction`` would be masked, the detections are dropped (nothing left to register
    is worse than an unmasked shutter) and only saturation is kept.
    """
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if img.ndim != 2 or img.shape[0] < 4 or img.shape[1] < 4:
        raise ValueError(f"image must be 2-D and at least 4x4, got shape {tuple(img.shape)}")
    if not bool(torch.isfinite(img).all()):
        raise ValueError("image contains NaN or inf")
    img = img.detach().to("cpu", torch.float64)
    H, W = img.shape
    f = max(1, math.ceil(max(H, W) / config.detect_size))
    small = F.avg_pool2d(img[None, None], f, ceil_mode=True)[0, 0] if f > 1 else img
    h, w = small.shape
    spread = _spread(small)
    none = torch.zeros((h, w), dtype=torch.bool)
    coll, metal, sat = none.clone(), none.clone(), none.clone()
    edges: list[tuple[float, float, float]] = []
    circle = None
    if config.saturation:
        sat = _saturated(small, config)
    if config.collimator:
        edges = shutter_edges(small, config, spread)
        for phi, inset, _ in edges:
            coll |= _beyond((h, w), phi, inset, config.margin)
        if config.circular:
            c = _circle(small, config, spread)
            if c is not None:
                yy = (torch.arange(h, dtype=torch.float64)[:, None] + 0.5) / h
                xx = (torch.arange(w, dtype=torch.float64)[None, :] + 0.5) / w
                ring = torch.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2) > c[2] - config.margin
                if float((ring & ~coll).double().mean()) > 0.01:  # adds more than the lines explain
                    coll |= ring
                    circle = c[:3]
    if config.metal:
        near = (
            F.max_pool2d(coll.double()[None, None], 7, stride=1, padding=3)[0, 0] > 0
        )  # shutter edges
        metal = _metal(small, config, spread) & ~near
    if float((coll | metal).double().mean()) > config.max_masked_fraction:
        coll, metal, edges, circle = none.clone(), none.clone(), [], None
    masks = [coll, metal, sat]
    if f > 1:  # back to the image's size: a pixel is affected when its detection cell is
        masks = [m.repeat_interleave(f, 0).repeat_interleave(f, 1)[:H, :W] for m in masks]
    coll, metal, sat = masks
    return ImageMasks(
        valid=~(coll | metal | sat),
        collimator=coll,
        metal=metal,
        saturated=sat,
        edges=tuple(edges),
        circle=circle,
    )


def resize_mask(valid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Valid masks ``(B, 1, h, w)`` (bool) → ``(B, 1, height, width)`` bool, a pixel valid only
    when all of its footprint is (area fraction > 0.999)."""
    v = valid.to(torch.float32)
    h, w = v.shape[-2:]
    if (h, w) == (height, width):
        return valid.bool()
    if h % height == 0 and w % width == 0:
        return F.avg_pool2d(v, (h // height, w // width)) > 0.999
    return F.interpolate(v, size=(height, width), mode="area") > 0.999


def hatch_pattern(mask: np.ndarray, period: int = 8) -> np.ndarray:
    """Where to draw the hatching of masked pixels in an overlay: ``(H, W)`` bool, True on
    diagonal lines ``period`` px apart inside ``mask`` (True = masked)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    rows, cols = np.indices(m.shape)
    return m & ((rows + cols) % max(2, int(period)) < max(1, int(period) // 4))
