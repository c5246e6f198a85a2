"""Training losses: the regressor's geodesic loss and the similarity's gradient matching.

Pose frames. Both losses measure poses in the isocentric frame of
:func:`sphere_reg_ros.core.regressor.to_isocentric` when ``center`` is given (the default in
training): ``P = Trans(-c) T Trans(0, 0, sod)``. There a pose error is a rotation about the
isocentre plus a shift, both of the size they have at the anatomy, and the SO(4) embedding's
translation column ``t/(2f)`` stays small (``|t| <~ 70 mm``), where it is orthogonal to
``O(t²/f²)`` and hence bi-invariant to that order (``test_losses`` checks left and right
invariance). In raw ``T_ct_from_carm`` the translation is the source position, ~650 mm from
the isocentre, and the SO(4) approximation would be poor.

Pose increments. The similarity's pose gradient is taken with respect to a left increment
rotating about the isocentre, ``T <- Trans(c) exp(δ) Trans(-c) T`` with ``δ = (v [mm], w [rad])``
(a left increment of the isocentric pose). Rotation and translation parts are then normalised
separately, so their units do not matter.

Gradient matching (docs/ARCHITECTURE.md, Method; the authors' SOPI/ProST recipe): with the DRR ``I(δ)`` of the
moving pose,

    ∂ε/∂δ = J_DRRᵀ ∇_I ε,       J_DRR = ∂I/∂δ   (exact, DrrRenderer.render_with_jacobian)

``J_DRR`` depends on the CT and the pose only, not on the network's weights, so
``∂/∂weights (∂ε/∂δ) = J_DRRᵀ ∂/∂weights (∇_I ε)``: back-propagating through ``∇_I ε`` computed
with ``create_graph=True`` and contracting with a fixed ``J_DRR`` gives exactly the gradient of
second-order autograd through the renderer, at the cost of one Jacobian per moving pose (which
can be rendered once and reused with fresh augmentations of the fixed image).
``test_losses.py`` checks both the first- and the second-order equality against autograd
through diffdrr.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sphere_reg_ros.core.geometry import geodesic_se3, geodesic_so4, hat, se3_exp
from sphere_reg_ros.core.regressor import to_isocentric
from sphere_reg_ros.core.similarity import SimilarityNet

__all__ = [
    "REGRESSOR_LOSSES",
    "DEFAULT_LENGTH_MM",
    "pose_distance",
    "regressor_loss",
    "geodesic_pose_gradient",
    "centered_jacobian",
    "similarity_pose_gradient",
    "gradient_matching_loss",
    "gradient_alignment",
]

REGRESSOR_LOSSES = ("so4", "se3")
#: Length (mm) weighing translation against rotation: the SO(4) ``f`` (1 rad ~ 2f mm of shift)
#: and the se(3) length scale (1 rad ~ this many mm). ~ the landmarks' distance to the isocentre.
DEFAULT_LENGTH_MM = 100.0


def pose_distance(
    T_a: Tensor,
    T_b: Tensor,
    kind: Literal["so4", "se3"] = "so4",
    *,
    center=None,
    sod_mm: float | None = None,
    length_mm: float = DEFAULT_LENGTH_MM,
) -> Tensor:
    """Geodesic distance ``(B,)`` between poses ``(B, 4, 4)``.

    ``kind="so4"``: ``|M(P_a) - M(P_b)|_F`` with ``f = length_mm`` (core.geometry.geodesic_so4);
    ``kind="se3"``: ``|(v / (2 length_mm), w)|`` of ``LOG(P_a⁻¹ P_b)`` (core.geometry.geodesic_se3;
    the factor 2 puts both on the same scale: 1 rad ~ 2f mm). ``P = to_isocentric(T)`` when
    ``center`` (and ``sod_mm``) are given, else ``P = T``.
    """
    if kind not in REGRESSOR_LOSSES:
        raise ValueError(f"kind must be one of {REGRESSOR_LOSSES}, got {kind!r}")
    if center is not None:
        if sod_mm is None:
            raise ValueError("sod_mm is needed with center (the isocentric frame)")
        T_a, T_b = to_isocentric(T_a, center, sod_mm), to_isocentric(T_b.to(T_a), center, sod_mm)
    if kind == "so4":
        return geodesic_so4(T_a, T_b.to(T_a), f=length_mm)
    return geodesic_se3(T_a, T_b.to(T_a), length_scale=2 * length_mm)


def regressor_loss(
    T_pred: Tensor,
    T_true: Tensor,
    kind: Literal["so4", "se3"] = "so4",
    *,
    center=None,
    sod_mm: float | None = None,
    length_mm: float = DEFAULT_LENGTH_MM,
) -> Tensor:
    """Mean geodesic distance (scalar) between predicted and true poses ``(B, 4, 4)``; 0 at the truth.

    See :func:`pose_distance` for ``kind``, ``center``, ``sod_mm`` and ``length_mm``.
    """
    for name, T in (("T_pred", T_pred), ("T_true", T_true)):
        if not isinstance(T, Tensor) or T.dim() != 3 or T.shape[1:] != (4, 4):
            raise ValueError(
                f"{name} must be a (B, 4, 4) tensor, got "
                f"{tuple(T.shape) if isinstance(T, Tensor) else type(T).__name__}"
            )
    if T_pred.shape[0] != T_true.shape[0]:
        raise ValueError(f"batch sizes differ: {T_pred.shape[0]} vs {T_true.shape[0]}")
    return pose_distance(
        T_pred, T_true, kind, center=center, sod_mm=sod_mm, length_mm=length_mm
    ).mean()


def _centered_increment(delta: Tensor, center, like: Tensor) -> Tensor:
    """``Trans(c) exp(δ) Trans(-c)`` ``(B, 4, 4)``: a left increment rotating about ``c``."""
    c = torch.as_tensor(
        np.asarray(center, dtype=np.float64), dtype=like.dtype, device=like.device
    ).reshape(3)
    E = se3_exp(delta.to(like.dtype))
    R, t = E[:, :3, :3], E[:, :3, 3]
    out = E.clone()
    out[:, :3, 3] = t + c - (R @ c)
    return out


def geodesic_pose_gradient(
    T: Tensor,
    T_true: Tensor,
    kind: Literal["so4", "se3"] = "so4",
    *,
    center,
    sod_mm: float,
    length_mm: float = DEFAULT_LENGTH_MM,
) -> Tensor:
    """``∂ d(Trans(c) exp(δ) Trans(-c) T, T_true) / ∂δ`` at ``δ = 0``: ``(B, 6)`` float64, ``(v, w)``.

    The seed's target ``∂L_geo(θ, θ_gt)/∂θ``; it points away from the truth (0 at the truth).
    """
    T64, Tt64 = T.detach().to(torch.float64), T_true.detach().to(torch.float64)
    with torch.enable_grad():
        delta = torch.zeros(
            T64.shape[0], 6, dtype=torch.float64, device=T64.device, requires_grad=True
        )
        moved = _centered_increment(delta, center, T64) @ T64
        d = pose_distance(moved, Tt64, kind, center=center, sod_mm=sod_mm, length_mm=length_mm)
        (g,) = torch.autograd.grad(d.sum(), delta)
    return g


def centered_jacobian(jacobian: Tensor, center) -> Tensor:
    """Jacobian ``(B, P, 6)`` for world left increments -> for increments rotating about ``center``.

    ``exp(δ_w) = Trans(c) exp(δ_c) Trans(-c)`` to first order when ``v_w = v_c + c × w``, so
    ``J_c = J_w A`` with ``A = [[I, hat(c)], [0, I]]``.
    """
    c = torch.as_tensor(
        np.asarray(center, dtype=np.float64), dtype=jacobian.dtype, device=jacobian.device
    ).reshape(3)
    jv, jw = jacobian[..., :3], jacobian[..., 3:]
    return torch.cat([jv, jw + jv @ hat(c)], -1)


def similarity_pose_gradient(
    net: SimilarityNet, moving: Tensor, fixed: Tensor, jacobian: Tensor, create_graph: bool = True
) -> tuple[Tensor, Tensor]:
    """``(∂ε/∂δ (B, 6), ε (B,))`` by ``J_DRRᵀ ∇_I ε`` (see the module docstring).

    ``moving``, ``fixed``: ``(B, 1, H, W)``; ``jacobian``: ``(B, H·W, 6)``, ``∂moving/∂δ`` for the
    increment of choice (e.g. :func:`centered_jacobian` of ``render_with_jacobian``'s).
    With ``create_graph=True`` the result is differentiable with respect to the net's weights.
    """
    if jacobian.dim() != 3 or jacobian.shape[:2] != (
        moving.shape[0],
        moving.shape[-2] * moving.shape[-1],
    ):
        raise ValueError(
            f"jacobian must be (B, H*W, 6) for moving {tuple(moving.shape)}, got {tuple(jacobian.shape)}"
        )
    with torch.enable_grad():
        moving = moving.detach().requires_grad_(True)
        eps = net.similarity(moving, fixed)
        (g_img,) = torch.autograd.grad(eps.sum(), moving, create_graph=create_graph)
    g = torch.einsum("bp,bpk->bk", g_img.flatten(1), jacobian.to(g_img.dtype))
    return g, eps


def _unit(x: Tensor, eps: float) -> Tensor:
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def gradient_matching_loss(net_grad: Tensor, target_grad: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over the batch of ``|n(g_v) - n(t_v)|² + |n(g_w) - n(t_w)|²`` (scalar, in [0, 8]).

    ``n(x) = x / |x|``; ``g = net_grad``, ``t = target_grad`` ``(B, 6)`` = (translation, rotation)
    parts. Zero when the similarity's pose gradient points along the geodesic's; 2 per part for
    orthogonal, 4 per part for opposite directions. ``eps`` guards zero gradients.
    """
    if net_grad.shape != target_grad.shape or net_grad.dim() != 2 or net_grad.shape[1] != 6:
        raise ValueError(
            f"gradients must both be (B, 6), got {tuple(net_grad.shape)} and {tuple(target_grad.shape)}"
        )
    t = target_grad.to(net_grad)
    sq_v = (_unit(net_grad[:, :3], eps) - _unit(t[:, :3], eps)).pow(2).sum(-1)
    sq_w = (_unit(net_grad[:, 3:], eps) - _unit(t[:, 3:], eps)).pow(2).sum(-1)
    return (sq_v + sq_w).mean()


def gradient_alignment(
    net_grad: Tensor, target_grad: Tensor, eps: float = 1e-12
) -> tuple[float, float]:
    """Mean cosines (translation, rotation) between the two gradients (1 = aligned), for reports."""
    t = target_grad.to(net_grad)
    cv = (_unit(net_grad[:, :3], eps) * _unit(t[:, :3], eps)).sum(-1).mean()
    cw = (_unit(net_grad[:, 3:], eps) * _unit(t[:, 3:], eps)).sum(-1).mean()
    return float(cv), float(cw)
