"""First-order baselines on the same images and start poses as the LM: Adam and gradient descent.

The settings follow DiffPose (CVPR 2024) and xvr, the tools users pick today
(docs/ARCHITECTURE.md, Baselines and the physics gap):

* pose parameters: the same centred left increment as the LM, ``T = exp(P s) T₀`` with
  ``s = (a [mm], w [rad])``: a translation of the CT's centre and a rotation about it;
* Adam with DiffPose's learning rates, **rotation 7.5e-3 rad, translation 7.5 mm**
  (``betas = (0.9, 0.999)``, ``eps = 1e-8``, as ``torch.optim.Adam``), written out per element
  so that every batch element has its own state, learning rate and stopping;
* gradient descent (``"gd"``): ``s ← s − lr · g / |g₀|`` per part (rotation, translation), where
  ``g₀`` is the gradient at the start of each scale, so the first step has the size of Adam's
  first step (the learning rates above) and later steps shrink with the gradient; a step that
  does not lower the cost is undone and ``lr`` halved, an accepted one grows ``lr`` by 1.2
  (backtracking: plain GD with DiffPose's step sizes overshoots and never returns);
* xvr-style stopping: the learning rates are halved when the cost has not improved by
  ``threshold`` (relative) for ``patience`` iterations, and a scale ends after
  ``max_plateaus`` such plateaus or ``max_iterations``; the best pose of each scale is kept;
* the gradient is exact: reverse-mode autograd through diffdrr's renderer (its fastest exact
  route on CPU), or ``J_DRRᵀ ∇_I cost`` from ``render_with_jacobian`` (``gradient="jacobian"``).

Costs (lower is better): :class:`SimilarityCost` (``½|R|²`` of any residual model: the learned
similarity ε or the learning-free residuals -- "the same similarity" as the LM) and
:class:`MultiscaleNCC` (DiffPose's ``0.5 NCC + 0.5 patch-NCC``, optionally plus xvr's gradient
NCC; cost ``1 − score``). Results are :class:`~sphere_reg_ros.core.lm.LMResult` like the LM's
(covariance NaN: first-order methods have none).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffdrr.metrics import (
    GradientNormalizedCrossCorrelation2d,
    MultiscaleNormalizedCrossCorrelation2d,
)

from .baselines_steps import (
    ScaleState,
    backtrack,
    final_status,
    record,
    stop_converged,
    track_best,
    update,
)
from .drr import DrrRenderer
from .geometry import se3_exp
from .lm import LMResult
from .lm_steps import ResidualModel, increment_matrix, resize_images, valid_poses
from .result import Status

__all__ = [
    "GradientConfig",
    "GradientRegistration",
    "SimilarityCost",
    "MultiscaleNCC",
    "DIFFPOSE_LR_ROT",
    "DIFFPOSE_LR_TRANS",
]

#: DiffPose / xvr learning rates: rotation (rad) and translation (mm).
DIFFPOSE_LR_ROT = 7.5e-3
DIFFPOSE_LR_TRANS = 7.5


class SimilarityCost:
    """``½|R|²`` of a residual model (embed + residuals): the LM's own cost."""

    def __init__(self, model: ResidualModel) -> None:
        self.model = model

    def prepare(self, fixed: torch.Tensor) -> torch.Tensor:
        return self.model.embed(fixed)

    def __call__(self, moving: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        r = self.model.residuals(self.model.embed(moving), prepared)
        return 0.5 * (r * r).sum(-1)


class MultiscaleNCC:
    """DiffPose's multiscale NCC (global + patches of ``patch_fraction`` of the height, weights
    0.5/0.5), plus ``gradient_weight`` × xvr's gradient NCC; cost ``1 − score`` (B,)."""

    def __init__(
        self, patch_fraction: float = 0.1, gradient_weight: float = 0.0, sigma: float = 1.0
    ) -> None:
        self.patch_fraction = float(patch_fraction)
        self.gradient_weight = float(gradient_weight)
        self.sigma = float(sigma)
        self._cache: dict[int, tuple] = {}

    def _metrics(self, height: int) -> tuple:
        if height not in self._cache:
            p = max(3, 2 * int(round(self.patch_fraction * height / 2)) + 1)
            mncc = MultiscaleNormalizedCrossCorrelation2d([None, p], [0.5, 0.5])
            gncc = (
                GradientNormalizedCrossCorrelation2d(patch_size=p, sigma=self.sigma)
                if self.gradient_weight
                else None
            )
            self._cache[height] = (mncc, gncc)
        return self._cache[height]

    def prepare(self, fixed: torch.Tensor) -> torch.Tensor:
        return fixed

    def __call__(self, moving: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        mncc, gncc = self._metrics(moving.shape[-2])
        score = mncc(moving, prepared)
        if gncc is not None:
            gncc = gncc.to(moving.device)
            score = (score + self.gradient_weight * gncc(moving, prepared)) / (
                1 + self.gradient_weight
            )
        return 1.0 - score


@dataclass(frozen=True)
class GradientConfig:
    """Settings of the first-order baselines (see the module docstring)."""

    optimizer: str = "adam"
    lr_rot: float = DIFFPOSE_LR_ROT
    lr_trans: float = DIFFPOSE_LR_TRANS
    max_iterations: int = 100
    patience: int = 10
    threshold: float = 1e-4
    lr_decay: float = 0.5
    max_plateaus: int = 3
    gradient: str = "autograd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "gd"):
            raise ValueError(f"optimizer must be 'adam' or 'gd', got {self.optimizer!r}")
        if self.gradient not in ("autograd", "jacobian"):
            raise ValueError(f"gradient must be 'autograd' or 'jacobian', got {self.gradient!r}")
        if not (self.lr_rot > 0 and self.lr_trans > 0 and 0 < self.lr_decay < 1):
            raise ValueError("learning rates must be > 0 and lr_decay in (0, 1)")
        if not (
            isinstance(self.max_iterations, int) and self.max_iterations >= 0 and self.patience >= 1
        ):
            raise ValueError("max_iterations must be >= 0 and patience >= 1")


def _finished(pose, cost, initial_cost, iterations, status, message, history, t_start) -> LMResult:
    """The result of a first-order run: elements still running hit the iteration cap; no
    covariance (NaN), as a first-order method has no curvature model."""
    for i, st in enumerate(status):
        if st is None:
            status[i], message[i] = Status.MAX_ITERATIONS, "iteration cap reached"
    return LMResult(
        pose=pose,
        covariance=torch.full((len(status), 6, 6), math.nan, dtype=torch.float64),
        cost=cost,
        initial_cost=initial_cost,
        iterations=iterations,
        status=status,
        message=message,
        history=history,
        time_s=time.perf_counter() - t_start,
    )


class GradientRegistration:
    """Batched, coarse-to-fine first-order registration (Adam or GD) of a cost."""

    def __init__(self, cost: Any, config: GradientConfig = GradientConfig()) -> None:
        self.cost = cost
        self.config = config

    def _value_and_grad(
        self,
        renderer: DrrRenderer,
        window,
        s: torch.Tensor,
        pose0: torch.Tensor,
        P: torch.Tensor,
        prepared: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cost (n,) and its gradient (n, 6) with respect to ``s`` at ``exp(P s) pose0``."""
        dtype = renderer.dtype
        if self.config.gradient == "autograd":
            with torch.enable_grad():
                s_ = s.detach().clone().requires_grad_(True)
                pose = se3_exp(s_ @ P.T) @ pose0
                c = self.cost(renderer(pose.to(dtype), window=window), prepared)
                (g,) = torch.autograd.grad(c.sum(), s_)
            return c.detach().to(torch.float64), g.to(torch.float64)
        pose = se3_exp(s @ P.T) @ pose0
        img, jac = renderer.render_with_jacobian(pose.to(dtype), window=window)
        with torch.enable_grad():
            img = img.detach().requires_grad_(True)
            c = self.cost(img, prepared)
            (gi,) = torch.autograd.grad(c.sum(), img)
        g = torch.einsum("bp,bpk->bk", gi.flatten(1).to(torch.float64), jac.to(torch.float64)) @ P
        return c.detach().to(torch.float64), g

    def solve(
        self,
        renderers: Sequence[DrrRenderer],
        fixed: torch.Tensor,
        init_pose: torch.Tensor,
        center=None,
    ) -> LMResult:
        """Refine ``init_pose`` (B, 4, 4) against ``fixed`` (B, 1, H, W), coarse to fine."""
        t_start = time.perf_counter()
        B = init_pose.shape[0]
        dev, dtype = renderers[-1].device, renderers[-1].dtype
        fixed = fixed.to(dev, dtype)
        c = renderers[-1]._center if center is None else torch.as_tensor(center)
        P = increment_matrix(torch.as_tensor(c, dtype=torch.float64).cpu(), 1.0).to(dev)
        status, message, ok = _refused_elements(fixed, init_pose)
        fixed = torch.where(ok[0][:, None, None, None], fixed, torch.zeros_like(fixed))
        pose = torch.where(
            ok[1][:, None, None],
            init_pose.to(dev, torch.float64),
            torch.eye(4, dtype=torch.float64, device=dev),
        )
        history: list[list[dict]] = [[] for _ in range(B)]
        iterations = torch.zeros(B, dtype=torch.long)
        cost = torch.full((B,), math.nan, dtype=torch.float64)
        initial_cost = cost.clone()
        live = torch.tensor([s is None for s in status])
        with torch.no_grad():
            for si, renderer in enumerate(renderers):
                idx = live.nonzero()[:, 0]
                if not idx.numel():
                    break
                g_ = renderer.geometry
                prepared = self.cost.prepare(resize_images(fixed[idx], g_.height, g_.width))
                out = self._run_scale(
                    renderer,
                    _window(renderer, pose[idx].to(dtype)),
                    pose[idx],
                    P,
                    prepared,
                    [history[i] for i in idx.tolist()],
                    iterations,
                    idx,
                    t_start,
                    first=si == 0,
                )
                pose[idx] = out["pose"]
                cost[idx] = out["cost"]
                if si == 0:
                    initial_cost[idx] = out["initial_cost"]
                _merge_outcome(out, idx, si == len(renderers) - 1, status, message, live)
        if len(renderers) > 1:  # report the initial cost at the finest scale, like the LM
            self._finest_initial_cost(renderers[-1], fixed, init_pose, ok, initial_cost)
        return _finished(pose, cost, initial_cost, iterations, status, message, history, t_start)

    def _finest_initial_cost(self, fin, fixed, init_pose, ok, initial_cost) -> None:
        """``initial_cost`` (in place) of the valid elements: the cost of the initial poses at the
        finest scale ``fin``."""
        ok_img, ok_pose = ok
        B = init_pose.shape[0]
        idx = torch.tensor(
            [i for i in range(B) if bool(ok_img[i]) and bool(ok_pose[i])], dtype=torch.long
        )
        if idx.numel():
            with torch.no_grad():
                prep = self.cost.prepare(
                    resize_images(fixed[idx], fin.geometry.height, fin.geometry.width)
                )
                p0 = init_pose[idx].to(fin.device, fin.dtype)
                initial_cost[idx] = self.cost(fin(p0), prep).to(torch.float64).cpu()

    def _run_scale(
        self, renderer, window, pose0, P, prepared, hist, iterations, idx_global, t_start, first
    ) -> dict:
        """One scale's iteration for the elements starting at ``pose0`` (n, 4, 4); ``hist`` their
        histories, ``iterations`` the global counters (indexed by ``idx_global``). Returns the
        best pose and cost of each, the initial cost, statuses and messages."""
        cfg = self.config
        n = pose0.shape[0]
        dev = pose0.device
        st = ScaleState.start(n, cfg, dev)
        step = 0
        t_prev = time.perf_counter()
        while step <= cfg.max_iterations:
            a = st.live.nonzero()[:, 0]
            if not a.numel():
                break
            t_it = time.perf_counter()
            c, g = self._value_and_grad(renderer, window, st.s[a], pose0[a], P, prepared[a])
            c, g = c.cpu(), g.to(dev)
            if step == 0:
                st.initial_cost[a] = c
            if step > 0 or first:  # record the state after `iterations` updates
                cur = (se3_exp(st.s[a] @ P.T) @ pose0[a]).cpu().numpy()
                record(hist, st, a, c, cur, iterations, idx_global, renderer, t_prev, t_start)
            bad = ~torch.isfinite(c) | ~torch.isfinite(g).all(-1).cpu()
            track_best(st, cfg, a, c, bad, dev)
            if step == cfg.max_iterations:
                break
            g = torch.where(bad.to(dev)[:, None], torch.zeros_like(g), g)
            if cfg.optimizer == "gd":  # backtracking: undo a step that did not lower the cost
                g = backtrack(st, a, c, g, bad, step, hist, dev)
            update(st, cfg, a, g, step, n, dev)
            iterations[idx_global[a].cpu()] += 1
            step += 1
            t_prev = t_it
            stop_converged(st, cfg, a)
        final_status(st, cfg, n)
        best_pose = se3_exp(st.best_s @ P.T) @ pose0
        return {
            "pose": best_pose,
            "cost": st.best_c.cpu(),
            "initial_cost": st.initial_cost,
            "status": st.status,
            "message": st.message,
        }


def _window(renderer: DrrRenderer, pose: torch.Tensor) -> tuple[float, float]:
    """The renderer's sampling window for ``pose``, widened by 60 mm on each side (the poses move
    during the scale)."""
    lo, hi = renderer.window(pose)
    m = 60.0 / renderer.geometry.sdd
    return (max(lo - m, 0.0), min(hi + m, 1.0))


def _merge_outcome(out: dict, idx: torch.Tensor, last: bool, status, message, live) -> None:
    """A scale's outcome for the elements ``idx`` (in place): a failure ends an element, the
    ``last`` scale's outcome is the final one."""
    for k, i in enumerate(idx.tolist()):
        if out["status"][k] is not None and not out["status"][k].usable:
            status[i], message[i] = out["status"][k], out["message"][k]
            live[i] = False
        elif last:
            status[i], message[i] = out["status"][k], out["message"][k]


def _refused_elements(fixed: torch.Tensor, init_pose: torch.Tensor) -> tuple:
    """``(status, message, (ok_img, ok_pose))``: ``INVALID_INPUT`` with the reason for an element
    with a non-finite image or an invalid initial pose, None for the others."""
    B = init_pose.shape[0]
    status: list[Status | None] = [None] * B
    message = [""] * B
    ok_img = torch.isfinite(fixed).flatten(1).all(-1)
    ok_pose = valid_poses(init_pose)
    for i in range(B):
        if not (bool(ok_img[i]) and bool(ok_pose[i])):
            status[i] = Status.INVALID_INPUT
            message[i] = (
                "image contains NaN or inf" if not bool(ok_img[i]) else "invalid initial pose"
            )
    return status, message, (ok_img, ok_pose)
