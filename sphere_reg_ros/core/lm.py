"""Levenberg–Marquardt pose refinement on image residuals, with the exact chained Jacobian.

Split like theseus's optimiser; this module is the orchestrator over scales:

* linearisation (:mod:`.lm_linearize`, with the batched building blocks in :mod:`.lm_steps`):
  render the DRR and its Jacobian at a pose, residuals ``r``, Jacobian ``J``, weights, cost and
  normal equations;
* damped solve and step acceptance (:mod:`.lm_damping`): ``(JᵀWJ + λD) s = −JᵀWR``, the gain
  ratio, λ and the step scale ``κ``;
* stopping (:mod:`.lm_stopping`): the convergence tests, each a :class:`~.result.Status`;
* one scale's iteration (:mod:`.lm_scale`); settings and result in :mod:`.lm_config`.

Model. A residual model (:class:`ResidualModel`) maps images to embeddings and pairs of
embeddings to residuals ``R (B, M)``; the cost is ``F = ½ Rᵀ W R`` (``W`` diagonal, default I;
with a robust kernel ``Σ wᵢ ρ(rᵢ)`` by IRLS). The Jacobian ``J = ∂R/∂δ`` (B, M, 6) is chained
exactly: ``DrrRenderer.render_with_jacobian`` gives ``∂DRR/∂δ`` (B, H·W, 6) and its six columns
are pushed through ``embed`` + ``residuals`` with forward-mode AD
(:func:`~.lm_steps.residual_jacobian`: ``torch.func.jvp`` vectorised over the six tangents).

Iteration. The Jacobian is rendered at every trial pose, so an accepted trial is already
linearised (the network's jvp runs for accepted trials only). Per scale the DRR sampling
window is held fixed (widened when a trial leaves it), so the cost is a smooth function of the
pose. Scales run coarse to fine, each with its own λ; a coarse scale stops at ``coarse_tol_factor``
times looser tolerances.

Parametrisation and signs. Poses are ``T_ct_from_carm`` (B, 4, 4), mm. The solver works in
scaled, centred increments ``s = (a, L·w)`` (both mm): a rotation ``w`` (rad) about the centre
``c`` (the CT's centre by default) and a translation ``a`` of that centre, ``L`` =
``rotation_scale_mm`` (a characteristic length, so that 1 mm of ``a`` and 1 mm of ``L·w`` move
the anatomy by about the same amount and one damping fits both). It equals the left increment
of the core's convention ``T <- se3_exp(δ) @ T`` with ``δ = (a + c × w, w) = P s`` (exactly:
``exp(Ad_G ξ) = G exp(ξ) G⁻¹`` for the translation ``G`` by ``c``), and ``J_s = J_δ P``.
Gauss–Newton on ``½|R + J s|²`` gives ``(JᵀWJ + λD) s = −JᵀW R``: the minus sign makes
``T <- se3_exp(P s) @ T`` decrease the cost. ``D`` is ``diag(JᵀWJ)`` (Marquardt, with Moré's
running maximum) or ``I`` (Levenberg). A step is accepted when the gain ratio
``ρ = (F(T) − F(T_new)) / (½ sᵀ(λ D s − g))`` exceeds ``eta``; λ follows Nielsen's rule, with a
floor after a rejection (``lambda_reject``), and a step scale ``κ`` lengthens steps whose gain
ratio shows the Gauss–Newton model too pessimistic (see :class:`LevenbergMarquardt`).

Stopping: see :mod:`.lm_stopping`. The pose returned is always the best accepted one.

Covariance: ``k · f · σ² (JᵀWJ)⁻¹`` with ``σ² = 2F/(M − 6)`` at the final pose of the finest
scale, mapped to the world increment ``δ = (v [mm], w [rad])``: ``P Σ_s Pᵀ``
(:func:`~.lm_steps.pose_covariance`). ``f`` corrects for residuals correlated between
neighbouring pixels (:func:`~.lm_steps.correlation_inflation`, ``M / f`` effective independent
residuals); ``k`` = ``covariance_scale``, calibrated on a validation benchmark against the true
errors (docs/TRUST.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from .drr import DrrRenderer
from .lm_config import LMConfig, LMResult
from .lm_damping import damped_solve, gain_ratio, update_lambda
from .lm_linearize import RECENT_RENDERS, Linearizer
from .lm_scale import ScaleRun, ScaleView, _total
from .lm_steps import (
    ResidualModel,
    increment_matrix,
    pose_covariance,
    put,
    residual_jacobian,
    resize_images,
    robust_cost,
    robust_spread,
    singular,
    valid_poses,
)
from .lm_stopping import SINGULAR_AT_END, final_status, input_status
from .result import Status

__all__ = [
    "ResidualModel",
    "LMConfig",
    "LMResult",
    "LevenbergMarquardt",
    "SolverView",
    "damped_solve",
    "gain_ratio",
    "update_lambda",
    "residual_jacobian",
    "resize_images",
    "increment_matrix",
    "robust_cost",
    "robust_spread",
]


@dataclass
class SolverView:
    """A further C-arm view of every element of a solve (biplane, multi-view): the solve's own
    ``renderers``/``fixed``/``mask`` are the first view. Its pose is ``T_ct_from_carm0 @ offset``
    (the first view's pose times ``T_carm0_from_carmk``); see :mod:`.lm_scale` for how the views'
    terms add up.

    Attributes:
        renderers: coarse → fine, as many as the first view's (same CT; its own detector).
        fixed: (B, 1, H, W) this view's images.
        offset: (B, 4, 4) or (4, 4) ``T_carm0_from_carmk`` (mm).
        mask: (B, 1, H, W) bool valid pixels, or None.
    """

    renderers: Sequence[DrrRenderer]
    fixed: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor | None = None

    def checked(self, n_scales: int, B: int, device, dtype) -> "SolverView":
        """This view on ``device`` with its offset as (B, 4, 4) float64; ValueError (naming what)
        for inconsistent shapes."""
        if len(self.renderers) != n_scales:
            raise ValueError(
                f"a view needs {n_scales} renderers like the first view, got {len(self.renderers)}"
            )
        fx = self.fixed
        if not (isinstance(fx, torch.Tensor) and fx.ndim == 4 and fx.shape[:2] == (B, 1)):
            raise ValueError(f"a view's fixed must be (B={B}, 1, H, W), got {tuple(fx.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(fx.shape):
            raise ValueError(f"a view's mask must be shaped like its fixed {tuple(fx.shape)}")
        off = torch.as_tensor(self.offset, dtype=torch.float64)
        if off.shape == (4, 4):
            off = off.expand(B, 4, 4)
        if off.shape != (B, 4, 4) or not bool(valid_poses(off).all()):
            raise ValueError(f"a view's offset must be rigid (4, 4) or (B={B}, 4, 4) transforms")
        return SolverView(
            self.renderers,
            fx.to(device, dtype),
            off.to(device).contiguous(),
            None if self.mask is None else self.mask.to(device).bool(),
        )


@dataclass
class _Batch:
    """A solve's per-element state across scales (B elements; float64 tensors on the device,
    ``iterations`` on the CPU)."""

    pose0: torch.Tensor  # (B, 4, 4) initial poses (identity where invalid)
    pose: torch.Tensor  # (B, 4, 4) current poses
    status: list[Status | None]
    message: list[str]
    cost: torch.Tensor = None  # (B,) cost at the last scale run
    initial_cost: torch.Tensor = None  # (B,) cost of the initial pose at the finest scale
    iterations: torch.Tensor = None  # (B,) long, over all scales
    H: torch.Tensor = None  # (B, 6, 6) JᵀWJ at the final pose of the finest scale
    M: torch.Tensor = None  # (B,) residuals that count
    inflation: torch.Tensor = None  # (B,) for correlated residuals
    history: list[list[dict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        B, device = self.pose.shape[0], self.pose.device
        self.cost = torch.full((B,), math.nan, dtype=torch.float64, device=device)
        self.initial_cost = self.cost.clone()
        self.iterations = torch.zeros(B, dtype=torch.long)
        self.H = torch.full((B, 6, 6), math.nan, dtype=torch.float64, device=device)
        self.M = torch.zeros(B, dtype=torch.float64, device=device)
        self.inflation = torch.ones(B, dtype=torch.float64, device=device)
        self.history = [[] for _ in range(B)]

    def live_idx(self) -> torch.Tensor:
        """(n,) long: the elements without a status yet."""
        live = [i for i, s in enumerate(self.status) if s is None]
        return torch.tensor(live, dtype=torch.long, device=self.pose.device)


class LevenbergMarquardt:
    """Batched, coarse-to-fine LM on the residuals of a :class:`ResidualModel`.

    Step scale. Gauss–Newton's ``JᵀWJ`` overestimates the curvature when the residuals stay
    large at the optimum (an X-ray is never exactly a DRR: the second-order term
    ``Σ rᵢ∇²rᵢ`` is then negative) and under IRLS (the reweighted quadratic majorises a robust
    cost), so accepted steps show gain ratios ρ ≈ 2 with λ at its floor, and plain LM crawls.
    Each element therefore carries a scalar ``κ ∈ [1, max_step_scale]``: the model Hessian is
    ``JᵀWJ/κ`` (the step is ``κ`` times the LM step, the predicted reduction ``κ`` times
    Nielsen's). After an accepted step ``κ`` moves to the minimum of the parabola through the
    cost along that step, ``κ / (2 − ρ)`` (at most ×2 or ÷2 per step); a rejection halves it. For
    a zero-residual problem ρ ≈ 1 and ``κ`` stays 1. A registration that starts at the pose where
    a recent one ended (tracking) starts with the ``κ`` that one ended with.

    Args:
        model: the residual model (learned similarity or :mod:`.residuals`); may also offer
            ``weights(emb_fixed) -> (B, M)`` (the diagonal of ``W``, ≥ 0).
        config: :class:`LMConfig`.
    """

    def __init__(self, model: ResidualModel, config: LMConfig = LMConfig()) -> None:
        if not isinstance(model, ResidualModel):
            raise ValueError(f"model must have embed() and residuals(), got {type(model).__name__}")
        self.model = model
        self.config = config
        # renders, windows and costs at poses, with the last few renders (tracking reuses them)
        self.linearizer = Linearizer(model, config)
        # the step scale κ each element ended with: (renderer, final pose, κ). A registration that
        # starts where one ended (tracking) starts with that κ: the curvature mismatch κ measures
        # belongs to the similarity and the anatomy, which barely change from frame to frame.
        self._recent_kappa: list[tuple] = []

    def _start_kappa(self, renderer: DrrRenderer, pose: torch.Tensor) -> torch.Tensor:
        """Step scale ``κ`` (n,) to start from: the one a recent registration ended with at exactly
        this pose and renderer (tracking), else 1."""
        kappa = torch.ones(pose.shape[0], dtype=torch.float64, device=pose.device)
        if self.config.unrolled:
            return kappa
        p = pose.detach().to(renderer.dtype)
        for k in range(p.shape[0]):
            for r, q, kap in reversed(self._recent_kappa):
                if r is renderer and torch.equal(q, p[k]):
                    kappa[k] = kap
                    break
        return kappa

    def _keep_kappa(self, renderer: DrrRenderer, pose: torch.Tensor, kappa: torch.Tensor) -> None:
        """Remember the step scales ``kappa`` (n,) the elements ended a scale with at ``pose``."""
        if self.config.unrolled:
            return
        done = [
            (renderer, pose[k].detach().to(renderer.dtype), float(kappa[k]))
            for k in range(len(kappa))
        ]
        self._recent_kappa = [*self._recent_kappa, *done][-RECENT_RENDERS:]

    def score(
        self,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        poses: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> tuple[torch.Tensor, float | None]:
        """Costs ``(K,)`` of poses ``(K, 4, 4)`` against one image ``(1, 1, H, W)`` with one
        robust kernel scale (:meth:`.lm_linearize.Linearizer.score`)."""
        return self.linearizer.score(renderer, fixed, poses, mask, scale)

    def normalised_cost(
        self,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        pose: torch.Tensor,
        mask: torch.Tensor | None = None,
        offset_mm: float = 5.0,
        center: torch.Tensor | np.ndarray | None = None,
    ) -> float:
        """The cost at ``pose`` (4, 4) over the mean cost at reference offsets around it: about 1
        when the image does not pin the pose down, well below 1 at a distinct minimum
        (:meth:`.lm_linearize.Linearizer.normalised_cost`)."""
        return self.linearizer.normalised_cost(renderer, fixed, pose, mask, offset_mm, center)

    def solve(
        self,
        renderers: Sequence[DrrRenderer],
        fixed: torch.Tensor,
        init_pose: torch.Tensor,
        center: torch.Tensor | np.ndarray | None = None,
        mask: torch.Tensor | None = None,
        views: Sequence[SolverView] = (),
    ) -> LMResult:
        """Refine ``init_pose`` (B, 4, 4) against ``fixed`` (B, 1, H, W), coarse to fine.

        ``renderers`` (coarse → fine) share the CT and the detector (``CarmGeometry.resized``);
        the fixed images are area-resampled to each renderer's size. ``center`` (3,) world mm is
        the rotation centre of the increments (default: the CT's centre). ``mask`` (B, 1, H, W)
        bool marks the valid pixels of ``fixed`` (:mod:`.masks`; None: all valid): masked pixels
        get zero weight at every scale and take no part in the model's normalisation. Elements with a
        non-finite image or an invalid pose get ``Status.INVALID_INPUT``; nothing is raised
        for them. Raises ValueError only for inconsistent shapes of the whole call.

        ``views``: further C-arm views of each element (:class:`SolverView`); ``init_pose`` and
        the result are the first view's ``T_ct_from_carm0``; the covariance is that of the shared
        pose. No views: the single-view solve.
        """
        cfg = self.config
        t_start = time.perf_counter()
        if not renderers:
            raise ValueError("at least one renderer is needed")
        if not (
            isinstance(init_pose, torch.Tensor)
            and init_pose.ndim == 3
            and init_pose.shape[1:] == (4, 4)
        ):
            raise ValueError(
                f"init_pose must be a (B, 4, 4) tensor, got {getattr(init_pose, 'shape', type(init_pose))}"
            )
        B = init_pose.shape[0]
        if not (isinstance(fixed, torch.Tensor) and fixed.ndim == 4 and fixed.shape[:2] == (B, 1)):
            raise ValueError(
                f"fixed must be a (B, 1, H, W) tensor with B={B}, got {getattr(fixed, 'shape', type(fixed))}"
            )
        if mask is not None and (
            not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(fixed.shape)
        ):
            raise ValueError(
                f"mask must be a tensor shaped like fixed {tuple(fixed.shape)}, "
                f"got {getattr(mask, 'shape', type(mask))}"
            )
        finest = renderers[-1]
        dtype, device = finest.dtype, finest.device
        views = [v.checked(len(renderers), B, device, dtype) for v in views]
        grad_ctx = torch.enable_grad() if cfg.unrolled else torch.no_grad()
        with grad_ctx:
            mask = None if mask is None else mask.to(device).bool()
            first = SolverView(renderers, fixed.to(device, dtype), None, mask)
            return self._solve([first, *views], init_pose.to(device), center, t_start)

    def _solve(self, views: list[SolverView], init_pose, center, t_start) -> LMResult:
        """The solve of :meth:`solve` over checked views (the first view's offset is None)."""
        renderers = views[0].renderers
        device = views[0].fixed.device
        c = renderers[-1]._center if center is None else torch.as_tensor(center)
        c = torch.as_tensor(c, dtype=torch.float64, device=device).reshape(3)
        P = increment_matrix(c.cpu(), self.config.rotation_scale_mm).to(device)
        b, views = self._screen(views, init_pose)
        if len(renderers) > 1:
            self._finest_initial_cost(b, views)
        for si in range(len(renderers)):
            idx = b.live_idx()
            if not idx.numel():
                break
            fin = si == len(renderers) - 1
            self._run_scale(b, views, si, idx, P, c, (si == 0, fin, len(renderers)), t_start)
        return LMResult(
            pose=b.pose,
            covariance=self._finish(b, P),
            cost=b.cost,
            initial_cost=b.initial_cost,
            iterations=b.iterations,
            status=b.status,
            message=b.message,
            history=b.history,
            time_s=time.perf_counter() - t_start,
        )

    @staticmethod
    def _screen(
        views: list[SolverView], init_pose: torch.Tensor
    ) -> tuple[_Batch, list[SolverView]]:
        """The batch state with INVALID_INPUT for non-finite images (in any view) and invalid
        poses, and the views with those elements' images zeroed."""
        device = init_pose.device
        img_ok = views[0].fixed.new_ones(init_pose.shape[0], dtype=torch.bool)
        for v in views:
            img_ok = img_ok & torch.isfinite(v.fixed).flatten(1).all(-1)
        pose_ok = valid_poses(init_pose)
        outcomes = [input_status(bool(img_ok[i]), bool(pose_ok[i])) for i in range(len(img_ok))]
        views = [
            replace(
                v,
                fixed=torch.where(img_ok[:, None, None, None], v.fixed, torch.zeros_like(v.fixed)),
            )
            for v in views
        ]
        pose0 = torch.where(
            pose_ok[:, None, None],
            init_pose.to(torch.float64),
            torch.eye(4, dtype=torch.float64, device=device),
        )
        b = _Batch(
            pose0=pose0,
            pose=pose0.clone(),
            status=[None if o is None else o[0] for o in outcomes],
            message=["" if o is None else o[1] for o in outcomes],
        )
        return b, views

    def _finest_initial_cost(self, b: _Batch, views: list[SolverView]) -> None:
        """The cost of the initial poses at the finest scale (what the final cost compares
        with) when the solve starts on a coarser one (the views' costs summed)."""
        idx = b.live_idx()
        if not idx.numel():
            return
        lin, costs = self.linearizer, []
        for v in self.scale_views(views, -1, idx):
            ef, wf, mf = v.fixed
            pose = v.at(b.pose[idx])
            img, _ = lin.render(v.renderer, lin.window(v.renderer, pose), pose, jacobian=False)
            costs.append(lin.cost(img, ef, wf, mask=mf)[0])
        c0 = _total(costs)
        b.initial_cost = put(b.initial_cost, idx, c0.detach())

    def scale_views(self, views: list[SolverView], si: int, idx: torch.Tensor) -> list[ScaleView]:
        """The :class:`ScaleView` of each view at scale ``si`` for the elements ``idx``."""
        out = []
        for v in views:
            renderer = v.renderers[si]
            fx = self.linearizer.fixed_embedding(
                renderer, v.fixed[idx], None if v.mask is None else v.mask[idx]
            )
            out.append(ScaleView(renderer, fx, None if v.offset is None else v.offset[idx]))
        return out

    def _run_scale(self, b, views, si, idx, P, c, which, t_start) -> None:
        """Run scale ``si`` for the live elements ``idx`` and fold its outcome into ``b``;
        ``which`` = (first, final, number of scales)."""
        first, final, n_scales = which
        renderer = views[0].renderers[si]
        hist = [b.history[i] for i in idx.tolist()]
        run = ScaleRun(
            self.linearizer,
            self.scale_views(views, si, idx),
            b.pose0[idx],
            P,
            c,
            final,
            hist,
            b.iterations,
            idx,
            t_start,
        )
        out = run.run(b.pose[idx], self._start_kappa(renderer, b.pose[idx]), first)
        self._keep_kappa(renderer, out["pose"], out["kappa"])
        b.pose = put(b.pose, idx, out["pose"])
        b.cost = put(b.cost, idx, out["cost"].detach())
        if first and n_scales == 1:
            b.initial_cost = put(b.initial_cost, idx, out["initial_cost"].detach())
        for k, i in enumerate(idx.tolist()):
            st, msg = out["status"][k], out["message"][k]
            if st is not None and (final or not st.usable):
                b.status[i], b.message[i] = st, msg
        if final:
            b.H = put(b.H, idx, out["H"].detach())
            b.M = put(b.M, idx, out["M"])
            b.inflation = put(b.inflation, idx, out["inflation"])

    def _finish(self, b: _Batch, P: torch.Tensor) -> torch.Tensor:
        """Final statuses (:func:`~.lm_stopping.final_status`) and covariances (B, 6, 6) (NaN
        for unusable elements and singular final normal equations)."""
        cfg = self.config
        B = len(b.status)
        cov = torch.full((B, 6, 6), math.nan, dtype=torch.float64, device=b.pose.device)
        for i in range(B):
            b.status[i], b.message[i] = final_status(b.status[i], b.message[i], b.history[i])
            if not b.status[i].usable or not torch.isfinite(b.H[i]).all():
                continue
            if bool(singular(b.H[i : i + 1], cfg.rcond)[0]):
                b.status[i], b.message[i] = SINGULAR_AT_END
                continue
            cov[i] = pose_covariance(
                b.H[i], b.cost[i], b.M[i], b.inflation[i], P, cfg.covariance_scale
            )
        return cov
