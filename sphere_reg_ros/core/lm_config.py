"""Settings and result of the Levenberg–Marquardt solver of :mod:`.lm` (see there for the method)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .lm_steps import ROBUST_KERNELS
from .result import RegistrationResult, Status

__all__ = ["LMConfig", "LMResult"]


@dataclass(frozen=True)
class LMConfig:
    """Solver settings.

    Attributes:
        max_iterations: iteration cap per scale.
        step_tol_mm, step_tol_rad: stop when a step moves the centre by less than ``step_tol_mm``
            and rotates by less than ``step_tol_rad``.
        cost_tol: stop when an accepted step lowers the cost by less than this fraction.
        coarse_tol_factor: tolerances are multiplied by this on all but the finest scale.
        damping: ``"marquardt"`` (D = diag(JᵀWJ), scale-free λ) or ``"levenberg"`` (D = I in
            the scaled increments; λ starts at ``lambda_init · max diag(JᵀWJ)``).
        lambda_init, lambda_min, lambda_max: damping start and bounds (relative, see above).
        eta: smallest gain ratio that accepts a step.
        max_rejections: consecutive rejected steps after which a scale stops (no decrease found).
        rotation_scale_mm: ``L`` of the scaled increment (mm per rad).
        max_translation_mm, max_rotation_rad: moving the centre / rotating further than this from
            the initial pose counts as divergence.
        window_margin_mm: depth margin of the DRR sampling window held fixed during a scale.
        rcond: reciprocal condition number of the normalised JᵀWJ below which the system
            counts as singular.
        robust: ``"none"`` (least squares), ``"cauchy"``, ``"huber"``, ``"geman-mcclure"`` or
            ``"tukey"`` (see :func:`~.lm_steps.robust_cost`): a robust kernel on each
            residual, by iteratively reweighted least squares (weights from the residuals at each
            linearisation; costs and gain ratios use the robust cost).
        robust_scale: kernel scale in units of the residuals' robust spread (1.4826·median|r|,
            fixed per element at the start of each scale).
        max_step_scale: upper bound of the step scale ``κ`` (see :class:`LevenbergMarquardt`);
            1 gives plain LM.
        lambda_reject: after a rejected step λ is at least this (relative to D; for Levenberg
            damping times the mean of diag(JᵀWJ)), so the next trial step really differs: from
            λ ≈ 1e-6 Nielsen's doubling would need ~20 rejections to change the step.
        unrolled: keep the autograd graph through all iterations (differentiable LM); the pose's
            image dependence enters through the exact first-order DRR Jacobian.
        covariance_scale: factor on the covariance after the correction for correlated residuals
            (:func:`~.lm_steps.correlation_inflation`): the registration error of an X-ray is
            mostly model mismatch, not pixel noise, and this factor is calibrated on a
            validation benchmark so that the 95 % ellipsoid covers about 95 % of the true errors.
    """

    max_iterations: int = 20
    step_tol_mm: float = 0.02
    step_tol_rad: float = 1e-4
    cost_tol: float = 1e-4
    coarse_tol_factor: float = 10.0
    damping: str = "marquardt"
    lambda_init: float = 1e-3
    lambda_min: float = 1e-9
    lambda_max: float = 1e9
    eta: float = 1e-3
    max_rejections: int = 6
    rotation_scale_mm: float = 100.0
    max_translation_mm: float = 300.0
    max_rotation_rad: float = 1.2
    window_margin_mm: float = 60.0
    rcond: float = 1e-10
    robust: str = "none"
    robust_scale: float = 2.0
    max_step_scale: float = 16.0
    lambda_reject: float = 0.1
    unrolled: bool = False
    covariance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.damping not in ("marquardt", "levenberg"):
            raise ValueError(f"damping must be 'marquardt' or 'levenberg', got {self.damping!r}")
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 0):
            raise ValueError(f"max_iterations must be an int >= 0, got {self.max_iterations!r}")
        for name in (
            "step_tol_mm",
            "step_tol_rad",
            "cost_tol",
            "lambda_init",
            "lambda_min",
            "lambda_max",
            "rotation_scale_mm",
            "max_translation_mm",
            "max_rotation_rad",
            "coarse_tol_factor",
        ):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if not 0 <= self.eta < 1:
            raise ValueError(f"eta must be in [0, 1), got {self.eta}")
        if self.robust not in ROBUST_KERNELS:
            raise ValueError(
                f"robust must be one of {', '.join(ROBUST_KERNELS)}, got {self.robust!r}"
            )
        if not (math.isfinite(self.lambda_reject) and self.lambda_reject >= 0):
            raise ValueError(f"lambda_reject must be finite and >= 0, got {self.lambda_reject}")
        if not (math.isfinite(self.max_step_scale) and self.max_step_scale >= 1):
            raise ValueError(f"max_step_scale must be finite and >= 1, got {self.max_step_scale}")
        if not (math.isfinite(self.robust_scale) and self.robust_scale > 0):
            raise ValueError(f"robust_scale must be finite and > 0, got {self.robust_scale}")
        if not (math.isfinite(self.covariance_scale) and self.covariance_scale > 0):
            raise ValueError(
                f"covariance_scale must be finite and > 0, got {self.covariance_scale}"
            )
        if self.lambda_min > self.lambda_max:
            raise ValueError("lambda_min must not exceed lambda_max")


@dataclass
class LMResult:
    """Batched solver output (B elements); see :meth:`to_results` for per-image results."""

    pose: torch.Tensor  # (B, 4, 4) T_ct_from_carm, mm (graph kept when unrolled)
    covariance: torch.Tensor  # (B, 6, 6) of δ = (v mm, w rad), CT world
    cost: torch.Tensor  # (B,) final cost at the finest scale
    initial_cost: torch.Tensor  # (B,) cost of the initial pose at the finest scale
    iterations: torch.Tensor  # (B,) iterations over all scales
    status: list[Status]
    message: list[str]
    history: list[list[dict]]
    time_s: float = 0.0

    def to_results(
        self, timings: Sequence[dict[str, float]] | None = None
    ) -> list[RegistrationResult]:
        """One :class:`RegistrationResult` per element (poses and covariances as float64 numpy)."""
        pose = self.pose.detach().to("cpu", torch.float64).numpy()
        cov = self.covariance.detach().to("cpu", torch.float64).numpy()
        out = []
        for i in range(len(self.status)):
            tim = dict(timings[i]) if timings is not None else {"lm": self.time_s}
            out.append(
                RegistrationResult(
                    pose=pose[i],
                    covariance=cov[i],
                    cost=float(self.cost[i]),
                    initial_cost=float(self.initial_cost[i]),
                    iterations=int(self.iterations[i]),
                    status=self.status[i],
                    message=self.message[i],
                    timings=tim,
                    history=self.history[i],
                )
            )
        return out
