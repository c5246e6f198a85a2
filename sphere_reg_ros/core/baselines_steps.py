"""The units of one scale's first-order iteration of :class:`~.baselines.GradientRegistration`
(Adam or backtracking GD with xvr's plateau rule; the module docstring of :mod:`.baselines` gives
the rules): the per-element state, the history record, the best point and plateaus, GD's
backtracking, the update, and the stopping rules."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .result import Status

if TYPE_CHECKING:
    from .baselines import GradientConfig

__all__ = [
    "ScaleState",
    "record",
    "track_best",
    "backtrack",
    "update",
    "stop_converged",
    "final_status",
]


@dataclass
class ScaleState:
    """Per-element state of one scale's first-order iteration (``n`` elements): the parameters
    ``s`` (n, 6), learning rates (translation, rotation), Adam's moments, the best point, the
    plateau counters, the last accepted point (GD's backtracking), which are live, the outcome."""

    s: torch.Tensor
    lr: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor
    best_s: torch.Tensor
    best_c: torch.Tensor
    ref_c: torch.Tensor
    since: torch.Tensor
    plateaus: torch.Tensor
    s_acc: torch.Tensor
    g_acc: torch.Tensor
    c_acc: torch.Tensor
    live: torch.Tensor
    status: list
    message: list
    initial_cost: torch.Tensor
    g0: torch.Tensor | None = None

    @classmethod
    def start(cls, n: int, cfg: GradientConfig, dev) -> "ScaleState":
        s = torch.zeros(n, 6, dtype=torch.float64, device=dev)
        lr = torch.tensor([cfg.lr_trans, cfg.lr_rot], dtype=torch.float64, device=dev).repeat(n, 1)
        best_c = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        return cls(
            s=s,
            lr=lr,
            m1=torch.zeros_like(s),
            m2=torch.zeros_like(s),
            best_s=s.clone(),
            best_c=best_c,
            ref_c=best_c.clone(),
            since=torch.zeros(n, dtype=torch.long),
            plateaus=torch.zeros(n, dtype=torch.long),
            s_acc=s.clone(),
            g_acc=torch.zeros_like(s),
            c_acc=torch.full((n,), math.inf, dtype=torch.float64, device=dev),
            live=torch.ones(n, dtype=torch.bool),
            status=[None] * n,
            message=[""] * n,
            initial_cost=torch.full((n,), math.nan, dtype=torch.float64),
        )


def record(hist, st: ScaleState, a, c, cur, iterations, idx_global, renderer, t_prev, t_start):
    """One history record per live element ``a``: cost ``c`` at the poses ``cur``."""
    now = time.perf_counter() - t_start
    for j, k in enumerate(a.tolist()):
        hist[k].append(
            {
                "iteration": int(iterations[int(idx_global[k])]),
                "scale": renderer.geometry.height,
                "cost": float(c[j]),
                "lambda": float(st.lr[k, 1]),
                "accepted": True,
                "time_s": time.perf_counter() - t_prev,
                "elapsed_s": now,
                "pose": cur[j],
            }
        )


def track_best(st: ScaleState, cfg: GradientConfig, a, c, bad, dev) -> None:
    """The best point so far, and xvr's plateau rule: the learning rates decay after
    ``patience`` iterations without a relative improvement of ``threshold``."""
    better = (c < st.best_c[a].cpu()) & ~bad
    ai = a[better.to(dev)]
    st.best_c[ai], st.best_s[ai] = c[better].to(dev), st.s[ai]
    improved = c < st.ref_c[a].cpu() - cfg.threshold * st.ref_c[a].cpu().abs()
    st.ref_c[a[improved.to(dev)]] = c[improved].to(dev)
    st.since[a] = torch.where(improved, torch.zeros_like(st.since[a]), st.since[a] + 1)
    plateau = st.since[a] >= cfg.patience
    st.lr[a[plateau.to(dev)]] *= cfg.lr_decay
    st.plateaus[a] += plateau.long()
    st.since[a[plateau]] = 0


def backtrack(st: ScaleState, a, c, g, bad, step: int, hist, dev) -> torch.Tensor:
    """GD's backtracking: a step that did not lower the cost is undone (its record marked not
    accepted) and its learning rate halved, an accepted one grows it by 1.2. Returns the
    gradient at the (restored) accepted point."""
    worse = (
        (bad | ~(c < st.c_acc[a].cpu())).to(dev) if step else torch.zeros(len(a), dtype=torch.bool)
    )
    keep = a[~worse]
    st.s_acc[keep], st.c_acc[keep], st.g_acc[keep] = st.s[keep], c[~worse.cpu()].to(dev), g[~worse]
    st.lr[a] *= torch.where(worse, 0.5, 1.2 if step else 1.0)[:, None]
    for j, k in enumerate(a.tolist()):
        if hist[k] and bool(worse[j]):
            hist[k][-1]["accepted"] = False
    st.s[a], g = st.s_acc[a], st.g_acc[a]
    return g


def update(st: ScaleState, cfg: GradientConfig, a, g, step: int, n: int, dev) -> None:
    """One step of the live elements ``a``: Adam's, or GD's normalised by the first gradient."""
    if cfg.optimizer == "adam":
        b1, b2 = cfg.betas
        st.m1[a] = b1 * st.m1[a] + (1 - b1) * g
        st.m2[a] = b2 * st.m2[a] + (1 - b2) * g * g
        t = step + 1
        upd = (st.m1[a] / (1 - b1**t)) / (torch.sqrt(st.m2[a] / (1 - b2**t)) + cfg.eps)
    else:
        if st.g0 is None:
            g0 = torch.stack([g[:, :3].norm(dim=-1), g[:, 3:].norm(dim=-1)], -1).clamp_min(1e-30)
            g0_full = torch.ones(n, 2, dtype=torch.float64, device=dev)
            g0_full[a] = g0
            st.g0 = g0_full
        upd = torch.cat([g[:, :3] / st.g0[a, :1], g[:, 3:] / st.g0[a, 1:]], -1)
    st.s[a] = (
        st.s[a] - torch.cat([st.lr[a, :1].expand(-1, 3), st.lr[a, 1:].expand(-1, 3)], -1) * upd
    )


def stop_converged(st: ScaleState, cfg: GradientConfig, a) -> None:
    """Live elements that end here: ``max_plateaus`` plateaus, or both learning rates below
    1e-3 of their initial values."""
    for k in a.tolist():
        if int(st.plateaus[k]) >= cfg.max_plateaus:
            st.status[k], st.message[k] = (
                Status.CONVERGED,
                f"{cfg.max_plateaus} plateaus of the cost",
            )
            st.live[k] = False
        elif float(st.lr[k, 0]) < 1e-3 * cfg.lr_trans and float(st.lr[k, 1]) < 1e-3 * cfg.lr_rot:
            st.status[k], st.message[k] = (
                Status.CONVERGED,
                "step size below 1e-3 of the initial one",
            )
            st.live[k] = False


def final_status(st: ScaleState, cfg: GradientConfig, n: int) -> None:
    """The iteration cap for the elements still live; diverged where the cost was never finite."""
    for k in range(n):
        if st.status[k] is None:
            st.status[k], st.message[k] = (
                Status.MAX_ITERATIONS,
                f"iteration cap ({cfg.max_iterations}) reached",
            )
        if not math.isfinite(float(st.best_c[k])):
            st.status[k], st.message[k] = Status.DIVERGED, "the cost was never finite"
