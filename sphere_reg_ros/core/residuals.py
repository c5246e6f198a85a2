"""Learning-free residual models for the LM solver (the "learning-free LM").

Where it fits in the method: docs/ARCHITECTURE.md, Method.

:class:`IntensityResiduals` implements the solver's residual-model interface
(:class:`~sphere_reg_ros.core.lm.ResidualModel`): ``embed(images (B, 1, H, W)) -> (B, C, H, W)``
standardises each image to zero mean and unit variance (channel 0) and, optionally, adds its
two finite-difference gradients (channels 1–2, divided by their joint RMS so that both parts
weigh alike); ``residuals(emb_moving, emb_fixed) -> (B, M)`` are the differences at one or more
scales (2×2 average pooling per level), each level divided by ``sqrt(its pixel count)``.

With the intensity channel only and one scale the cost is ``½|R|² = 1 − NCC`` (normalised cross
correlation of the images); the gradient channels add a gradient-NCC term, the extra scales a
coarse-scale term with a wider basin. It is what the system uses when no trained model exists.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .combined_residuals import CombinedResiduals  # a stack of residual models; re-exported

__all__ = [
    "IntensityResiduals",
    "CombinedResiduals",
    "standardize",
    "local_standardize",
    "erode",
    "fit_intensity",
    "fit_bone_weight",
    "BONE_WEIGHT_BOUNDS",
]


def standardize(
    images: torch.Tensor, eps: float = 1e-8, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image, per-channel zero mean and unit variance over ``(H, W)``: ``(B, C, H, W)``.

    ``mask`` ``(B, 1, H, W)`` (1 = valid): statistics over the valid pixels only, 0 elsewhere."""
    if mask is None:
        mean = images.mean(dim=(-2, -1), keepdim=True)
        var = (images - mean).square().mean(dim=(-2, -1), keepdim=True)
        return (images - mean) / torch.sqrt(var + eps)
    m = mask.to(images.dtype)
    n = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    mean = (images * m).sum(dim=(-2, -1), keepdim=True) / n
    var = ((images - mean).square() * m).sum(dim=(-2, -1), keepdim=True) / n
    return (images - mean) / torch.sqrt(var + eps) * m


