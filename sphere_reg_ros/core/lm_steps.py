"""Building blocks of the LM solver's linearisation (:mod:`.lm`): pure batched functions,
testable alone. The damped solve and step acceptance are in :mod:`.lm_damping` (re-exported here).

* :func:`residual_jacobian`: residuals ``R (B, M)`` and ``J = ∂R/∂s (B, M, K)`` by forward-mode AD
  of ``embed`` + ``residuals``, given the image Jacobian ``∂I/∂s`` (the K columns ride along the
  batch in one ``torch.func.jvp``);
* :func:`robust_cost`: cost and IRLS weights (least squares, Cauchy, Huber, Geman–McClure, Tukey);
* :func:`normal_equations`: ``JᵀWJ`` and ``JᵀWR``; :func:`singular`: their conditioning;
* :func:`embed`, :func:`mask_weights`: embeddings and residual weights under a valid mask;
* :func:`increment_matrix`: scaled centred increments → the core's world increments;
* :func:`displacement`: how far a pose moved from the initial one;
* :func:`correlation_inflation`, :func:`pose_covariance`: the covariance at the final pose;
* :func:`resize_images`: field-of-view preserving image resampling.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .geometry import hat, se3_inverse, so3_log
from .lm_damping import damped_solve, gain_ratio, update_lambda

ROBUST_KERNELS = ("none", "cauchy", "huber", "geman-mcclure", "tukey")

__all__ = [
    "ResidualModel",
    "ROBUST_KERNELS",
    "embed",
    "mask_weights",
    "increment_matrix",
    "resize_images",
    "residual_jacobian",
    "damped_solve",
    "gain_ratio",
    "update_lambda",
    "robust_cost",
    "robust_spread",
    "normal_equations",
    "singular",
    "displacement",
    "pose_covariance",
    "correlation_inflation",
    "valid_poses",
    "put",
]


@runtime_checkable
class ResidualModel(Protocol):
    """What the solver needs from a similarity: ``embed`` and ``residuals`` (cost ``½|R|²``)."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of images ``(B, 1, H, W)`` (any shape with leading batch)."""

    def residuals(self, emb_moving: torch.Tensor, emb_fixed: torch.Tensor) -> torch.Tensor:
        """Residuals ``(B, M)`` between moving and fixed embeddings."""


