"""Linearisation of the LM solver (:mod:`.lm`): render the DRR and its Jacobian at a pose, embed
it, and form the cost, residuals, Jacobian and normal equations; plus the costs of given poses
(:meth:`Linearizer.score`, :meth:`Linearizer.normalised_cost`).

A DRR and its Jacobian depend on the pose and the CT only, not on the X-ray, so the last few
renders are kept: a tracking registration that starts where the previous one ended reuses its
last render (:meth:`Linearizer.start_render`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .drr import DrrRenderer
from .geometry import make_pose, se3_inverse, se3_log, so3_exp
from .lm_config import LMConfig
from .lm_steps import (
    ResidualModel,
    embed,
    mask_weights,
    normal_equations,
    residual_jacobian,
    resize_images,
    robust_cost,
    robust_spread,
)
from .masks import resize_mask

__all__ = ["Linearizer", "RECENT_RENDERS"]

#: Renders (with Jacobian) kept for a tracking registration's start.
RECENT_RENDERS = 4


class Linearizer:
    """Residuals, Jacobians and costs of a :class:`ResidualModel` at poses on a renderer.

    Args:
        model: the residual model; may also offer ``weights(emb_fixed) -> (B, M)`` (the diagonal
            of ``W``, ≥ 0) and ``drr_channels`` (DRR channels it takes, default 1).
        config: the solver's :class:`LMConfig` (robust kernel, window margin, unrolled).
    """

    def __init__(self, model: ResidualModel, config: LMConfig) -> None:
        self.model = model
        self.config = config
        # the last few renders with their Jacobian: (renderer, window, pose, image, jacobian)
        self.recent: list[tuple] = []

    def weights(
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

    def fixed_embedding(
        self, renderer: DrrRenderer, fixed: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The fixed images ``(n, 1, H, W)`` at ``renderer``'s size: embeddings, the diagonal of ``W``
        and the valid mask resized alike (None without a mask)."""
        g = renderer.geometry
        fx = resize_images(fixed, g.height, g.width)
        m = None if mask is None else resize_mask(mask, g.height, g.width)
        emb = embed(self.model, fx, m)
        return emb, self.weights(emb, m), m

    def window(
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
    def covers(window: tuple, renderer: DrrRenderer, pose: torch.Tensor) -> bool:
        """Whether the sampling ``window`` covers the CT for every pose (n, 4, 4)."""
        if not len(pose):
            return True
        lo, hi = renderer.window(pose.detach().to(renderer.dtype))
        return lo >= window[0] - 1e-9 and hi <= window[1] + 1e-9

    def render(
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
        if self.config.unrolled:  # exact first-order dependence on the pose (straight-through)
            xi = se3_log(pose @ se3_inverse(pose.detach())).to(jac.dtype)
            img = img.detach() + (jac @ xi[..., None]).view_as(img)
        else:
            self.recent = [
                *self.recent[-(RECENT_RENDERS - 1) :],
                (renderer, window, p, img, jac),
            ]
        return img, jac

    def start_render(
        self, renderer: DrrRenderer, pose: torch.Tensor
    ) -> tuple[tuple, torch.Tensor, torch.Tensor]:
        """Window, image and Jacobian at the start pose: a recent render of exactly this pose with
        this renderer when there is one (tracking), else a new one."""
        if not self.config.unrolled:
            p = pose.detach().to(renderer.dtype)
            for r, window, q, img, jac in reversed(self.recent):
                if r is renderer and q.shape == p.shape and torch.equal(q, p):
                    return window, img, jac
        window = self.window(renderer, pose)
        img, jd = self.render(renderer, window, pose, True)
        return window, img, jd

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

    def cost(
        self,
        image: torch.Tensor,
        emb_fixed: torch.Tensor,
        weights: torch.Tensor | None,
        scale: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cost (n,) and residuals (n, M) of images (n, C, H, W) without a Jacobian (a trial's
        cost); ``weights``, ``scale`` and ``mask`` as in :meth:`linearize`."""
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
        emb, w, m = self.fixed_embedding(
            renderer,
            fixed.to(renderer.device, renderer.dtype),
            None if mask is None else mask.to(renderer.device).bool(),
        )
        poses = poses.to(renderer.device)
        # the poses are fixed: the window need only cover the CT (no margin for motion)
        img, _ = self.render(
            renderer, self.window(renderer, poses, margin_mm=0.0), poses, jacobian=False
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
