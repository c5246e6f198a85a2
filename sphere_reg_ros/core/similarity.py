"""Learned image similarity: a CNN-Transformer encoder and a spherical (or other) embedding.

The network (the seed paper's similarity model; docs/ARCHITECTURE.md, Method) maps an image
``(B, 1, H, W)`` to per-pixel features ``φ (B, C, h, w)`` at ``1/downsample`` of the resolution
(a convolutional stem, then a small pre-norm transformer over the ``h·w`` tokens), and embeds
each feature in a manifold by the Riemannian exponential at a base point:

* ``"spherical"`` (the seed): ``Φ = EXP_N(φ) = N cos|φ| + φ sin|φ|/|φ|`` on the unit sphere
  ``S^C ⊂ R^{C+1}``, ``N = (0, …, 0, 1)`` the north pole (``φ`` in ``T_N S^C = R^C × {0}``);
* ``"euclidean"`` (ablation): ``Φ = φ`` in ``R^C``;
* ``"hyperbolic"`` (ablation): ``Φ = (sinh|φ| φ/|φ|, cosh|φ|)`` on the hyperboloid
  ``{x : -x_C² + Σ_{i<C} x_i² = -1, x_C > 0}`` in ``R^{C+1}`` (Lorentz model; origin ``(0, …, 0, 1)``).

The embedded images are compared pixel by pixel through a residual vector ``R (B, M)`` whose
half squared norm is the similarity ``ε`` (lower = more similar; the LM solver minimises it):

* spherical: ``R = Φ_m - Φ_f`` (flattened), so ``½|R|² = Σ_ij (1 - Φ_m[i,j]ᵀ Φ_f[i,j]) = ε``
  exactly the seed's ``ε`` (both are unit vectors);
* euclidean: ``R = φ_m - φ_f``;
* hyperbolic: ``R_ij = d_H(Φ_m[i,j], Φ_f[i,j])``, the per-pixel geodesic distance.

Everything is built from plain differentiable ops (no fused attention kernels, no in-place
updates, no batch statistics), so reverse mode to any order and forward mode
(``torch.func.jvp``) both work through :meth:`SimilarityNet.embed` — the LM solver pushes
``∂DRR/∂δ`` through the network with ``jvp``. Each image is standardised to zero mean and unit
variance first, so X-ray and DRR intensity scales do not matter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EMBEDDINGS",
    "SimilarityConfig",
    "SimilarityNet",
    "sphere_exp",
    "lorentz_exp",
    "lorentz_distance",
    "check_images",
]

EMBEDDINGS = ("spherical", "euclidean", "hyperbolic")
_STD_EPS = 1e-6


def check_images(images: Tensor, name: str = "images", size: tuple[int, int] | None = None) -> None:
    """Raise ``ValueError`` unless ``images`` is a finite float ``(B, 1, H, W)`` tensor (of ``size``)."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        raise ValueError(
            f"{name} must be {size[0]}x{size[1]} pixels (the model's resolution), "
            f"got {images.shape[-2]}x{images.shape[-1]}"
        )
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        n = int((~torch.isfinite(images)).sum())
        raise ValueError(f"{name} contains {n} NaN or infinite pixel values")


