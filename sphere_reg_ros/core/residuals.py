"""Learning-free residual models for the LM solver (the "learning-free LM" of DESIGN.md §3).

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

__all__ = ["IntensityResiduals", "CombinedResiduals", "standardize", "local_standardize", "erode"]


def standardize(images: torch.Tensor, eps: float = 1e-8, mask: torch.Tensor | None = None) -> torch.Tensor:
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


def local_standardize(images: torch.Tensor, window: int, eps: float = 1e-8,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
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
    sq = F.avg_pool2d(images * images * m, window, stride=1, padding=pad, count_include_pad=False) / frac
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
    """

    def __init__(self, gradients: bool = False, gradient_weight: float = 1.0, levels: int = 1,
                 level_weights: Sequence[float] | None = None, local_window: float = 0.0,
                 eps: float = 1e-8) -> None:
        super().__init__()
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"levels must be an int >= 1, got {levels!r}")
        weights = [1.0] * levels if level_weights is None else [float(v) for v in level_weights]
        if len(weights) != levels or not all(math.isfinite(v) and v >= 0 for v in weights):
            raise ValueError(f"level_weights must be {levels} finite values >= 0, got {level_weights}")
        if not (math.isfinite(gradient_weight) and gradient_weight >= 0):
            raise ValueError(f"gradient_weight must be finite and >= 0, got {gradient_weight}")
        if not (math.isfinite(local_window) and 0 <= local_window < 1):
            raise ValueError(f"local_window must be a fraction in [0, 1), got {local_window}")
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
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        if mask is not None and mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(images.shape)}")
        if self.local_window > 0:
            window = max(3, 2 * int(round(self.local_window * images.shape[-2] / 2)) + 1)
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
            raise ValueError(f"embedding shapes differ: {tuple(emb_moving.shape)} vs {tuple(emb_fixed.shape)}")
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


class CombinedResiduals(torch.nn.Module):
    """Several residual models stacked: ``R = [√w₁ R₁, √w₂ R₂, ...]``, cost ``Σ wᵢ ½|Rᵢ|²``.

    E.g. a learned similarity (wide basin, robust to the physics gap) plus the learning-free
    intensity residuals (pixel-level precision). ``embed`` returns the flattened embeddings
    concatenated ``(B, N₁ + N₂ + ...)`` (one tensor, as the solver expects); ``residuals`` splits
    them again (the split sizes are found per image size with one probe).
    """

    def __init__(self, models: Sequence[torch.nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(models) < 1 or len(models) != len(weights) or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError("need one finite weight >= 0 per model")
        self.models = torch.nn.ModuleList(models)
        self.weights = [float(w) for w in weights]
        self._shapes: dict[tuple[int, int], list[tuple[int, ...]]] = {}
        cfgs = [getattr(m, "config", None) for m in models]
        self.config = next((c for c in cfgs if c is not None and hasattr(c, "downsample")), None)

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        embs = [m.embed(images) if mask is None else m.embed(images, mask=mask) for m in self.models]
        self._shapes[tuple(images.shape[-2:])] = [tuple(e.shape[1:]) for e in embs]
        return torch.cat([e.flatten(1) for e in embs], dim=1)

    def _split(self, emb: torch.Tensor) -> list[torch.Tensor]:
        n = emb.shape[1]
        for shapes in self._shapes.values():
            sizes = [math.prod(s) for s in shapes]
            if sum(sizes) == n:
                return [p.reshape(emb.shape[0], *s) for p, s in zip(emb.split(sizes, dim=1), shapes)]
        raise ValueError(f"embedding of width {n} matches no image size embedded so far")

    def residuals(self, emb_moving: torch.Tensor, emb_fixed: torch.Tensor) -> torch.Tensor:
        parts = [m.residuals(a, b) * math.sqrt(w) for m, a, b, w in
                 zip(self.models, self._split(emb_moving), self._split(emb_fixed), self.weights)]
        return torch.cat(parts, dim=1)

    def similarity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        r = self.residuals(self.embed(moving), self.embed(fixed))
        return 0.5 * r.square().sum(-1)

    def residual_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Mask weights ``(B, M)`` of the stacked residuals (each model's own layout)."""
        return torch.cat([m.residual_weights(mask) for m in self.models], dim=1)
