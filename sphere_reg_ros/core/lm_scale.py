"""One scale of the LM solver (:mod:`.lm`): the iteration on one renderer for a batch of
elements, from the start pose until each element meets a stopping rule.

An iteration, for the elements still live: the damped solve (:func:`~.lm_damping.damped_solve`)
scaled by the step scale ``κ``; steps below the tolerance stop before their trial is rendered
(:func:`~.lm_stopping.small_steps`); a sampling window that does not cover a trial is widened
and the current poses re-linearised (at most :data:`MAX_REWINDOWS` times a scale, not counted as
an iteration); the trials are rendered with their Jacobian and costed; the gain ratio decides
acceptance (:func:`~.lm_damping.gain_ratio`) and accepted trials are linearised from their render;
λ, ν and κ are updated (:func:`~.lm_damping.update_damping`,
:func:`~.lm_damping.update_step_scale`); the stopping rules (:func:`~.lm_stopping.step_status`)
end elements.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .drr import DrrRenderer
from .geometry import se3_exp
from .lm_damping import damped_solve, gain_ratio, initial_damping, update_damping, update_step_scale
from .lm_linearize import Linearizer
from .lm_steps import correlation_inflation, displacement, put, robust_cost, robust_spread, singular
from .lm_stopping import (
    STEP_BELOW_TOLERANCE,
    Tolerances,
    cap_status,
    small_steps,
    start_status,
    step_status,
)
from .result import Status

__all__ = ["ScaleRun", "ScaleState", "MAX_REWINDOWS"]

#: Times a scale may widen its sampling window for trials that leave it.
MAX_REWINDOWS = 3


def _sub(x: torch.Tensor | None, i: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x[i]


@dataclass
class ScaleState:
    """The iterate of one scale for ``n`` elements (float64 tensors unless noted).

    Attributes:
        pose: (n, 4, 4) current poses (the last accepted trial).
        cost: (n,) cost at ``pose``; ``R`` (n, M) its residuals.
        H, g: (n, 6, 6), (n, 6) normal equations ``JᵀWJ``, ``JᵀWR`` in the scaled increments.
        D: (n, 6) damping diagonal; ``lam``, ``nu`` (n,) λ and Nielsen's factor; ``lam_unit``
            (n,) λ's unit for the floor after a rejection.
        kappa: (n,) step scale; ``rej`` (n,) long consecutive rejections.
        live: (n,) bool, still iterating; ``status``, ``message`` per element (None while live).
    """

    pose: torch.Tensor
    cost: torch.Tensor
    R: torch.Tensor
    H: torch.Tensor
    g: torch.Tensor
    D: torch.Tensor
    lam: torch.Tensor
    nu: torch.Tensor
    lam_unit: torch.Tensor
    kappa: torch.Tensor
    rej: torch.Tensor
    live: torch.Tensor
    status: list[Status | None]
    message: list[str]

    def put(self, idx: torch.Tensor, **values: torch.Tensor) -> None:
        """Out-of-place ``self.<name>[idx] = value`` for each ``name=value``."""
        for name, value in values.items():
            setattr(self, name, put(getattr(self, name), idx, value))

    def stop(self, k: int, outcome: tuple[Status, str]) -> None:
        """End element ``k`` with ``outcome`` (status, message)."""
        self.status[k], self.message[k] = outcome
        self.live = put(
            self.live,
            torch.tensor([k], device=self.live.device),
            torch.tensor([False], device=self.live.device),
        )


@dataclass
class _Trials:
    """The trials of one iteration for the live elements ``a`` (``t`` rows of the scale's batch);
    the fields after ``step_rad`` are set once the trials are costed (:meth:`ScaleRun._judge`)."""

    a: torch.Tensor  # (t,) long
    s: torch.Tensor  # (t, 6) steps in the scaled increments (κ times the LM step)
    ok: torch.Tensor  # (t,) bool, damped normal equations solved
    step_mm: torch.Tensor  # (t,) step length (mm)
    step_rad: torch.Tensor  # (t,) step angle (rad)
    rho: torch.Tensor | None = None  # (t,) gain ratio
    acc: torch.Tensor | None = None  # (t,) bool, accepted
    runaway: torch.Tensor | None = None  # (t,) bool, acceptable but moved too far
    moved_mm: torch.Tensor | None = None  # (t,) distance from the initial pose (mm)
    moved_rad: torch.Tensor | None = None  # (t,) rotation from the initial pose (rad)
    old_cost: torch.Tensor | None = None  # (t,) cost before the trial

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the trials ``rows`` (bool (t,)) only (before they are costed)."""
        self.a, self.s, self.ok = self.a[rows], self.s[rows], self.ok[rows]
        self.step_mm, self.step_rad = self.step_mm[rows], self.step_rad[rows]


class ScaleRun:
    """The LM iteration on one renderer (see the module).

    Args:
        lin: the linearisation (renders, with the recent-render cache).
        renderer: this scale's renderer.
        fixed: ``(emb_fixed, w, mask)`` of the fixed images at this size (:meth:`Linearizer.
            fixed_embedding`): embeddings (n, ...), diagonal of ``W`` (n, M) or None, valid masks
            (n, 1, H, W) or None.
        pose0: (n, 4, 4) the solve's initial poses (for the divergence test).
        P: (6, 6) scaled increments → world increments; ``c`` (3,) the rotation centre (mm).
        final: the finest scale (full tolerances; its iteration cap is a status).
        hist: per element, the history list to append to.
        iterations: (B,) long iteration counts of the whole batch; ``idx_global`` (n,) these
            elements' rows in it.
        t_start: ``time.perf_counter()`` at the start of the solve.
    """

    def __init__(
        self,
        lin: Linearizer,
        renderer: DrrRenderer,
        fixed: tuple,
        pose0: torch.Tensor,
        P: torch.Tensor,
        c: torch.Tensor,
        final: bool,
        hist: list[list[dict]],
        iterations: torch.Tensor,
        idx_global: torch.Tensor,
        t_start: float,
    ) -> None:
        self.lin, self.renderer, self.cfg = lin, renderer, lin.config
        self.emb_f, self.w, self.m = fixed
        self.pose0, self.P, self.c, self.final = pose0, P, c, final
        self.hist, self.iterations, self.idx_global = hist, iterations, idx_global
        self.t_start = t_start
        self.tol = Tolerances.for_scale(self.cfg, final)
        self.height = renderer.geometry.height
        self.rewindows = 0

    # ------------------------------------------------------------------ start and end
    def run(self, pose: torch.Tensor, kappa: torch.Tensor, first: bool) -> dict:
        """Iterate from ``pose`` (n, 4, 4) with step scales ``kappa`` (n,); ``first``: the first
        scale of the solve (records iteration 0; a bad start is INVALID_INPUT).

        Returns a dict: ``pose`` (n, 4, 4), ``cost`` (n,), ``initial_cost`` (n,), ``status`` and
        ``message`` (lists; None where a coarse scale ended on its cap), ``H`` (n, 6, 6) at the
        final pose, ``M`` (n,) residuals that count, ``inflation`` (n,) for correlated residuals
        and ``kappa`` (n,) the final step scales.
        """
        st = self._start(pose, kappa, first)
        it = 0
        while it < self.cfg.max_iterations:
            a = st.live.nonzero()[:, 0]
            if not a.numel():
                break
            it += self._iterate(st, a)
        return self._end(st)

    def _start(self, pose: torch.Tensor, kappa: torch.Tensor, first: bool) -> ScaleState:
        """Linearise at the start poses, set the start statuses and the damping."""
        cfg, n, dev = self.cfg, pose.shape[0], pose.device
        self.window, img, jd = self.lin.start_render(self.renderer, pose)
        cost, r0, J, H, g = self.lin.linearize(img, jd, self.emb_f, self.P, self.w, mask=self.m)
        self.rs = cfg.robust_scale * robust_spread(r0, self.w) if cfg.robust != "none" else None
        # residuals that count (non-zero weight before the robust kernel), per element
        self.M = (
            (self.w > 0).sum(-1).to(torch.float64)
            if self.w is not None
            else torch.full((n,), float(J.shape[1]), dtype=torch.float64, device=dev)
        )
        self.initial_cost = cost
        bad = ~torch.isfinite(cost) | ~torch.isfinite(H).flatten(1).all(-1)
        eye = torch.eye(6, dtype=H.dtype, device=H.device)
        sing = singular(torch.where(bad[:, None, None], eye, H), cfg.rcond)
        starts = [start_status(bool(bad[k]), bool(sing[k]), first, self.height) for k in range(n)]
        D, lam, lam_unit = initial_damping(torch.diagonal(H, dim1=-2, dim2=-1).detach(), cfg)
        st = ScaleState(
            pose=pose,
            cost=cost,
            R=r0.detach(),
            H=H,
            g=g,
            D=D,
            lam=lam,
            nu=torch.full((n,), 2.0, dtype=torch.float64, device=dev),
            lam_unit=lam_unit,
            kappa=kappa,
            rej=torch.zeros(n, dtype=torch.long, device=dev),
            live=torch.tensor([s is None for s in starts], device=dev),
            status=[None if s is None else s[0] for s in starts],
            message=["" if s is None else s[1] for s in starts],
        )
        if first:
            now = time.perf_counter() - self.t_start
            for k in range(n):
                self.hist[k].append(self._entry(st, k, 0, True, (0.0, now), (0.0, 0.0), math.nan))
        return st

    def _end(self, st: ScaleState) -> dict:
        """The scale's outcome (see :meth:`run`)."""
        cfg = self.cfg
        for k in range(len(st.status)):
            if st.status[k] is None and self.final:
                st.status[k], st.message[k] = cap_status(cfg.max_iterations)
        W = robust_cost(st.R, self.w, cfg.robust, self.rs)[1] if cfg.robust != "none" else self.w
        return {
            "pose": st.pose,
            "cost": st.cost,
            "initial_cost": self.initial_cost,
            "status": st.status,
            "message": st.message,
            "H": st.H,
            "M": self.M,
            "inflation": correlation_inflation(st.R, W),
            "kappa": st.kappa,
        }

    def _entry(
        self, st: ScaleState, k: int, it: int, accepted: bool, times: tuple, step: tuple, rho: float
    ) -> dict:
        """History entry of element ``k`` after iteration ``it``: ``times`` = (the iteration's,
        since the solve's start) (s), ``step`` = (length (mm), angle (rad)), gain ratio ``rho``."""
        return {
            "iteration": it,
            "scale": self.height,
            "cost": float(st.cost[k].detach()),
            "lambda": float(st.lam[k]),
            "accepted": accepted,
            "time_s": times[0],
            "elapsed_s": times[1],
            "step_mm": step[0],
            "step_rad": step[1],
            "rho": rho,
            "pose": st.pose[k].detach().cpu().numpy().copy(),
        }

    # ------------------------------------------------------------------ one iteration
    def _iterate(self, st: ScaleState, a: torch.Tensor) -> int:
        """One iteration of the live elements ``a``; 1 if it counts as an iteration, 0 when only
        small steps stopped or the window was widened."""
        t_it = time.perf_counter()
        tr = self._solve(st, a)
        small = small_steps(tr.ok, tr.step_mm, tr.step_rad, self.tol)
        if bool(small.any()):
            for k in tr.a[small].tolist():
                st.status[k], st.message[k] = STEP_BELOW_TOLERANCE
            off = torch.zeros(int(small.sum()), dtype=torch.bool, device=st.live.device)
            st.put(tr.a[small], live=off)
            tr.keep(~small)
            if not tr.a.numel():
                return 0
        a = tr.a
        trial = se3_exp(tr.s @ self.P.T.to(tr.s)) @ st.pose[a]
        ok_idx = tr.ok.nonzero()[:, 0]
        if self.rewindows < MAX_REWINDOWS and not self.lin.covers(
            self.window, self.renderer, trial[ok_idx]
        ):
            self._rewindow(st, a, trial[ok_idx])
            return 0
        cost_t, img_t, jd_t = self._trial_costs(a, trial[ok_idx], ok_idx)
        self._judge(st, tr, trial, cost_t)
        if bool(tr.acc.any()):
            self._accept(st, a, tr.acc, ok_idx, trial, img_t, jd_t)
        self._adapt(st, a, tr.rho, tr.acc)
        self.iterations[self.idx_global[a].cpu()] += 1
        self._record(st, tr, time.perf_counter() - t_it)
        return 1

    def _judge(
        self, st: ScaleState, tr: _Trials, trial: torch.Tensor, cost_t: torch.Tensor
    ) -> None:
        """Gain ratios and acceptance of the trials (poses ``trial`` (t, 4, 4), costs ``cost_t``
        (t,)): accepted when ρ > ``eta`` unless the trial moved too far from the initial pose."""
        a, cfg = tr.a, self.cfg
        s0 = tr.s.detach() / st.kappa[a, None]  # the plain LM step
        tr.rho, _ = gain_ratio(
            st.cost[a].detach(), cost_t, s0, st.g[a].detach(), st.lam[a], st.D[a], st.kappa[a]
        )
        acc = tr.ok & (tr.rho > cfg.eta)
        tr.moved_mm, tr.moved_rad = displacement(trial, self.pose0[a], self.c)
        far = (tr.moved_mm > cfg.max_translation_mm) | (tr.moved_rad > cfg.max_rotation_rad)
        tr.runaway = acc & far
        tr.acc = acc & ~tr.runaway
        tr.old_cost = st.cost[a].detach()

    def _record(self, st: ScaleState, tr: _Trials, dt: float) -> None:
        """History entries of the trials (``dt`` s for the iteration) and the stopping rules."""
        now = time.perf_counter() - self.t_start
        for j, k in enumerate(tr.a.tolist()):
            it = int(self.iterations[int(self.idx_global[k])])
            step_mm, step_rad = float(tr.step_mm[j]), float(tr.step_rad[j])
            accepted = bool(tr.acc[j])
            entry = self._entry(
                st, k, it, accepted, (dt, now), (step_mm, step_rad), float(tr.rho[j])
            )
            self.hist[k].append(entry)
            outcome = step_status(
                runaway=bool(tr.runaway[j]),
                solved=bool(tr.ok[j]),
                accepted=accepted,
                step_mm=step_mm,
                step_rad=step_rad,
                moved_mm=float(tr.moved_mm[j]),
                moved_rad=float(tr.moved_rad[j]),
                old_cost=float(tr.old_cost[j]),
                new_cost=float(st.cost[k].detach()),
                rejections=int(st.rej[k]),
                lam=float(st.lam[k]),
                tol=self.tol,
                config=self.cfg,
            )
            if outcome is not None:
                st.stop(k, outcome)

    def _solve(self, st: ScaleState, a: torch.Tensor) -> _Trials:
        """The damped steps of elements ``a``, scaled by κ: the step of the model with Hessian
        ``(JᵀWJ + λD)/κ``."""
        s, ok = damped_solve(st.H[a], st.g[a], st.lam[a], st.D[a])
        s = s * st.kappa[a, None]
        step_mm = s[:, :3].detach().norm(dim=-1)
        step_rad = s[:, 3:].detach().norm(dim=-1) / self.cfg.rotation_scale_mm
        return _Trials(a, s, ok, step_mm, step_rad)

    def _linearize(
        self, img: torch.Tensor, jd: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`Linearizer.linearize` of renders of elements ``idx``."""
        w, rs, m = _sub(self.w, idx), _sub(self.rs, idx), _sub(self.m, idx)
        return self.lin.linearize(img, jd, self.emb_f[idx], self.P, w, rs, m)

    def _rewindow(self, st: ScaleState, a: torch.Tensor, trials: torch.Tensor) -> None:
        """Widen the sampling window over the current poses of ``a`` and their ``trials`` and
        re-linearise the current poses in it (the cost must stay one smooth function)."""
        self.window = self.lin.window(self.renderer, torch.cat([st.pose[a], trials]))
        img, jd = self.lin.render(self.renderer, self.window, st.pose[a], True)
        c_a, r_a, _, H_a, g_a = self._linearize(img, jd, a)
        st.put(a, cost=c_a, H=H_a, g=g_a, R=r_a.detach())
        self.rewindows += 1

    def _trial_costs(
        self, a: torch.Tensor, trials: torch.Tensor, ok_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Costs (t,) of the ``trials`` (rows ``ok_idx`` of ``a``; NaN elsewhere), with their
        renders and image Jacobians (None when there is no trial)."""
        cost_t = torch.full((len(a),), math.nan, dtype=torch.float64, device=a.device)
        if not ok_idx.numel():
            return cost_t, None, None
        img_t, jd_t = self.lin.render(self.renderer, self.window, trials, True)
        gi = a[ok_idx]
        w, rs, m = _sub(self.w, gi), _sub(self.rs, gi), _sub(self.m, gi)
        ct, _ = self.lin.cost(img_t, self.emb_f[gi], w, rs, m)
        return put(cost_t, ok_idx, ct.detach()), img_t, jd_t

    def _accept(
        self,
        st: ScaleState,
        a: torch.Tensor,
        acc: torch.Tensor,
        ok_idx: torch.Tensor,
        trial: torch.Tensor,
        img_t: torch.Tensor,
        jd_t: torch.Tensor,
    ) -> None:
        """Move the accepted elements to their trials and linearise there from the trials'
        renders (``img_t``, ``jd_t`` rows follow ``ok_idx``); Marquardt's ``D`` keeps its running
        maximum (Moré)."""
        ai = acc.nonzero()[:, 0]
        row = torch.full((len(a),), -1, dtype=torch.long, device=a.device)
        row[ok_idx] = torch.arange(len(ok_idx), device=a.device)
        gi = a[ai]
        c_n, r_n, _, H_n, g_n = self._linearize(img_t[row[ai]], jd_t[row[ai]], gi)
        st.put(gi, pose=trial[ai], cost=c_n, H=H_n, g=g_n, R=r_n.detach())
        if self.cfg.damping == "marquardt":
            diag = torch.diagonal(H_n, dim1=-2, dim2=-1).detach()
            st.put(gi, D=torch.maximum(st.D[gi], diag))

    def _adapt(self, st: ScaleState, a: torch.Tensor, rho: torch.Tensor, acc: torch.Tensor) -> None:
        """λ, ν, κ and the rejection counts of ``a`` after their trials."""
        lam, nu = update_damping(st.lam[a], st.nu[a], rho, acc, st.lam_unit[a], self.cfg)
        kappa = update_step_scale(st.kappa[a], rho, acc, self.cfg.max_step_scale)
        rej = torch.where(acc, torch.zeros_like(st.rej[a]), st.rej[a] + 1)
        st.put(a, lam=lam, nu=nu, kappa=kappa, rej=rej)