def _taylor_cos_sinc(sq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``cos|φ|``, ``sin|φ|/|φ|`` and ``|φ|`` from ``sq = |φ|²``; finite derivatives at 0."""
    small = sq < 1e-4
    safe = torch.where(small, torch.ones_like(sq), sq)
    n = torch.sqrt(safe)
    cos = torch.where(small, 1 - sq / 2 + sq * sq / 24, torch.cos(n))
    sinc = torch.where(small, 1 - sq / 6 + sq * sq / 120, torch.sin(n) / n)
    norm = torch.where(small, torch.zeros_like(sq), n)
    return cos, sinc, norm


def sphere_exp(phi: Tensor, dim: int = 1) -> Tensor:
    """Exponential map at the north pole of ``S^C``: ``(…, C, …) -> (…, C+1, …)`` along ``dim``.

    ``EXP(φ) = (φ sin|φ|/|φ|, cos|φ|)``; unit norm; ``EXP(0) = N = (0, …, 0, 1)``; smooth at 0.
    """
    sq = (phi * phi).sum(dim, keepdim=True)
    cos, sinc, _ = _taylor_cos_sinc(sq)
    return torch.cat([phi * sinc, cos], dim)


def lorentz_exp(phi: Tensor, dim: int = 1) -> Tensor:
    """Exponential map at the origin of the hyperboloid: ``(…, C, …) -> (…, C+1, …)`` along ``dim``.

    ``EXP(φ) = (φ sinh|φ|/|φ|, cosh|φ|)`` (last coordinate time-like); smooth at 0.
    """
    sq = (phi * phi).sum(dim, keepdim=True)
    small = sq < 1e-4
    n = torch.sqrt(torch.where(small, torch.ones_like(sq), sq))
    cosh = torch.where(small, 1 + sq / 2 + sq * sq / 24, torch.cosh(n))
    sinhc = torch.where(small, 1 + sq / 6 + sq * sq / 120, torch.sinh(n) / n)
    return torch.cat([phi * sinhc, cosh], dim)


def lorentz_distance(x: Tensor, y: Tensor, dim: int = 1) -> Tensor:
    """Geodesic distance on the hyperboloid (reduces ``dim``), stable for nearby points.

    ``|x - y|²_L = 2 cosh d - 2 = 4 sinh²(d/2)``, so ``d = 2 asinh(|x - y|_L / 2)``; the
    Minkowski norm is clamped at 0 and its square root has gradient 0 (not NaN) at ``x = y``.
    """
    diff = x - y
    space, time = diff.narrow(dim, 0, diff.shape[dim] - 1), diff.narrow(dim, diff.shape[dim] - 1, 1)
    sq = ((space * space).sum(dim) - (time * time).sum(dim)).clamp_min(0.0)
    pos = sq > 0
    s = torch.where(
        pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq)
    )
    return 2 * torch.asinh(s / 2)


def _sincos_positions(h: int, w: int, dim: int, like: Tensor) -> Tensor:
    """Fixed 2-D sine-cosine position code ``(h·w, dim)`` (half the channels per axis)."""
    quarter = max(1, dim // 4)
    freq = torch.exp(
        -math.log(100.0) * torch.arange(quarter, dtype=like.dtype, device=like.device) / quarter
    )
    ys = torch.arange(h, dtype=like.dtype, device=like.device)[:, None].expand(h, w).reshape(-1, 1)
    xs = torch.arange(w, dtype=like.dtype, device=like.device)[None, :].expand(h, w).reshape(-1, 1)
    code = torch.cat(
        [torch.sin(ys * freq), torch.cos(ys * freq), torch.sin(xs * freq), torch.cos(xs * freq)], 1
    )
    if code.shape[1] < dim:
        code = F.pad(code, (0, dim - code.shape[1]))
    return code[:, :dim]


@dataclass(frozen=True)
class SimilarityConfig:
    """Architecture of :class:`SimilarityNet`.

    Attributes:
        embedding: ``"spherical"`` (seed), ``"euclidean"`` or ``"hyperbolic"``.
        channels: ``C``, the feature dimension per pixel (embedded dimension ``D = C + 1`` on the
            sphere / hyperboloid, ``C`` for Euclidean).
        stem_widths: output channels of the convolutional stem's stages; every stage but the
            first halves the resolution with a stride-2 convolution, so
            ``downsample = 2 ** (len(stem_widths) - 1)``.
        model_dim: token width of the transformer.
        depth: transformer blocks (0 = CNN only: the ablation "w/o E-CNN" is not this).
        heads: attention heads (must divide ``model_dim``).
        mlp_ratio: hidden width of the transformer MLP relative to ``model_dim``.
    """

    embedding: Literal["spherical", "euclidean", "hyperbolic"] = "spherical"
    channels: int = 16
    stem_widths: tuple[int, ...] = (16, 32, 48)
    model_dim: int = 48
    depth: int = 1
    heads: int = 4
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        object.__setattr__(self, "stem_widths", tuple(int(w) for w in self.stem_widths))
        if not self.stem_widths or any(w < 1 for w in self.stem_widths):
            raise ValueError(f"stem_widths must be positive, got {self.stem_widths}")
        for name in ("channels", "model_dim", "heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.model_dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide model_dim ({self.model_dim})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    @property
    def downsample(self) -> int:
        """Resolution factor between image and feature map."""
        return 2 ** (len(self.stem_widths) - 1)

    @property
    def embedded_dim(self) -> int:
        """``D``: channels of :meth:`SimilarityNet.embed`'s output."""
        return self.channels + (0 if self.embedding == "euclidean" else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stem_widths"] = list(self.stem_widths)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> "SimilarityConfig":
        return cls(**{**values, "stem_widths": tuple(values.get("stem_widths", cls.stem_widths))})


class _Block(nn.Module):
    """Pre-norm transformer block with explicit attention (forward-mode and 2nd-order safe)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, N, dim)
        b, n, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .reshape(b, n, 3, self.heads, d // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        att = torch.softmax((q @ k.transpose(-1, -2)) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class SimilarityNet(nn.Module):
    """Per-pixel embedding of images and the residual/similarity between two embeddings."""

    def __init__(self, config: SimilarityConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SimilarityConfig()
        layers: list[nn.Module] = []
        c_in = 1
        for i, width in enumerate(config.stem_widths):
            layers += [
                nn.Conv2d(c_in, width, 3, stride=1 if i == 0 else 2, padding=1),
                nn.GroupNorm(1, width),
                nn.GELU(),
            ]
            c_in = width
        self.stem = nn.Sequential(*layers)
        self.to_tokens = nn.Linear(c_in, config.model_dim)
        self.blocks = nn.ModuleList(
            _Block(config.model_dim, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.model_dim)
        self.head = nn.Linear(config.model_dim, config.channels)
        nn.init.normal_(self.head.weight, std=0.5 / math.sqrt(config.model_dim))
        nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------ embedding
    def features(self, images: Tensor) -> Tensor:
        """Tangent features ``φ (B, C, h, w)`` of images ``(B, 1, H, W)``, ``h = H / downsample``."""
        check_images(images)
        f = self.config.downsample
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(
                f"image size {images.shape[-2]}x{images.shape[-1]} must be divisible "
                f"by the similarity network's downsample factor {f}"
            )
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True)
        x = (images - mean) / (std + _STD_EPS)
        x = self.stem(x)
        b, c, h, w = x.shape
        tokens = self.to_tokens(x.flatten(2).transpose(1, 2))
        tokens = tokens + _sincos_positions(h, w, tokens.shape[-1], tokens)
        for block in self.blocks:
            tokens = block(tokens)
        phi = self.head(self.norm(tokens))  # (B, h*w, C)
        return phi.transpose(1, 2).reshape(b, self.config.channels, h, w)

    def embed(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embedded images ``(B, D, h, w)``: ``D = C + 1`` (spherical, hyperbolic) or ``C``.

        ``mask`` ``(B, 1, H, W)`` bool (True = valid): masked pixels are filled with the mean of
        the valid ones first, so that what the CT cannot explain does not set the features'
        normalisation (give them zero weight with :meth:`residual_weights`)."""
        if mask is not None:
            m = mask.to(images.dtype)
            fill = (images * m).sum(dim=(-2, -1), keepdim=True) / m.sum(
                dim=(-2, -1), keepdim=True
            ).clamp_min(1.0)
            images = images * m + fill * (1 - m)
        phi = self.features(images)
        if self.config.embedding == "spherical":
            return sphere_exp(phi, dim=1)
        if self.config.embedding == "hyperbolic":
            return lorentz_exp(phi, dim=1)
        return phi

    def residual_weights(self, mask: Tensor) -> Tensor:
        """Weights ``(B, M)`` in the layout of :meth:`residuals` for valid masks ``(B, 1, H, W)``:
        a feature pixel is valid when all the image pixels of its cell are."""
        f = self.config.downsample
        m = (
            (F.avg_pool2d(mask.to(torch.float32), f) > 0.999).float()
            if f > 1
            else mask.to(torch.float32)
        )
        if self.config.embedding != "hyperbolic":
            m = m.expand(-1, self.config.embedded_dim, -1, -1)
        return m.flatten(1)

    # ------------------------------------------------------------------ comparison
    def residuals(self, moving_embedded: Tensor, fixed_embedded: Tensor) -> Tensor:
        """Residual vector ``R (B, M)`` with ``½|R|² = ε`` (see the module docstring).

        ``moving_embedded``: ``(B, D, h, w)``; ``fixed_embedded``: ``(B, D, h, w)`` or
        ``(1, D, h, w)`` (broadcast). ``M = D·h·w`` (spherical, euclidean) or ``h·w`` (hyperbolic).
        """
        for name, e in (("moving_embedded", moving_embedded), ("fixed_embedded", fixed_embedded)):
            if not isinstance(e, Tensor) or e.dim() != 4 or e.shape[1] != self.config.embedded_dim:
                shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
                raise ValueError(
                    f"{name} must have shape (B, {self.config.embedded_dim}, h, w), got {shape}"
                )
        if moving_embedded.shape[-2:] != fixed_embedded.shape[-2:]:
            raise ValueError(
                f"embedded sizes differ: {tuple(moving_embedded.shape)} vs {tuple(fixed_embedded.shape)}"
            )
        b = max(moving_embedded.shape[0], fixed_embedded.shape[0])
        if self.config.embedding == "hyperbolic":
            r = lorentz_distance(moving_embedded, fixed_embedded, dim=1)
        else:
            r = moving_embedded - fixed_embedded
        return r.expand(b, *r.shape[1:]).reshape(b, -1)

    def similarity(self, moving: Tensor, fixed: Tensor) -> Tensor:
        """``ε (B,)`` between moving and fixed images ``(B, 1, H, W)`` (fixed may have B = 1)."""
        r = self.residuals(self.embed(moving), self.embed(fixed))
        return 0.5 * (r * r).sum(-1)

    def forward(self, moving: Tensor, fixed: Tensor) -> Tensor:
        """Same as :meth:`similarity`."""
        return self.similarity(moving, fixed)