def local_standardize(
    images: torch.Tensor, window: int, eps: float = 1e-8, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Standardise each pixel by the mean and standard deviation of its ``window × window``
    neighbourhood (box window, borders by the pixels inside the image): ``(B, C, H, W)``.

    Invariant to intensity changes that are affine over a window (scatter, heel effect, bone
    contrast to first order). ``eps`` is relative to the image's global variance, so flat
    regions (e.g. behind collimator shutters) map to ~0 rather than amplified noise. With
    ``mask`` ``(B, 1, H, W)`` (1 = valid) the window statistics use the valid pixels only
    (normalised convolution) and masked pixels map to 0.
    """
    pad = window // 2
    if mask is None:
        mean = F.avg_pool2d(images, window, stride=1, padding=pad, count_include_pad=False)
        sq = F.avg_pool2d(images * images, window, stride=1, padding=pad, count_include_pad=False)
        var = (sq - mean * mean).clamp_min(0.0)
        floor = eps + 1e-2 * images.var(dim=(-2, -1), keepdim=True, unbiased=False)
        return (images - mean) / torch.sqrt(var + floor)
    m = mask.to(images.dtype)
    frac = F.avg_pool2d(m, window, stride=1, padding=pad, count_include_pad=False).clamp_min(1e-6)
    mean = F.avg_pool2d(images * m, window, stride=1, padding=pad, count_include_pad=False) / frac
    sq = (
        F.avg_pool2d(images * images * m, window, stride=1, padding=pad, count_include_pad=False)
        / frac
    )
    var = (sq - mean * mean).clamp_min(0.0)
    n = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    gmean = (images * m).sum(dim=(-2, -1), keepdim=True) / n
    gvar = ((images - gmean).square() * m).sum(dim=(-2, -1), keepdim=True) / n
    return (images - mean) / torch.sqrt(var + eps + 1e-2 * gvar) * m


def erode(mask: torch.Tensor) -> torch.Tensor:
    """Valid masks ``(B, 1, H, W)`` eroded by one pixel (3×3; the image border counts as valid)."""
    m = mask.to(torch.float32)
    return -F.max_pool2d(F.pad(-m, (1, 1, 1, 1), mode="replicate"), 3, stride=1) > 0.5


def _gradients(z: torch.Tensor, eps: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Central differences along columns and rows (replicate border), joint-RMS normalised;
    with ``mask`` (valid pixels) only where the eroded mask is valid (a difference across the
    mask's edge compares a pixel with a masked one)."""
    p = F.pad(z, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    g = torch.cat([gx, gy], dim=1)
    if mask is None:
        rms = torch.sqrt(g.square().mean(dim=(1, 2, 3), keepdim=True) + eps)
        return g / rms
    m = erode(mask).to(g.dtype)
    g = g * m
    n = (2 * m.sum(dim=(1, 2, 3), keepdim=True)).clamp_min(1.0)
    return g / torch.sqrt(g.square().sum(dim=(1, 2, 3), keepdim=True) / n + eps)


#: Range of the bone weight ``m`` :func:`fit_bone_weight` may fit (bone in the X-ray 0.5 to 3 times
#: as dense, relative to soft tissue, as in the CT: spectra of CT and C-arm differ by about ×1.2–2).
BONE_WEIGHT_BOUNDS = (0.5, 3.0)


def _high_pass(x: torch.Tensor, w: torch.Tensor, window: int) -> torch.Tensor:
    """``x`` minus its mean over the valid pixels (weights ``w`` (B, 1, H, W)) of each
    ``window × window`` box (window 0: of the whole image)."""
    if window <= 0:
        return x - (x * w).sum(dim=(-2, -1), keepdim=True) / w.sum(
            dim=(-2, -1), keepdim=True
        ).clamp_min(1.0)
    pad = window // 2
    frac = F.avg_pool2d(w, window, stride=1, padding=pad, count_include_pad=False).clamp_min(1e-6)
    return x - F.avg_pool2d(x * w, window, stride=1, padding=pad, count_include_pad=False) / frac


def _normal_equations(
    phi: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None, window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares fit of the fixed image on the regressors ``phi`` ``(B, D, H, W)`` over the
    valid pixels, both high-passed (:func:`_high_pass`): ``A = ΦᵀWΦ`` (B, D, D), ``b = ΦᵀWf``
    (B, D, 1) and the valid pixel count (B,), float64 (the regularisation is the caller's)."""
    w = torch.ones_like(fixed[:, :1]) if mask is None else mask.to(phi.dtype)
    hp = _high_pass(phi, w, window).double().flatten(2)  # (B, D, N)
    f = _high_pass(fixed[:, :1], w, window).double().flatten(1)  # (B, N)
    hw = hp * w.double().flatten(1)[:, None]
    return hw @ hp.transpose(1, 2), hw @ f[..., None], w.double().flatten(1).sum(-1).clamp_min(1.0)


def fit_bone_weight(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    mask: torch.Tensor | None = None,
    window: int = 0,
    bounds: tuple[float, float] = BONE_WEIGHT_BOUNDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DRR with its bone reweighted as the X-ray shows it: ``t + (m − 1)·b`` for moving
    images ``(B, 2, H, W)`` = (whole DRR ``t``, bone DRR ``b``), and ``m`` (B,).

    ``m`` (how much denser bone looks in the X-ray than in the CT) comes from the least-squares
    fit ``f ≈ a·t + c·b`` on high-passed copies (as :func:`fit_intensity`), ``m = 1 + c/a``,
    bounded to ``bounds``: a fit at a wrong pose cannot turn the DRR into something else (a
    bone-only or inverted image), it can only reweigh bone within a physical range.
    Differentiable (forward-mode AD too) inside the bounds.
    """
    A, b, _ = _normal_equations(moving[:, :2], fixed, mask, window)
    A = A + 1e-9 * torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)[:, None, None] * torch.eye(
        2, dtype=A.dtype, device=A.device
    )
    coef = torch.linalg.solve(A, b)[..., 0]  # (B, 2)
    a = coef[:, 0]
    tiny = 1e-9 * coef.abs().amax(-1).clamp_min(1e-30)
    m = (1.0 + coef[:, 1] / torch.where(a > tiny, a, tiny)).clamp(*bounds)
    return moving[:, :1] + (m - 1.0).to(moving.dtype)[:, None, None, None] * moving[:, 1:2], m


def fit_intensity(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    degree: int = 1,
    mask: torch.Tensor | None = None,
    window: int = 0,
    ridge: float = 1e-3,
) -> torch.Tensor:
    """The intensity model ``Σₖ cₖ φₖ`` that best fits the fixed image, per batch element:
    ``(B, 1, H, W)``.

    The regressors ``φ`` are the powers ``1 … degree`` of the moving image's first channel (the
    DRR) and its further channels as they are (e.g. the DRR of the bone alone, so that bone may
    weigh more or less in the X-ray than in the CT). The coefficients solve a least-squares fit
    in closed form over the valid pixels (variable projection), on high-passed copies of the
    regressors and the target (each minus its local mean over ``window`` px, 0 = the global
    mean), so that scatter and the heel effect, which are smooth, do not bend the fit. What is
    returned is the model on the unfiltered regressors (an additive constant is left to the
    standardisation that follows). Solved in float64 with a ridge relative to the valid pixel
    count (a regressor that is flat or zero gets weight 0, never NaN). Differentiable, also by
    forward-mode AD: a Jacobian taken through it includes how the fit changes with the pose.
    """
    if not (isinstance(degree, int) and degree >= 1):
        raise ValueError(f"degree must be an int >= 1, got {degree!r}")
    first = standardize(moving[:, :1], mask=mask)
    phi = torch.cat(
        [first**k for k in range(1, degree + 1)] + [standardize(moving[:, 1:], mask=mask)], dim=1
    )
    A, b, n = _normal_equations(phi, fixed, mask, window)
    A = A + ridge * n[:, None, None] * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    coef = torch.linalg.solve(A, b)  # (B, D, 1)
    return (coef.to(moving.dtype)[..., None] * phi).sum(dim=1, keepdim=True)


class IntensityResiduals(torch.nn.Module):
    """Normalised-intensity (optionally + gradient) residuals, at one or several scales.

    Args:
        gradients: add the normalised image gradients as channels (gradient-correlation term).
        gradient_weight: weight of the gradient part relative to the intensity part.
        levels: number of pyramid levels (1 = full resolution only; 2 adds a 2×-pooled copy...).
        level_weights: weight per level (default all 1).
        local_window: > 0: standardise locally (see :func:`local_standardize`) over a window of
            this fraction of the image height (odd, >= 3 px) -- local NCC; 0: globally.
        eps: variance floor of the standardisation (a constant image maps to 0, never NaN).
        curve_degree: > 0: before comparing, map the DRR's values through the polynomial of this
            degree that best fits the X-ray (:func:`fit_intensity`, refitted at every
            evaluation, so also at every linearisation): an unknown smooth intensity curve
            (beam hardening, the detector's response) then costs nothing.
        materials: the moving images carry a second channel, the DRR of the bone alone
            (``DrrRenderer(..., channels=...)``), and the fit weighs it freely against the
            whole DRR: bone contrast that differs between the CT and the X-ray (another
            spectrum) then costs nothing. Implies a fit (degree ``max(1, curve_degree)``).
        fit_min_height: images less tall than this are compared without the fit (e.g. the
            coarse scales: a fitted model also adapts to a wrong pose, which narrows the basin;
            the registrar fits at the finest scale only).

    With a fit, the embedding is the raw image (its channels, zero-filled to
    :attr:`drr_channels`) and the valid mask, and the standardisations run in :meth:`residuals`
    (after the fit); the cost is the same kind of local NCC, now of the fitted DRR.
    """

    def __init__(
        self,
        gradients: bool = False,
        gradient_weight: float = 1.0,
        levels: int = 1,
        level_weights: Sequence[float] | None = None,
        local_window: float = 0.0,
        eps: float = 1e-8,
        curve_degree: int = 0,
        materials: bool = False,
        fit_min_height: int = 0,
    ) -> None:
        super().__init__()
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"levels must be an int >= 1, got {levels!r}")
        weights = [1.0] * levels if level_weights is None else [float(v) for v in level_weights]
        if len(weights) != levels or not all(math.isfinite(v) and v >= 0 for v in weights):
            raise ValueError(
                f"level_weights must be {levels} finite values >= 0, got {level_weights}"
            )
        if not (math.isfinite(gradient_weight) and gradient_weight >= 0):
            raise ValueError(f"gradient_weight must be finite and >= 0, got {gradient_weight}")
        if not (math.isfinite(local_window) and 0 <= local_window < 1):
            raise ValueError(f"local_window must be a fraction in [0, 1), got {local_window}")
        if not (isinstance(curve_degree, int) and 0 <= curve_degree <= 5):
            raise ValueError(f"curve_degree must be an int in [0, 5], got {curve_degree!r}")
        self.curve_degree = max(curve_degree, 1) if materials else curve_degree
        self.fit_min_height = int(fit_min_height)
        self.materials = bool(materials)
        #: channels of the moving images (DRRs) this model compares: 2 = whole DRR + bone DRR
        self.drr_channels = 2 if materials else 1
        self.local_window = float(local_window)
        self.gradients = bool(gradients)
        self.gradient_weight = float(gradient_weight)
        self.levels = levels
        self.level_weights = weights
        self.eps = float(eps)

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` images → ``(B, C, H, W)`` (C = 1, or 3 with gradients).

        ``mask`` ``(B, 1, H, W)`` bool (True = valid, see :mod:`.masks`): statistics over the
        valid pixels only; masked pixels embed to 0 (give them zero weight:
        :meth:`residual_weights`)."""
        if images.ndim != 4 or not 1 <= images.shape[1] <= self.drr_channels:
            raise ValueError(
                f"images must be (B, 1, H, W) (or (B, {self.drr_channels}, H, W) DRRs), "
                f"got {tuple(images.shape)}"
            )
        if mask is not None and mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"mask {tuple(mask.shape)} does not match images {tuple(images.shape)}"
            )
        if self.curve_degree:
            valid = torch.ones_like(images[:, :1]) if mask is None else mask.to(images.dtype)
            missing = self.drr_channels - images.shape[1]
            return torch.cat(
                [images, images.new_zeros(images.shape[0], missing, *images.shape[2:]), valid],
                dim=1,
            )
        return self._standardized(images, mask)

    def _window(self, height: int) -> int:
        """Local standardisation window (odd, px) for images of ``height``; 0 = global."""
        return (
            max(3, 2 * int(round(self.local_window * height / 2)) + 1)
            if self.local_window > 0
            else 0
        )

    def _standardized(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The comparison embedding (standardised image, optionally its gradients)."""
        if self.local_window > 0:
            window = self._window(images.shape[-2])
            z = standardize(local_standardize(images, window, self.eps, mask), self.eps, mask)
        else:
            z = standardize(images, self.eps, mask)
        if not self.gradients:
            return z
        return torch.cat([z, _gradients(z, self.eps, mask)], dim=1)

    def residual_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Weights ``(B, M)`` (1 valid, 0 masked) in the layout of :meth:`residuals` for valid
        masks ``(B, 1, H, W)``: a pooled residual is valid when all its pixels are, a gradient
        residual when its 3×3 neighbourhood is."""
        m = mask.to(torch.float32)
        g = erode(mask).to(torch.float32) if self.gradients else None
        out = []
        for level, weight in enumerate(self.level_weights):
            if level:
                if min(m.shape[-2:]) < 2:
                    break
                m = (F.avg_pool2d(m, 2) > 0.999).float()
                g = None if g is None else (F.avg_pool2d(g, 2) > 0.999).float()
            if weight == 0:
                continue
            out.append(m.flatten(1))
            if self.gradients and self.gradient_weight > 0:
                out.append(torch.cat([g, g], dim=1).flatten(1))
        return torch.cat(out, dim=1)

    def residuals(self, emb_moving: torch.Tensor, emb_fixed: torch.Tensor) -> torch.Tensor:
        """Residuals ``(B, M)``; ``½|R|²`` = weighted sum over levels of ``(1 − NCC)``-type terms."""
        if emb_moving.shape[1:] != emb_fixed.shape[1:]:
            raise ValueError(
                f"embedding shapes differ: {tuple(emb_moving.shape)} vs {tuple(emb_fixed.shape)}"
            )
        if self.curve_degree:
            mask = emb_fixed[:, -1:] > 0.5
            fitted = emb_moving[:, :1]
            if emb_fixed.shape[-2] >= self.fit_min_height:
                window = self._window(emb_fixed.shape[-2])
                if self.materials and self.curve_degree == 1:
                    fitted = fit_bone_weight(emb_moving[:, :2], emb_fixed[:, :1], mask, window)[0]
                else:
                    fitted = fit_intensity(
                        emb_moving[:, :-1], emb_fixed[:, :1], self.curve_degree, mask, window
                    )
            emb_moving, emb_fixed = (
                self._standardized(fitted, mask),
                self._standardized(emb_fixed[:, :1], mask),
            )
        diff = emb_moving - emb_fixed
        out = []
        for level, weight in enumerate(self.level_weights):
            if level:
                if min(diff.shape[-2:]) < 2:
                    break
                diff = F.avg_pool2d(diff, 2)
            hw = diff.shape[-2] * diff.shape[-1]
            if weight == 0:
                continue
            parts = [diff[:, :1] * math.sqrt(weight / hw)]
            if self.gradients and self.gradient_weight > 0:
                parts.append(diff[:, 1:] * math.sqrt(weight * self.gradient_weight / (2 * hw)))
            out.extend(p.flatten(1) for p in parts)
        return torch.cat(out, dim=1)

    def similarity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Cost ``½|R|²`` (B,) of moving vs fixed images ``(B, 1, H, W)`` (lower is better)."""
        r = self.residuals(self.embed(moving), self.embed(fixed))
        return 0.5 * r.square().sum(-1)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.similarity(moving, fixed)
