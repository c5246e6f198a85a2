"""Damped solve and step acceptance of the LM solver (:mod:`.lm`): pure batched functions of
the normal equations, the damping and the gain ratio, testable alone.

* :func:`initial_damping`: ``D``, ``λ`` and λ's unit at the start of a scale;
* :func:`damped_solve`: ``(H + λ diag(D)) s = −g`` by Cholesky per element;
* :func:`gain_ratio`: actual over predicted reduction (with the step scale ``κ``);
* :func:`update_lambda`: Nielsen's damping rule; :func:`update_damping` adds the floor after a
  rejection;
* :func:`update_step_scale`: the step scale ``κ`` after a trial.

Shapes: ``B`` elements, 6 increment coordinates; everything float64.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: lm_config imports lm_steps, which re-exports this module
    from .lm_config import LMConfig

__all__ = [
    "initial_damping",
    "damped_solve",
    "gain_ratio",
    "update_lambda",
    "update_damping",
    "update_step_scale",
]


def initial_damping(
    diag_h: torch.Tensor, config: LMConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``D`` (B, 6), ``λ`` (B,) and λ's unit (B,) at the start of a scale, from ``diag(JᵀWJ)``
    ``diag_h`` (B, 6).

    Marquardt: ``D = diag(JᵀWJ)``, ``λ = lambda_init`` clamped to its bounds, unit 1. Levenberg:
    ``D = 1``, ``λ = lambda_init · max diag(JᵀWJ)``, unit ``mean diag(JᵀWJ)``. The unit scales
    the floor ``lambda_reject`` after a rejection (:func:`update_damping`).
    """
    n = diag_h.shape[0]
    if config.damping == "marquardt":
        D = diag_h.clone()
        lam = torch.full((n,), config.lambda_init, dtype=torch.float64, device=diag_h.device)
        return D, lam.clamp(config.lambda_min, config.lambda_max), torch.ones_like(lam)
    return torch.ones_like(diag_h), config.lambda_init * diag_h.amax(-1), diag_h.mean(-1)


def damped_solve(
    H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor, D: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``(H + λ diag(D)) s = −g`` per element: ``H`` (B, 6, 6), ``g`` (B, 6), ``λ`` (B,),
    ``D`` (B, 6). Returns ``s`` (B, 6) (zero where it failed) and ``ok`` (B,) bool."""
    A = H + lam[:, None, None] * torch.diag_embed(D)
    L, info = torch.linalg.cholesky_ex(A)
    ok = info == 0
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    L = torch.where(ok[:, None, None], L, eye)
    s = torch.cholesky_solve(-g[..., None], L)[..., 0]
    ok = ok & torch.isfinite(s).all(-1)
    return torch.where(ok[:, None], s, torch.zeros_like(s)), ok


def gain_ratio(
    cost: torch.Tensor,
    new_cost: torch.Tensor,
    s: torch.Tensor,
    g: torch.Tensor,
    lam: torch.Tensor,
    D: torch.Tensor,
    kappa: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gain ratio ``ρ`` (B,) = actual / predicted reduction, and the predicted reduction (B,)
    ``½ sᵀ(λ D s − g)`` of the Gauss–Newton model for the plain LM step ``s`` (B, 6); ρ = −inf
    where that prediction is not > 0 or the new cost is not finite.

    With a step scale ``kappa`` (B,) the step taken was ``κ s`` and the model's Hessian is
    ``(JᵀWJ + λD)/κ``, whose predicted reduction is ``κ`` times the one returned; ρ divides by it.
    """
    pred = 0.5 * (s * (lam[:, None] * D * s - g)).sum(-1)
    ok = (pred > 0) & torch.isfinite(new_cost)
    den = torch.where(ok, pred, torch.ones_like(pred))
    if kappa is not None:
        den = kappa * den
    rho = torch.where(ok, (cost - new_cost) / den, torch.full_like(pred, -math.inf))
    return rho, pred


def update_lambda(
    lam: torch.Tensor,
    nu: torch.Tensor,
    rho: torch.Tensor,
    accepted: torch.Tensor,
    lam_min: float,
    lam_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nielsen's rule: accepted ``λ ← λ·max(1/3, 1 − (2ρ − 1)³)``, ``ν ← 2``; rejected
    ``λ ← λ·ν``, ``ν ← 2ν``. λ is clamped to ``[lam_min, lam_max]``."""
    factor = torch.clamp(1 - (2 * rho.clamp(-1e3, 1e3) - 1) ** 3, min=1.0 / 3.0)
    new_lam = torch.where(accepted, lam * factor, lam * nu).clamp(lam_min, lam_max)
    new_nu = torch.where(accepted, torch.full_like(nu, 2.0), nu * 2)
    return new_lam, new_nu


def update_damping(
    lam: torch.Tensor,
    nu: torch.Tensor,
    rho: torch.Tensor,
    accepted: torch.Tensor,
    lam_unit: torch.Tensor,
    config: LMConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """λ and ν (B,) after a trial: :func:`update_lambda` within ``[lambda_min, lambda_max]``, and
    after a rejection at least ``lambda_reject · lam_unit``: a rejected step with λ still
    negligible against D would come back unchanged, so λ jumps."""
    new_lam, new_nu = update_lambda(lam, nu, rho, accepted, config.lambda_min, config.lambda_max)
    new_lam = torch.where(
        accepted, new_lam, torch.maximum(new_lam, config.lambda_reject * lam_unit)
    )
    return new_lam, new_nu


def update_step_scale(
    kappa: torch.Tensor, rho: torch.Tensor, accepted: torch.Tensor, max_step_scale: float
) -> torch.Tensor:
    """Step scale ``κ`` (B,) after a trial with gain ratio ``rho`` (B,).

    Along the step the cost is ``f0 − a·t + c·t²/2`` (``t`` in units of the plain LM step); the
    step ``t = κ`` gave ``ρ = 2 − κ·c/a``, so the best scale is ``t* = a/c = κ / (2 − ρ)``. An
    accepted trial moves ``κ`` there by at most a factor 2; a rejection halves it. The result is
    clamped to ``[1, max_step_scale]``.
    """
    k_fit = kappa / (2.0 - rho.clamp(max=1.5))
    k_new = torch.where(
        accepted, torch.minimum(torch.maximum(k_fit, kappa / 2), kappa * 2), kappa / 2
    )
    return k_new.clamp(1.0, max_step_scale)
