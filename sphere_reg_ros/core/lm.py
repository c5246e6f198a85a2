"""Levenberg–Marquardt pose refinement on image residuals, with the exact chained Jacobian.

Split like theseus: :meth:`LevenbergMarquardt.linearize` (residuals ``r`` and Jacobian ``J`` at
the current poses), :func:`~.lm_steps.damped_solve` (the damped normal equations) and
:func:`~.lm_steps.gain_ratio` / :func:`~.lm_steps.update_lambda` (step acceptance per batch
element); the building blocks live in :mod:`.lm_steps`, the settings and result in
:mod:`.lm_config`, the loop here.

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

Stopping, per element: a step below ``step_tol_mm`` / ``step_tol_rad`` or an accepted step that
lowers the cost by less than ``cost_tol`` (relative) → CONVERGED; ``max_rejections`` rejections
in a row or λ at ``lambda_max`` → CONVERGED (no further decrease found); any of these before a
single step was accepted (over all scales) → NO_PROGRESS (the start was not improved: a flat or
uninformative cost, or a start already at the minimum); the iteration cap of the last
scale → MAX_ITERATIONS; moving more than ``max_translation_mm`` / ``max_rotation_rad`` from the
initial pose → DIVERGED; singular normal equations → SINGULAR; a non-finite image, pose or initial
cost → INVALID_INPUT. The pose returned is always the best accepted one.

Covariance: ``k · f · σ² (JᵀWJ)⁻¹`` with ``σ² = 2F/(M − 6)`` at the final pose of the finest
scale, mapped to the world increment ``δ = (v [mm], w [rad])``: ``P Σ_s Pᵀ``. ``f`` corrects for
residuals correlated between neighbouring pixels (:func:`~.lm_steps.correlation_inflation`,
``M / f`` effective independent residuals); ``k`` = ``covariance_scale``, calibrated on a
validation benchmark against the true errors (docs/TRUST.md).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np
import torch

from .drr import DrrRenderer
from .geometry import se3_exp, se3_inverse, se3_log, so3_log
from .lm_config import LMConfig, LMResult
from .lm_steps import (
    ResidualModel,
    correlation_inflation,
    damped_solve,
    embed,
    gain_ratio,
    increment_matrix,
    mask_weights,
    normal_equations,
    put,
    residual_jacobian,
    resize_images,
    robust_cost,
    robust_spread,
    singular,
    update_lambda,
    valid_poses,
)
from .masks import resize_mask
from .result import Status

__all__ = [
    "ResidualModel",
    "LMConfig",
    "LMResult",
    "LevenbergMarquardt",
    "damped_solve",
    "gain_ratio",
    "update_lambda",
    "residual_jacobian",
    "resize_images",
    "increment_matrix",
    "robust_cost",
    "robust_spread",
]

log = logging.getLogger(__name__)


#: Renders (with Jacobian) the solver keeps for a tracking registration's start.
_RECENT_RENDERS = 4


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
        # the last few renders with their Jacobian: (renderer, window, pose, image, jacobian). A
        # DRR and its Jacobian depend on the pose and the CT only, not on the X-ray, so a tracking
        # registration that starts where the previous one ended reuses its last render.
        self._recent: list[tuple] = []
        # the step scale κ each element ended with: (renderer, final pose, κ). A registration that
        # starts where one ended (tracking) starts with that κ: the curvature mismatch κ measures
        # belongs to the similarity and the anatomy, which barely change from frame to frame.
        self._recent_kappa: list[tuple] = []

    # ------------------------------------------------------------------ pieces
    def _weights(
        self, emb_fixed: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Diagonal of ``W`` (n, M): the model's own weights times the mask's (None: all 1)."""
        fn = getattr(self.model, "weights", None)
        w = fn(emb_fixed) if callable(fn) else None
        wm = mask_weights(self.model, mask)
        if wm is None:
            return w
        wm = wm.to(emb_fixed.dtype)
        return wm if w is None else w * wm

    def _fixed_embedding(
        self, renderer: DrrRenderer, fixed: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The fixed images ``(n, 1, H, W)`` at ``renderer``'s size: embeddings, the diagonal of ``W``
        and the valid mask resized alike (None without a mask)."""
        g = renderer.geometry
        fx = resize_images(fixed, g.height, g.width)
        m = None if mask is None else resize_mask(mask, g.height, g.width)
        emb = embed(self.model, fx, m)
        return emb, self._weights(emb, m), m

    def _window(
        self,
        renderer: DrrRenderer,
        pose: torch.Tensor,
        extra: tuple | None = None,
        margin_mm: float | None = None,
    ) -> tuple:
        """Sampling window covering the CT for ``pose`` (and ``extra``) plus a depth margin
        (``config.window_margin_mm`` unless given: the margin lets the pose move during a scale)."""
        lo, hi = renderer.window(pose.detach().to(renderer.dtype))
        if extra is not None:
            lo, hi = min(lo, extra[0]), max(hi, extra[1])
        m = (
            self.config.window_margin_mm if margin_mm is None else margin_mm
        ) / renderer.geometry.sdd
        return (max(lo - m, 0.0), min(hi + m, 1.0))

    @staticmethod
    def _covers(window: tuple, renderer: DrrRenderer, pose: torch.Tensor) -> bool:
        if not len(pose):
            return True
        lo, hi = renderer.window(pose.detach().to(renderer.dtype))
        return lo >= window[0] - 1e-9 and hi <= window[1] + 1e-9

    def _render(
        self, renderer: DrrRenderer, window: tuple, pose: torch.Tensor, jacobian: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (n, C, H, W) and ``∂image/∂δ`` (n, C·H·W, 6) (world increments) or None; C is
        the model's ``drr_channels`` (default 1)."""
        p = pose.detach().to(renderer.dtype)
        # e.g. whole DRR + bone DRR; a renderer without the channel gives the DRR alone (the
        # model then fits without it)
        channels = (
            getattr(self.model, "drr_channels", 1) > 1 and getattr(renderer, "n_channels", 1) > 1
        )
        if not (jacobian or self.config.unrolled):
            return (
                renderer.render_channels(p, window=window)
                if channels
                else renderer(p, window=window)
            ), None
        img, jac = (
            renderer.render_with_jacobian(p, window=window, channels=channels)
            if channels
            else renderer.render_with_jacobian(p, window=window)
        )
        if not (jacobian or self.config.unrolled):
            return img, None
        if self.config.unrolled:  # exact first-order dependence on the pose (straight-through)
            xi = se3_log(pose @ se3_inverse(pose.detach())).to(jac.dtype)
            img = img.detach() + (jac @ xi[..., None]).view_as(img)
        else:
            self._recent = [
                *self._recent[-(_RECENT_RENDERS - 1) :],
                (renderer, window, p, img, jac),
            ]
        return img, jac

    def _start_render(
        self, renderer: DrrRenderer, pose: torch.Tensor
    ) -> tuple[tuple, torch.Tensor, torch.Tensor]:
        """Window, image and Jacobian at the start pose: a recent render of exactly this pose with
        this renderer when there is one (tracking), else a new one."""
        if not self.config.unrolled:
            p = pose.detach().to(renderer.dtype)
            for r, window, q, img, jac in reversed(self._recent):
                if r is renderer and q.shape == p.shape and torch.equal(q, p):
                    return window, img, jac
        window = self._window(renderer, pose)
        img, jd = self._render(renderer, window, pose, True)
        return window, img, jd

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

    def linearize(
        self,
        image: torch.Tensor,
        image_jacobian: torch.Tensor,
        emb_fixed: torch.Tensor,
        P: torch.Tensor,
        weights: torch.Tensor | None,
        scale: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cost (n,), residuals (n, M), Jacobian (n, M, 6) in the scaled increments, and the
        normal equations ``H = JᵀWJ`` (n, 6, 6), ``g = JᵀWR`` (n, 6) (float64); ``W`` includes
        the robust kernel's IRLS weights (kernel scale ``scale`` (n,), see :func:`robust_cost`)."""
        r, J = residual_jacobian(
            self.model, image, emb_fixed, image_jacobian @ P.to(image_jacobian), mask
        )
        if scale is None and self.config.robust != "none":
            scale = self.config.robust_scale * robust_spread(r, weights)
        cost, W = robust_cost(r, weights, self.config.robust, scale)
        H, g = normal_equations(J, r, W)
        return cost, r, J, H, g

    def _residuals(
        self, image: torch.Tensor, emb_fixed: torch.Tensor, weights, scale=None, mask=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.model.residuals(embed(self.model, image, mask), emb_fixed)
        if scale is None and self.config.robust != "none":
            scale = self.config.robust_scale * robust_spread(r, weights)
        return robust_cost(r, weights, self.config.robust, scale)[0], r

    @torch.no_grad()
    def score(
        self,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        poses: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> tuple[torch.Tensor, float | None]:
        """Costs ``(K,)`` of ``K`` poses ``(K, 4, 4)`` against one image ``fixed`` ``(1, 1, H, W)`` on one
        renderer, all with the same robust kernel scale (given, or the one of the first pose's
        residuals, which is returned), so that they compare (e.g. the ends of several starts:
        each LM run sets its own scale)."""
        emb, w, m = self._fixed_embedding(
            renderer,
            fixed.to(renderer.device, renderer.dtype),
            None if mask is None else mask.to(renderer.device).bool(),
        )
        poses = poses.to(renderer.device)
        # the poses are fixed: the window need only cover the CT (no margin for motion)
        img, _ = self._render(
            renderer, self._window(renderer, poses, margin_mm=0.0), poses, jacobian=False
        )
        k = poses.shape[0]
        r = self.model.residuals(
            embed(self.model, img, None if m is None else m.expand(k, -1, -1, -1)),
            emb.expand(k, *emb.shape[1:]),
        )
        wk = None if w is None else w.expand(k, -1)
        if self.config.robust != "none" and scale is None:
            scale = float(
                self.config.robust_scale * robust_spread(r[:1], None if wk is None else wk[:1])[0]
            )
        s = None if scale is None else torch.full((k,), scale, dtype=torch.float64, device=r.device)
        return robust_cost(r, wk, self.config.robust, s)[0], scale

    def normalised_cost(
        self,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        pose: torch.Tensor,
        mask: torch.Tensor | None = None,
        offset_mm: float = 5.0,
        center: torch.Tensor | np.ndarray | None = None,
    ) -> float:
        """The cost at ``pose`` (4, 4) over the mean cost at reference offsets around it, all with
        one kernel scale (:meth:`score`): ``pose`` moved by ``± offset_mm`` along the C-arm's x and y
        axes and rotated by ``± offset_mm / rotation_scale_mm`` about its x, y and z axes through
        ``center`` (the CT's centre by default); depth is left out (an X-ray barely shows it).

        About 1 when the image does not pin the pose down (noise, a blank or unrelated image), well
        below 1 at a distinct minimum; a ratio, so comparable across residual models, resolutions
        and masks. NaN when a cost is not finite.
        """
        from .geometry import make_pose, so3_exp

        T = torch.as_tensor(pose, dtype=torch.float64).reshape(4, 4).cpu()
        c = (
            torch.as_tensor(renderer._center if center is None else center, dtype=torch.float64)
            .reshape(3)
            .cpu()
        )
        a = offset_mm / self.config.rotation_scale_mm
        axes = T[:3, :3].T  # the C-arm's x, y, z axes in world coordinates (rows)
        moves = [
            make_pose(torch.eye(3, dtype=torch.float64), sign * offset_mm * axes[k]) @ T
            for k in (0, 1)
            for sign in (1.0, -1.0)
        ]
        R = so3_exp(torch.stack([sign * a * axes[k] for k in (0, 1, 2) for sign in (1.0, -1.0)]))
        turns = make_pose(R, c - R @ c) @ T
        poses = torch.stack([T, *moves, *turns]).to(renderer.device)
        costs, _ = self.score(renderer, fixed[:1], poses, None if mask is None else mask[:1])
        costs = costs.detach().cpu()
        ratio = float(costs[0] / costs[1:].mean().clamp_min(1e-300))
        return ratio if torch.isfinite(costs).all() else math.nan

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        renderers: Sequence[DrrRenderer],
        fixed: torch.Tensor,
        init_pose: torch.Tensor,
        center: torch.Tensor | np.ndarray | None = None,
        mask: torch.Tensor | None = None,
    ) -> LMResult:
        """Refine ``init_pose`` (B, 4, 4) against ``fixed`` (B, 1, H, W), coarse to fine.

        ``renderers`` (coarse → fine) share the CT and the detector (``CarmGeometry.resized``);
        the fixed images are area-resampled to each renderer's size. ``center`` (3,) world mm is
        the rotation centre of the increments (default: the CT's centre). ``mask`` (B, 1, H, W)
        bool marks the valid pixels of ``fixed`` (:mod:`.masks`; None: all valid): masked pixels
        get zero weight at every scale and take no part in the model's normalisation. Elements with a
        non-finite image or an invalid pose get ``Status.INVALID_INPUT``; nothing is raised
        for them. Raises ValueError only for inconsistent shapes of the whole call.
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
        grad_ctx = torch.enable_grad() if cfg.unrolled else torch.no_grad()
        with grad_ctx:
            mask = None if mask is None else mask.to(device).bool()
            return self._solve(
                renderers, fixed.to(device, dtype), init_pose.to(device), center, t_start, mask
            )

    def _solve(self, renderers, fixed, init_pose, center, t_start, mask=None) -> LMResult:
        cfg = self.config
        B = init_pose.shape[0]
        device = fixed.device
        L = cfg.rotation_scale_mm
        c = renderers[-1]._center if center is None else torch.as_tensor(center)
        c = torch.as_tensor(c, dtype=torch.float64, device=device).reshape(3)
        P = increment_matrix(c.cpu(), L).to(device)
        status: list[Status | None] = [None] * B
        message = [""] * B
        history: list[list[dict]] = [[] for _ in range(B)]
        img_ok = torch.isfinite(fixed).flatten(1).all(-1)
        pose_ok = valid_poses(init_pose)
        for i in range(B):
            if not bool(img_ok[i]):
                status[i], message[i] = Status.INVALID_INPUT, "image contains NaN or inf"
            elif not bool(pose_ok[i]):
                status[i], message[i] = (
                    Status.INVALID_INPUT,
                    "initial pose is not a finite rigid transform",
                )
        fixed = torch.where(img_ok[:, None, None, None], fixed, torch.zeros_like(fixed))
        pose0 = torch.where(
            pose_ok[:, None, None],
            init_pose.to(torch.float64),
            torch.eye(4, dtype=torch.float64, device=device),
        )
        pose = pose0.clone()
        nan = torch.full((B,), math.nan, dtype=torch.float64, device=device)
        cost, initial_cost = nan.clone(), nan.clone()
        iterations = torch.zeros(B, dtype=torch.long)
        H_final = torch.full((B, 6, 6), math.nan, dtype=torch.float64, device=device)
        M_final = torch.zeros(B, dtype=torch.float64, device=device)  # residuals that count
        inflation = torch.ones(B, dtype=torch.float64, device=device)  # for correlated residuals

        def live_idx() -> torch.Tensor:
            return torch.tensor(
                [i for i in range(B) if status[i] is None], dtype=torch.long, device=device
            )

        # cost of the initial pose at the finest scale (what `cost` is compared with)
        idx = live_idx()
        if len(renderers) > 1 and idx.numel():
            fin = renderers[-1]
            ef, wf, mf = self._fixed_embedding(fin, fixed[idx], None if mask is None else mask[idx])
            img, _ = self._render(fin, self._window(fin, pose[idx]), pose[idx], jacobian=False)
            c0, _ = self._residuals(img, ef, wf, mask=mf)
            initial_cost = put(initial_cost, idx, c0.detach())

        for si, renderer in enumerate(renderers):
            final = si == len(renderers) - 1
            idx = live_idx()
            if not idx.numel():
                break
            emb_f, w, ms = self._fixed_embedding(
                renderer, fixed[idx], None if mask is None else mask[idx]
            )
            out = self._run_scale(
                renderer,
                emb_f,
                w,
                pose[idx],
                pose0[idx],
                P,
                c,
                final,
                t_start,
                [history[i] for i in idx.tolist()],
                iterations,
                idx,
                si == 0,
                ms,
            )
            pose = put(pose, idx, out["pose"])
            cost = put(cost, idx, out["cost"].detach())
            if si == 0 and len(renderers) == 1:
                initial_cost = put(initial_cost, idx, out["initial_cost"].detach())
            for k, i in enumerate(idx.tolist()):
                st, msg = out["status"][k], out["message"][k]
                if st is not None and (final or not st.usable):
                    status[i], message[i] = st, msg
            if final:
                H_final = put(H_final, idx, out["H"].detach())
                M_final = put(M_final, idx, out["M"])
                inflation = put(inflation, idx, out["inflation"])

        cov = torch.full((B, 6, 6), math.nan, dtype=torch.float64, device=device)
        for i in range(B):
            if status[i] is None:  # no scale ran for it (max_iterations = 0 on every scale)
                status[i], message[i] = Status.MAX_ITERATIONS, "iteration cap reached"
            if status[i] is Status.CONVERGED and not any(
                h["accepted"] and h["iteration"] > 0 for h in history[i]
            ):
                # a tolerance met before any step was accepted: the start was not improved
                status[i], message[i] = (
                    Status.NO_PROGRESS,
                    f"no step lowered the cost ({message[i]})",
                )
            if not status[i].usable or not torch.isfinite(H_final[i]).all():
                continue
            if bool(singular(H_final[i : i + 1], cfg.rcond)[0]):
                status[i], message[i] = (
                    Status.SINGULAR,
                    "normal equations are singular at the final pose",
                )
                continue
            sigma2 = 2.0 * float(cost[i]) / max(float(M_final[i]) - 6, 1)
            cov_s = (
                cfg.covariance_scale * float(inflation[i]) * sigma2 * torch.linalg.inv(H_final[i])
            )
            cov_w = P @ cov_s @ P.T
            cov[i] = 0.5 * (cov_w + cov_w.T)
        return LMResult(
            pose=pose,
            covariance=cov,
            cost=cost,
            initial_cost=initial_cost,
            iterations=iterations,
            status=status,
            message=message,
            history=history,
            time_s=time.perf_counter() - t_start,
        )

    # ------------------------------------------------------------------ one scale
    @staticmethod
    def _displacement(
        pose: torch.Tensor, pose0: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre displacement (mm) and rotation angle (rad) of ``pose`` relative to ``pose0``."""
        Dm = pose.detach() @ se3_inverse(pose0.detach())
        moved = (Dm[:, :3, :3] @ c[:, None])[..., 0] + Dm[:, :3, 3] - c
        return moved.norm(dim=-1), so3_log(Dm[:, :3, :3]).norm(dim=-1)

    def _run_scale(
        self,
        renderer,
        emb_f,
        w,
        pose,
        pose0,
        P,
        c,
        final,
        t_start,
        hist,
        iterations,
        idx_global,
        first,
        m=None,
    ) -> dict:
        cfg = self.config
        n, L = pose.shape[0], cfg.rotation_scale_mm
        f = 1.0 if final else cfg.coarse_tol_factor
        tol_mm, tol_rad, cost_tol = cfg.step_tol_mm * f, cfg.step_tol_rad * f, cfg.cost_tol * f
        status: list[Status | None] = [None] * n
        message = [""] * n
        height = renderer.geometry.height

        def sub(x, i):
            return None if x is None else x[i]

        window, img, jd = self._start_render(renderer, pose)
        cost, r0, J, H, g = self.linearize(img, jd, emb_f, P, w, mask=m)
        R = r0.detach()  # residuals at the current pose (for the covariance)
        rs = cfg.robust_scale * robust_spread(r0, w) if cfg.robust != "none" else None
        # residuals that count (non-zero weight before the robust kernel), per element
        M = (
            (w > 0).sum(-1).to(torch.float64)
            if w is not None
            else torch.full((n,), float(J.shape[1]), dtype=torch.float64, device=pose.device)
        )
        initial_cost = cost
        bad = ~torch.isfinite(cost) | ~torch.isfinite(H).flatten(1).all(-1)
        sing = singular(
            torch.where(bad[:, None, None], torch.eye(6, dtype=H.dtype, device=H.device), H),
            cfg.rcond,
        )
        for k in range(n):
            if bool(bad[k]):
                status[k] = Status.INVALID_INPUT if first else Status.DIVERGED
                message[k] = (
                    "the initial pose gives a non-finite cost (is the CT in view?)"
                    if first
                    else f"non-finite cost at the start of scale {height} px"
                )
            elif bool(sing[k]):
                status[k] = Status.SINGULAR
                message[k] = (
                    "normal equations are singular: the residuals do not determine the pose"
                )
        live = torch.tensor([s is None for s in status], device=pose.device)
        diagH = torch.diagonal(H, dim1=-2, dim2=-1).detach()
        if cfg.damping == "marquardt":
            D, lam = (
                diagH.clone(),
                torch.full((n,), cfg.lambda_init, dtype=torch.float64, device=pose.device),
            )
            lam_unit = torch.ones_like(lam)
        else:
            D, lam = torch.ones_like(diagH), cfg.lambda_init * diagH.amax(-1)
            lam_unit = diagH.mean(-1)
        lam = lam.clamp(cfg.lambda_min, cfg.lambda_max) if cfg.damping == "marquardt" else lam
        nu = torch.full((n,), 2.0, dtype=torch.float64, device=pose.device)
        kappa = self._start_kappa(renderer, pose)
        rej = torch.zeros(n, dtype=torch.long, device=pose.device)
        if first:
            now = time.perf_counter() - t_start
            for k in range(n):
                hist[k].append(
                    {
                        "iteration": 0,
                        "scale": height,
                        "cost": float(cost[k].detach()),
                        "lambda": float(lam[k]),
                        "accepted": True,
                        "time_s": 0.0,
                        "elapsed_s": now,
                        "step_mm": 0.0,
                        "step_rad": 0.0,
                        "rho": math.nan,
                        "pose": pose[k].detach().cpu().numpy().copy(),
                    }
                )
        rewindows, it = 0, 0
        while it < cfg.max_iterations:
            a = live.nonzero()[:, 0]
            if not a.numel():
                break
            t_it = time.perf_counter()
            s, ok = damped_solve(H[a], g[a], lam[a], D[a])
            s = s * kappa[a, None]  # the step of the model with Hessian (JᵀWJ + λD)/κ
            step_mm, step_rad = s[:, :3].detach().norm(dim=-1), s[:, 3:].detach().norm(dim=-1) / L
            # a step already below the tolerance cannot move the pose by more than the tolerance:
            # stop before rendering the trial (one render fewer per scale)
            small = ok & (step_mm < tol_mm) & (step_rad < tol_rad)
            if bool(small.any()):
                for k in a[small].tolist():
                    status[k], message[k] = Status.CONVERGED, "step below tolerance"
                live = put(
                    live,
                    a[small],
                    torch.zeros(int(small.sum()), dtype=torch.bool, device=pose.device),
                )
                keep = ~small
                a, s, ok, step_mm, step_rad = (
                    a[keep],
                    s[keep],
                    ok[keep],
                    step_mm[keep],
                    step_rad[keep],
                )
                if not a.numel():
                    break
            trial = se3_exp(s @ P.T.to(s)) @ pose[a]
            ok_idx = ok.nonzero()[:, 0]
            if rewindows < 3 and not self._covers(window, renderer, trial[ok_idx]):
                window = self._window(renderer, torch.cat([pose[a], trial[ok_idx]]))
                img, jd = self._render(renderer, window, pose[a], True)
                c_a, r_a, _, H_a, g_a = self.linearize(
                    img, jd, emb_f[a], P, sub(w, a), sub(rs, a), sub(m, a)
                )
                cost, H, g, R = (
                    put(cost, a, c_a),
                    put(H, a, H_a),
                    put(g, a, g_a),
                    put(R, a, r_a.detach()),
                )
                rewindows += 1
                continue
            cost_t = torch.full((len(a),), math.nan, dtype=torch.float64, device=pose.device)
            if ok_idx.numel():
                img_t, jd_t = self._render(renderer, window, trial[ok_idx], True)
                ct, _ = self._residuals(
                    img_t,
                    emb_f[a[ok_idx]],
                    sub(w, a[ok_idx]),
                    sub(rs, a[ok_idx]),
                    sub(m, a[ok_idx]),
                )
                cost_t = put(cost_t, ok_idx, ct.detach())
            s0 = s.detach() / kappa[a, None]  # the plain LM step; predicted reduction scales with κ
            rho, pred0 = gain_ratio(
                cost[a].detach(), cost[a].detach(), s0, g[a].detach(), lam[a], D[a]
            )
            ok_pred = (pred0 > 0) & torch.isfinite(cost_t)
            rho = torch.where(
                ok_pred,
                (cost[a].detach() - cost_t) / (kappa[a] * torch.where(ok_pred, pred0, 1.0)),
                torch.full_like(pred0, -math.inf),
            )
            acc = ok & (rho > cfg.eta)
            disp_mm, disp_rad = self._displacement(trial, pose0[a], c)
            runaway = acc & ((disp_mm > cfg.max_translation_mm) | (disp_rad > cfg.max_rotation_rad))
            acc = acc & ~runaway
            ai = acc.nonzero()[:, 0]
            old_cost = cost[a].detach()
            if ai.numel():
                row = torch.full((len(a),), -1, dtype=torch.long, device=pose.device)
                row[ok_idx] = torch.arange(len(ok_idx), device=pose.device)
                gi = a[ai]
                c_n, r_n, _, H_n, g_n = self.linearize(
                    img_t[row[ai]], jd_t[row[ai]], emb_f[gi], P, sub(w, gi), sub(rs, gi), sub(m, gi)
                )
                pose = put(pose, gi, trial[ai])
                cost, H, g, R = (
                    put(cost, gi, c_n),
                    put(H, gi, H_n),
                    put(g, gi, g_n),
                    put(R, gi, r_n.detach()),
                )
                if cfg.damping == "marquardt":
                    D = put(
                        D, gi, torch.maximum(D[gi], torch.diagonal(H_n, dim1=-2, dim2=-1).detach())
                    )
            new_lam, new_nu = update_lambda(lam[a], nu[a], rho, acc, cfg.lambda_min, cfg.lambda_max)
            # a rejected step with λ still negligible against D would come back unchanged: jump
            new_lam = torch.where(
                acc, new_lam, torch.maximum(new_lam, cfg.lambda_reject * lam_unit[a])
            )
            lam, nu = put(lam, a, new_lam), put(nu, a, new_nu)
            # along the step the cost is f0 − a·t + c·t²/2 (t in units of the plain LM step); the
            # step t = κ gave ρ = 2 − κ·c/a, so the best scale t* = a/c = κ / (2 − ρ). Move κ there,
            # by at most a factor 2 per step; a rejection halves it.
            k_fit = kappa[a] / (2.0 - rho.clamp(max=1.5))
            k_new = torch.where(
                acc, torch.minimum(torch.maximum(k_fit, kappa[a] / 2), kappa[a] * 2), kappa[a] / 2
            )
            kappa = put(kappa, a, k_new.clamp(1.0, cfg.max_step_scale))
            rej = put(rej, a, torch.where(acc, torch.zeros_like(rej[a]), rej[a] + 1))
            iterations[idx_global[a].cpu()] += 1
            it += 1
            dt, now = time.perf_counter() - t_it, time.perf_counter() - t_start
            for j, k in enumerate(a.tolist()):
                hist[k].append(
                    {
                        "iteration": int(iterations[int(idx_global[k])]),
                        "scale": height,
                        "cost": float(cost[k].detach()),
                        "lambda": float(lam[k]),
                        "accepted": bool(acc[j]),
                        "time_s": dt,
                        "elapsed_s": now,
                        "step_mm": float(step_mm[j]),
                        "step_rad": float(step_rad[j]),
                        "rho": float(rho[j]),
                        "pose": pose[k].detach().cpu().numpy().copy(),
                    }
                )
                done = None
                if bool(runaway[j]):
                    done = (
                        Status.DIVERGED,
                        f"moved {float(disp_mm[j]):.0f} mm / {float(disp_rad[j]):.2f} rad "
                        "from the initial pose (limit exceeded)",
                    )
                elif not bool(ok[j]) and float(lam[k]) >= cfg.lambda_max:
                    done = (Status.SINGULAR, "damped normal equations could not be solved")
                elif bool(ok[j]) and float(step_mm[j]) < tol_mm and float(step_rad[j]) < tol_rad:
                    done = (Status.CONVERGED, "step below tolerance")
                elif bool(acc[j]) and float(old_cost[j] - cost[k].detach()) < cost_tol * float(
                    old_cost[j]
                ):
                    done = (Status.CONVERGED, "relative cost decrease below tolerance")
                elif not bool(acc[j]) and (
                    int(rej[k]) >= cfg.max_rejections or float(lam[k]) >= cfg.lambda_max
                ):
                    done = (
                        Status.CONVERGED,
                        f"no further decrease found (lambda {float(lam[k]):.1e})",
                    )
                if done is not None:
                    status[k], message[k] = done
                    live = put(
                        live,
                        torch.tensor([k], device=pose.device),
                        torch.tensor([False], device=pose.device),
                    )
        for k in range(n):
            if status[k] is None and final:
                status[k], message[k] = (
                    Status.MAX_ITERATIONS,
                    f"iteration cap ({cfg.max_iterations}) reached",
                )
        if not cfg.unrolled:
            done = [
                (renderer, pose[k].detach().to(renderer.dtype), float(kappa[k])) for k in range(n)
            ]
            self._recent_kappa = [*self._recent_kappa, *done][-_RECENT_RENDERS:]
        if cfg.robust != "none":
            W = robust_cost(R, w, cfg.robust, rs)[1]
        else:
            W = w
        return {
            "pose": pose,
            "cost": cost,
            "initial_cost": initial_cost,
            "status": status,
            "message": message,
            "H": H,
            "M": M,
            "inflation": correlation_inflation(R, W),
        }
