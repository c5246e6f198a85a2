"""One scale of the LM solver (:mod:`.lm`): the iteration on one renderer per view for a batch
of elements, from the start pose until each element meets a stopping rule.

Views. An element may be seen by several C-arm views at known relative poses (biplane): view
``k`` is rendered at ``T_ct_from_carm0 @ offset_k`` (:class:`ScaleView`; the first view's offset
is the identity). The solver's left world increment ``T <- se3_exp(δ) @ T`` moves every view's
pose alike (``se3_exp(δ) T₀ Oₖ = se3_exp(δ) Tₖ``), so each view's Jacobian is its own renderer's,
and the views' costs, ``JᵀWJ`` and ``JᵀWR`` add up; each view keeps its own fixed embedding,
weights, mask, sampling window and robust kernel scale. One view is the plain single-view solve
(the sums are that view's terms).

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


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the views' terms (the term itself for one view: bit-identical to one view)."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


@dataclass
class ScaleView:
    """One C-arm view of a scale: its renderer, the fixed images' ``(emb_fixed, w, mask)`` at its
    size (:meth:`Linearizer.fixed_embedding`, rows = the scale's elements) and ``offset`` (n, 4, 4)
    ``T_carm0_from_carmk`` (None: the identity, the first view). ``window``, ``rs`` (robust kernel
    scales (n,)) and ``M`` (residuals that count, (n,)) are set by the run."""

    renderer: DrrRenderer
    fixed: tuple
    offset: torch.Tensor | None = None
    window: tuple | None = None
    rs: torch.Tensor | None = None
    M: torch.Tensor | None = None

    def at(self, pose: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """This view's poses ``T_ct_from_carmk`` of the first view's ``pose`` (t, 4, 4) of the
        elements ``rows`` (all elements when None)."""
        if self.offset is None:
            return pose
        off = self.offset if rows is None else self.offset[rows]
        return pose @ off.to(pose)

    def linearize(self, lin: Linearizer, img, jd, P, idx: torch.Tensor | None, scale=True):
        """:meth:`Linearizer.linearize` of renders of elements ``idx`` (all when None)."""
        emb_f, w, m = self.fixed
        if idx is not None:
            emb_f, w, m = emb_f[idx], _sub(w, idx), _sub(m, idx)
        rs = (self.rs if idx is None else _sub(self.rs, idx)) if scale else None
        return lin.linearize(img, jd, emb_f, P, w, rs, m)


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
    """The LM iteration on one renderer per view (see the module).

    Args:
        lin: the linearisation (renders, with the recent-render cache).
        views: this scale's :class:`ScaleView` per C-arm view (one for a single view); the
            first view's pose is the iterate.
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
        views: list[ScaleView],
        pose0: torch.Tensor,
        P: torch.Tensor,
        c: torch.Tensor,
        final: bool,
        hist: list[list[dict]],
        iterations: torch.Tensor,
        idx_global: torch.Tensor,
        t_start: float,
    ) -> None:
        self.lin, self.views, self.cfg = lin, views, lin.config
        self.pose0, self.P, self.c, self.final = pose0, P, c, final
        self.hist, self.iterations, self.idx_global = hist, iterations, idx_global
        self.t_start = t_start
        self.tol = Tolerances.for_scale(self.cfg, final)
        self.height = views[0].renderer.geometry.height
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
        parts = []
        for v in self.views:
            v.window, img, jd = self.lin.start_render(v.renderer, v.at(pose))
            part = v.linearize(self.lin, img, jd, self.P, None, scale=False)
            r0, J, w = part[1], part[2], v.fixed[1]
            v.rs = cfg.robust_scale * robust_spread(r0, w) if cfg.robust != "none" else None
            # residuals that count (non-zero weight before the robust kernel), per element
            v.M = (
                (w > 0).sum(-1).to(torch.float64)
                if w is not None
                else torch.full((n,), float(J.shape[1]), dtype=torch.float64, device=dev)
            )
            parts.append(part)
        self.sizes = [p[1].shape[1] for p in parts]
        cost, r0, _, H, g = self._summed(parts)
        self.M = _total([v.M for v in self.views])
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
        inflation = []
        for v, R in zip(self.views, torch.split(st.R, self.sizes, dim=-1)):
            w = v.fixed[1]
            W = robust_cost(R, w, cfg.robust, v.rs)[1] if cfg.robust != "none" else w
            inflation.append(correlation_inflation(R, W))
        return {
            "pose": st.pose,
            "cost": st.cost,
            "initial_cost": self.initial_cost,
            "status": st.status,
            "message": st.message,
            "H": st.H,
            "M": self.M,
            # the views' inflations weighted by their residual counts
            "inflation": (
                inflation[0]
                if len(inflation) == 1
                else _total([v.M * f for v, f in zip(self.views, inflation)]) / self.M
            ),
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
        if self.rewindows < MAX_REWINDOWS and not self._covered(trial[ok_idx], a[ok_idx]):
            self._rewindow(st, a, trial[ok_idx], a[ok_idx])
            return 0
        cost_t, renders = self._trial_costs(a, trial[ok_idx], ok_idx)
        self._judge(st, tr, trial, cost_t)
        if bool(tr.acc.any()):
            self._accept(st, a, tr.acc, ok_idx, trial, renders)
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

    @staticmethod
    def _summed(parts: list[tuple]) -> tuple[torch.Tensor, ...]:
        """The views' linearisations ``(cost, R, J, H, g)`` as one: costs, ``H`` and ``g`` summed,
        residuals concatenated (``J`` is not kept for several views: None)."""
        if len(parts) == 1:
            return parts[0]
        cost, H, g = (_total([p[k] for p in parts]) for k in (0, 3, 4))
        return cost, torch.cat([p[1] for p in parts], dim=-1), None, H, g

    def _linearize(self, renders: list[tuple], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`Linearizer.linearize` of each view's renders ``(img, jd)`` of elements ``idx``,
        summed (:meth:`_summed`)."""
        return self._summed(
            [
                v.linearize(self.lin, img, jd, self.P, idx)
                for v, (img, jd) in zip(self.views, renders)
            ]
        )

    def _covered(self, trials: torch.Tensor, rows: torch.Tensor) -> bool:
        """Whether every view's sampling window covers the ``trials`` of elements ``rows``."""
        return all(self.lin.covers(v.window, v.renderer, v.at(trials, rows)) for v in self.views)

    def _rewindow(
        self, st: ScaleState, a: torch.Tensor, trials: torch.Tensor, rows: torch.Tensor
    ) -> None:
        """Widen each view's sampling window over the current poses of ``a`` and their ``trials``
        (of elements ``rows``) and re-linearise the current poses in it (the cost must stay one
        smooth function)."""
        renders = []
        for v in self.views:
            poses = v.at(st.pose[a], a)
            v.window = self.lin.window(v.renderer, torch.cat([poses, v.at(trials, rows)]))
            renders.append(self.lin.render(v.renderer, v.window, poses, True))
        c_a, r_a, _, H_a, g_a = self._linearize(renders, a)
        st.put(a, cost=c_a, H=H_a, g=g_a, R=r_a.detach())
        self.rewindows += 1

    def _trial_costs(
        self, a: torch.Tensor, trials: torch.Tensor, ok_idx: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple] | None]:
        """Costs (t,) of the ``trials`` (rows ``ok_idx`` of ``a``; NaN elsewhere), with each
        view's renders and image Jacobians ``(img, jd)`` (None when there is no trial)."""
        cost_t = torch.full((len(a),), math.nan, dtype=torch.float64, device=a.device)
        if not ok_idx.numel():
            return cost_t, None
        gi, costs, renders = a[ok_idx], [], []
        for v in self.views:
            img_t, jd_t = self.lin.render(v.renderer, v.window, v.at(trials, gi), True)
            emb_f, w, m = v.fixed
            ct, _ = self.lin.cost(img_t, emb_f[gi], _sub(w, gi), _sub(v.rs, gi), _sub(m, gi))
            costs.append(ct)
            renders.append((img_t, jd_t))
        return put(cost_t, ok_idx, _total(costs).detach()), renders

    def _accept(
        self,
        st: ScaleState,
        a: torch.Tensor,
        acc: torch.Tensor,
        ok_idx: torch.Tensor,
        trial: torch.Tensor,
        renders: list[tuple],
    ) -> None:
        """Move the accepted elements to their trials and linearise there from the trials'
        renders (each view's ``(img, jd)``, rows follow ``ok_idx``); Marquardt's ``D`` keeps its
        running maximum (Moré)."""
        ai = acc.nonzero()[:, 0]
        row = torch.full((len(a),), -1, dtype=torch.long, device=a.device)
        row[ok_idx] = torch.arange(len(ok_idx), device=a.device)
        gi = a[ai]
        c_n, r_n, _, H_n, g_n = self._linearize(
            [(img[row[ai]], jd[row[ai]]) for img, jd in renders], gi
        )
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