def increment_matrix(center: torch.Tensor, length_mm: float) -> torch.Tensor:
    """``P`` (6, 6) with ``δ_world = P s`` for the scaled centred increment ``s = (a, L w)``."""
    c = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    P = torch.eye(6, dtype=torch.float64)
    P[:3, 3:] = hat(c) / length_mm
    P[3:, 3:] /= length_mm
    return P


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Images ``(B, C, h, w)`` resampled to ``(height, width)`` over the same field of view
    (pixel centres of both grids at their physical positions): the mean over each new pixel's
    footprint for integer shrink factors, antialiased bilinear otherwise (area pooling with
    non-integer factors shifts pixel centres and biases the pose by millimetres)."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if h % height == 0 and w % width == 0:
        return F.avg_pool2d(images, (h // height, w // width))
    return F.interpolate(
        images,
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=h > height or w > width,
    )


def embed(
    model: ResidualModel, images: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``model.embed(images)``, with the valid mask ``(B, 1, H, W)`` when one is given (a model
    that takes masks has ``embed(images, mask=...)`` and ``residual_weights(mask)``)."""
    return model.embed(images) if mask is None else model.embed(images, mask=mask)


def mask_weights(model: ResidualModel, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The model's residual weights ``(B, M)`` for valid masks ``(B, 1, H, W)``; None without
    a mask. Raises ValueError for a model that cannot take masks."""
    if mask is None:
        return None
    fn = getattr(model, "residual_weights", None)
    if not callable(fn):
        raise ValueError(f"{type(model).__name__} cannot take masks (no residual_weights)")
    return fn(mask)


def residual_jacobian(
    model: ResidualModel,
    images: torch.Tensor,
    emb_fixed: torch.Tensor,
    image_jacobian: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals ``(B, M)`` and their Jacobian ``(B, M, K)`` by forward-mode AD.

    ``image_jacobian`` (B, C·H·W, K) holds ``∂image/∂s`` (images ``(B, C, H, W)``, channel-major
    as ``DrrRenderer.render_with_jacobian`` gives them); its K columns are the tangents of one
    ``torch.func.jvp`` of ``embed`` + ``residuals``, vectorised with ``torch.func.vmap`` (the
    primal is computed once). Models with operations vmap does not support fall back to
    stacking the K tangents along the batch (then ``embed`` must treat batch elements
    independently, e.g. eval mode).
    """
    B, C, H, W = images.shape
    K = image_jacobian.shape[-1]
    tangents = image_jacobian.permute(2, 0, 1).reshape(K, B, C, H, W).to(images.dtype).contiguous()

    def f(x: torch.Tensor) -> torch.Tensor:
        return model.residuals(embed(model, x, mask), emb_fixed)

    try:
        r, jr = torch.func.vmap(lambda t: torch.func.jvp(f, (images,), (t,)), out_dims=(None, 0))(
            tangents
        )
        return r, jr.permute(1, 2, 0)
    except (RuntimeError, ValueError, NotImplementedError):  # an op without a vmap rule
        pass
    stacked = images.expand(K, *images.shape).reshape(K * B, C, H, W).contiguous()
    emb_f = emb_fixed.expand(K, *emb_fixed.shape).reshape(K * B, *emb_fixed.shape[1:])
    m_k = None if mask is None else mask.expand(K, *mask.shape).reshape(K * B, *mask.shape[1:])
    r, jr = torch.func.jvp(
        lambda x: model.residuals(embed(model, x, m_k), emb_f),
        (stacked,),
        (tangents.reshape(K * B, C, H, W),),
    )
    M = r.shape[-1]
    return r[:B], jr.reshape(K, B, M).permute(1, 2, 0)


def normal_equations(
    J: torch.Tensor, r: torch.Tensor, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``H = JᵀWJ`` (B, K, K) and ``g = JᵀWR`` (B, K), float64, of the Jacobian ``J`` (B, M, K),
    residuals ``r`` (B, M) and the diagonal of ``W`` ``w`` (B, M) (None: identity)."""
    J64, r64 = J.to(torch.float64), r.to(torch.float64)
    Jw = J64 if w is None else J64 * w.to(torch.float64)[..., None]
    return Jw.transpose(-1, -2) @ J64, (Jw * r64[..., None]).sum(-2)


def robust_cost(
    r: torch.Tensor, w: torch.Tensor | None, kind: str = "none", scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cost (n,) ``Σ w ρ(r)`` and IRLS weights (n, M) (``w · ρ'(r)/r``) of residuals ``r`` (n, M).

    ``ρ(r) = ½r²`` (none), ``½s² log(1 + r²/s²)`` (Cauchy), Huber with threshold ``s``,
    ``½s² r²/(s² + r²)`` (Geman–McClure, redescending) or Tukey's biweight
    ``s²/6 (1 − (1 − r²/s²)³)`` for ``|r| < s``, ``s²/6`` beyond (redescending, zero weight
    past ``s``); ``scale`` (n,) is ``s``. Weights are None for plain least squares without ``w``.
    """
    r64 = r.to(torch.float64)
    r2 = r64 * r64
    w64 = None if w is None else w.to(torch.float64)
    if kind == "none":
        rho, irls = 0.5 * r2, None
    else:
        s = scale.to(torch.float64)[:, None].clamp_min(1e-30)
        if kind == "cauchy":
            rho, irls = 0.5 * s * s * torch.log1p(r2 / (s * s)), 1.0 / (1.0 + r2 / (s * s))
        elif kind == "huber":
            a = r64.abs()
            rho = torch.where(a <= s, 0.5 * r2, s * a - 0.5 * s * s)
            irls = torch.where(a <= s, torch.ones_like(a), s / a.clamp_min(1e-300))
        elif kind == "geman-mcclure":
            d = s * s + r2
            rho, irls = 0.5 * s * s * r2 / d, (s * s / d) ** 2
        elif kind == "tukey":
            u = (1.0 - r2 / (s * s)).clamp_min(0.0)
            rho, irls = s * s / 6.0 * (1.0 - u**3), u * u
        else:
            raise ValueError(f"unknown robust kernel {kind!r}")
    cost = (rho if w64 is None else w64 * rho).sum(-1)
    weights = irls if w64 is None else (w64 if irls is None else w64 * irls)
    return cost, weights


def robust_spread(r: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """1.4826 · median |r| per element (n,): the residuals' spread, robust to outliers; with
    weights ``w`` (n, M) over the residuals of non-zero weight only."""
    a = r.detach().to(torch.float64).abs()
    if w is not None:
        a = torch.where(w.detach() > 0, a, torch.nan)
        return (1.4826 * torch.nanmedian(a, dim=-1).values).nan_to_num(1e-12).clamp_min(1e-12)
    return 1.4826 * a.median(dim=-1).values.clamp_min(1e-12)


def correlation_inflation(
    r: torch.Tensor, W: torch.Tensor | None, max_correlation: float = 0.95
) -> torch.Tensor:
    """Variance inflation (n,) of a least-squares fit whose residuals ``r`` (n, M) are correlated
    between neighbouring pixels: ``((1 + ρ) / (1 − ρ))²``, ``ρ`` the weighted lag-1
    autocorrelation of the residuals in memory order (horizontally adjacent pixels of the
    flattened residual maps), clipped to ``[0, max_correlation]``, for a separable first-order
    autoregressive field with the same correlation along columns. ``M / inflation`` is the
    effective number of independent residuals; 1 for independent ones."""
    r64 = r.detach().to(torch.float64)
    w = torch.ones_like(r64) if W is None else W.detach().to(torch.float64).clamp_min(0)
    a, b = r64[:, :-1] * w[:, :-1].sqrt(), r64[:, 1:] * w[:, 1:].sqrt()
    num = (a * b).sum(-1)
    den = (0.5 * (a * a + b * b)).sum(-1).clamp_min(1e-300)
    rho = (num / den).nan_to_num(0.0).clamp(0.0, max_correlation)
    return ((1 + rho) / (1 - rho)) ** 2


def pose_covariance(
    H: torch.Tensor,
    cost: float,
    n_residuals: float,
    inflation: float,
    P: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """Covariance (6, 6) of the world increment ``δ = (v [mm], w [rad])`` at the final pose:
    ``P Σ_s Pᵀ`` with ``Σ_s = k · f · σ² H⁻¹`` of the scaled increments, ``σ² = 2F/(M − 6)``
    (``F`` = ``cost``, ``M`` = ``n_residuals`` that count), ``f`` = ``inflation``
    (:func:`correlation_inflation`), ``k`` = ``scale``; ``H`` (6, 6) = ``JᵀWJ``, ``P`` (6, 6)
    from :func:`increment_matrix`. Symmetrised."""
    sigma2 = 2.0 * float(cost) / max(float(n_residuals) - 6, 1)
    cov_s = scale * float(inflation) * sigma2 * torch.linalg.inv(H)
    cov_w = P @ cov_s @ P.T
    return 0.5 * (cov_w + cov_w.T)


def displacement(
    pose: torch.Tensor, pose0: torch.Tensor, center: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacement (B,) of the point ``center`` (3,) (mm) and rotation angle (B,) (rad) of
    ``pose`` (B, 4, 4) relative to ``pose0`` (B, 4, 4)."""
    Dm = pose.detach() @ se3_inverse(pose0.detach())
    moved = (Dm[:, :3, :3] @ center[:, None])[..., 0] + Dm[:, :3, 3] - center
    return moved.norm(dim=-1), so3_log(Dm[:, :3, :3]).norm(dim=-1)


def singular(H: torch.Tensor, rcond: float) -> torch.Tensor:
    """(B,) bool: ``H`` (B, 6, 6) is numerically singular (after Jacobi normalisation)."""
    d = torch.diagonal(H, dim1=-2, dim2=-1)
    dmax = d.amax(-1, keepdim=True)
    bad = (
        ~torch.isfinite(H).all(-1).all(-1)
        | (d <= 1e-14 * dmax.clamp_min(1e-300)).any(-1)
        | (dmax[:, 0] <= 0)
    )
    ds = torch.where(bad[:, None], torch.ones_like(d), d).rsqrt()
    Hn = (
        ds[:, :, None]
        * torch.where(bad[:, None, None], torch.eye(6, dtype=H.dtype, device=H.device), H)
        * ds[:, None, :]
    )
    ev = torch.linalg.eigvalsh(0.5 * (Hn + Hn.transpose(-1, -2)))
    return bad | (ev[:, 0] <= rcond * ev[:, -1])


def valid_poses(pose: torch.Tensor) -> torch.Tensor:
    """(B,) bool: finite rigid transforms (orthonormal rotation, det +1, last row 0 0 0 1)."""
    p = pose.detach().to(torch.float64)
    finite = torch.isfinite(p).all(-1).all(-1)
    p = torch.where(finite[:, None, None], p, torch.eye(4, dtype=p.dtype, device=p.device))
    R = p[:, :3, :3]
    orth = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=p.dtype, device=p.device)).abs().amax(
        (-1, -2)
    ) < 1e-3
    last = (p[:, 3] - torch.tensor([0, 0, 0, 1.0], dtype=p.dtype, device=p.device)).abs().amax(
        -1
    ) < 1e-6
    return finite & orth & last & (torch.linalg.det(R) > 0)


def put(x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Out-of-place ``x[idx] = values`` (autograd-safe)."""
    return x.index_put((idx,), values.to(x.dtype)) if idx.numel() else x
