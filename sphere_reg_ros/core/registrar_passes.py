"""What surrounds the LM in a registration (methods of :class:`~.registrar.Registrar`). Before it:
the start poses (given, the regressor's, or the AP view) and the masks of what the CT cannot
explain. After it: restarts of cold registrations that look failed (``RegistrarConfig.restarts``),
the polish of a learned end by a learning-free registration from it (``RegistrarConfig.polish``),
and the
trust numbers of each result (normalised cost; consistency from a second start).

:class:`RegistrationPasses` is a mixin: it uses the registrar's ``config``, ``trust``,
``center_world``, ``roi_world``, ``device``, ``mask_config``, ``regressor``, ``model_geometry``
its solvers (``solver``, ``_check_solver``) and the polishing registrar ``_free``."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch

from .carm import CarmGeometry
from .drr import DrrRenderer
from .geometry import make_pose, so3_exp
from .lm import resize_images
from .masks import detect_masks, resize_mask
from .registrar_inputs import _fov_mismatch, _joined, _takes_mask
from .result import RegistrationResult, Status, point_error

__all__ = ["RegistrationPasses"]


class RegistrationPasses:
    """Start poses, masks, restarts, polish and trust numbers of :class:`~.registrar.Registrar` (see the module)."""

    def _consistency(
        self,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        pose: np.ndarray,
        mask: torch.Tensor | None,
        views=(),
    ) -> float:
        """Distance (mm, at the region of interest) between ``pose`` and where a second start ends:
        ``pose`` moved by ``trust.consistency_offset_mm`` along the C-arm's x axis and rotated by
        ``offset / 100`` rad about its y axis through the CT's centre (finest scale only; with the
        further ``views`` of the element, :class:`~.lm.SolverView`)."""
        d = self.trust.consistency_offset_mm
        T = torch.as_tensor(pose, dtype=torch.float64)
        c = torch.as_tensor(self.center_world, dtype=torch.float64)
        R = so3_exp(T[:3, 1] * (d / 100.0))
        start = (
            make_pose(R, c - R @ c) @ make_pose(torch.eye(3, dtype=torch.float64), d * T[:3, 0]) @ T
        )
        kw = {} if mask is None else {"mask": mask}
        if views:
            kw["views"] = views
        out = self._check_solver.solve(
            [renderer], fixed, start[None], center=self.center_world, **kw
        )
        if not out.status[0].usable:
            return math.inf
        end = out.pose[0].detach().to("cpu", torch.float64).numpy()
        return float(
            np.linalg.norm(point_error(end, np.asarray(pose, dtype=np.float64), self.roi_world))
        )

    def _polished(
        self,
        arrays: list[np.ndarray],
        geometry: CarmGeometry,
        learned: list[RegistrationResult],
        extra=None,
    ) -> list[RegistrationResult]:
        """``config.polish``: each checked image registered again by the learning-free registrar
        (all scales, masks, restarts, its trust numbers and gates, which the thresholds were
        calibrated on), starting from the learned end (from its default start where the learned
        registration has no finite pose). The learned result stays where the polish fails.
        ``extra``: the further views of each image (registered together again)."""
        self._free.trust = self.trust
        starts = [r.pose if np.isfinite(r.pose).all() else None for r in learned]
        if extra:
            polished = [
                self._free.register_views(
                    [arrays[i], *(a[i] for a in extra.arrays)],
                    [geometry, *extra.geometries],
                    [np.eye(4), *(o[i] for o in extra.offsets)],
                    starts[i],
                )
                for i in range(len(arrays))
            ]
        else:
            polished = self._free.register_batch(arrays, geometry, starts)
        out = []
        for first, res in zip(learned, polished):
            note = f"learned end ({first.status.value}, {first.iterations} iterations)"
            if not res.status.usable and res.status is not Status.REJECTED:
                out.append(
                    replace(first, message=_joined(first.message, f"polish failed: {res.message}"))
                )
                continue
            shift = float(np.linalg.norm(point_error(res.pose, first.pose, self.roi_world)))
            timings = {
                k: first.timings.get(k, 0.0) + res.timings.get(k, 0.0)
                for k in set(first.timings) | set(res.timings)
            }
            out.append(
                replace(
                    res,
                    iterations=first.iterations + res.iterations,
                    timings=timings,
                    message=_joined(
                        f"{note} polished by the learning-free LM ({shift:.2f} mm)", res.message
                    ),
                )
            )
        return out

    def _looks_failed(self, out, i: int) -> bool:
        """Whether element ``i`` of an LM result should be started again (see ``restarts``)."""
        st, cost, c0 = out.status[i], float(out.cost[i]), float(out.initial_cost[i])
        return (
            not st.usable or not math.isfinite(cost) or cost > self.config.restart_cost_ratio * c0
        )

    def hypotheses(self, pose: np.ndarray) -> np.ndarray:
        """Start poses ``(K, 4, 4)`` around ``pose``: rotated by ``± restart_rotation_deg`` about the
        C-arm's x, y and z axes through the CT's centre (the first ``restarts`` of them)."""
        pose = torch.as_tensor(np.asarray(pose, dtype=np.float64))
        c = torch.as_tensor(self.center_world, dtype=torch.float64)
        a = math.radians(self.config.restart_rotation_deg)
        # out-of-plane (the C-arm's x and y axes, in world coordinates) first: the hardest directions
        order = ((0, 1.0), (1, 1.0), (0, -1.0), (1, -1.0), (2, 1.0), (2, -1.0))[
            : self.config.restarts
        ]
        if not order:
            return np.empty((0, 4, 4))
        R = so3_exp(torch.stack([pose[:3, axis] * sign * a for axis, sign in order]))
        return (make_pose(R, c - R @ c) @ pose).numpy()

    def _restart_failures(self, out, renderers, fixed, poses, mask, messages, views=()) -> None:
        """Multi-start for the elements of ``out`` that look failed (in place, see ``restarts``);
        ``views``: the further views of the batch (:class:`~.lm.SolverView`)."""
        t0 = time.perf_counter()
        for i in range(len(poses)):
            if (
                not self._looks_failed(out, i)
                or time.perf_counter() - t0 > self.config.restart_budget_s
            ):
                continue
            starts = self.hypotheses(poses[i])
            fx, mk = fixed[i : i + 1], None if mask is None else mask[i : i + 1]
            ends = [(out, i)]  # (LM result, element) of every usable end; the first run's first
            tried = 0
            for k in range(0, len(starts), 2):
                if time.perf_counter() - t0 > self.config.restart_budget_s:
                    break
                batch = starts[k : k + 2]
                n = len(batch)
                kw = {} if mk is None else {"mask": mk.expand(n, -1, -1, -1)}
                if views:
                    kw["views"] = self._element_views(views, i, n)
                res = self.solver.solve(
                    renderers,
                    fx.expand(n, -1, -1, -1),
                    torch.from_numpy(batch),
                    center=self.center_world,
                    **kw,
                )
                ends += [(res, j) for j in range(n) if res.status[j].usable]
                tried += n
            end_poses = torch.stack([r.pose[j].detach().to(torch.float64).cpu() for r, j in ends])
            costs = self._view_scores(renderers[-1], fx, end_poses, mk, views, i)
            best = int(torch.argmin(torch.nan_to_num(costs, nan=math.inf)))
            note = f"restarted from {tried} hypotheses ({time.perf_counter() - t0:.1f} s)"
            if best > 0:
                res, j = ends[best]
                for name in ("pose", "covariance", "cost"):
                    getattr(out, name)[i] = getattr(res, name)[j].to(getattr(out, name).dtype)
                out.status[i], out.message[i] = res.status[j], res.message[j]
                out.iterations[i] = out.iterations[i] + res.iterations[j]
                out.history[i] = out.history[i] + res.history[j]
                note += f": hypothesis {best} kept (lowest cost)"
            else:
                note += ": the first end kept (lowest cost)"
            messages[i] = _joined(messages[i], note)

    def _judged(
        self,
        res: RegistrationResult,
        message: str,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        mask: torch.Tensor | None,
        fine_only: bool,
        views=(),
    ) -> RegistrationResult:
        """One result with its trust numbers: the normalised cost (usable results; with further
        ``views`` of the element, the mean of the views'), the consistency from a second start
        (converged cold ones), ``message`` appended; a warm start that made no progress counts
        as converged."""
        status, msg = res.status, res.message
        if fine_only and status is Status.NO_PROGRESS:
            # the warm start is a previous registration's end (real progress was made there)
            status, msg = (
                Status.CONVERGED,
                f"the start (the last registration's end) is already the minimum ({msg})",
            )
        res = replace(res, status=status)
        if status.usable:
            pose = torch.from_numpy(res.pose)
            ratios = [
                self.solver.normalised_cost(
                    r, fx, p, m, offset_mm=self.config.reference_offset_mm, center=self.center_world
                )
                for r, fx, p, m in [
                    (renderer, fixed, pose, mask),
                    *((v.renderers[-1], v.fixed, pose @ v.offset[0].cpu(), v.mask) for v in views),
                ]
            ]
            res = replace(res, normalised_cost=ratios[0] if not views else float(np.mean(ratios)))
            # the consistency check for cold starts only: a warm start begins at a checked pose
            if status is Status.CONVERGED and self.trust.consistency and not fine_only:
                res = replace(
                    res, consistency_mm=self._consistency(renderer, fixed, res.pose, mask, views)
                )
        return replace(res, message=_joined(msg, message))

    def _start_poses(
        self,
        full: torch.Tensor,
        inits: list[np.ndarray | None],
        geometry: CarmGeometry,
        messages: list[str],
    ) -> tuple[np.ndarray, float]:
        """``(poses (N, 4, 4), regressor seconds)``: the given initial poses, the regressor's
        prediction where none was given, else the AP view; ``messages`` say which."""
        poses = np.stack([np.eye(4) if p is None else p for p in inits])
        missing = [i for i in range(len(inits)) if inits[i] is None]
        if not missing:
            return poses, 0.0
        if self.regressor is None:
            poses[missing] = self.default_pose()
            for i in missing:
                messages[i] = "initial pose: the AP view (no regressor, no initial pose given)"
            return poses, 0.0
        t1 = time.perf_counter()
        poses[missing] = self._regressor_poses(full[missing])
        t_reg = time.perf_counter() - t1
        note = _fov_mismatch(self.model_geometry, geometry)
        for i in missing:
            messages[i] = "initial pose from the regressor" + (
                f" (trained for another detector: {note})" if note else ""
            )
        return poses, t_reg

    def _regressor_poses(self, full: torch.Tensor) -> np.ndarray:
        """The regressor's poses ``(n, 4, 4)`` (float64) of images ``(n, 1, H, W)``."""
        cfg = self.regressor.config
        with torch.no_grad():
            x = resize_images(full, cfg.height, cfg.width)
            return self.regressor(x).detach().to("cpu", torch.float64).numpy()

    def _masks(
        self,
        arrays: list[np.ndarray],
        reg_geometry: CarmGeometry,
        solver,
        messages: list[str],
    ) -> tuple[torch.Tensor | None, list[float], list[np.ndarray | None]]:
        """``(mask (N, 1, h, w) on the registration geometry, masked fractions, valid masks)`` of
        what the CT cannot explain (``config.masking``, a solver that takes masks); ``messages``
        say what was masked. ``(None, zeros, Nones)`` otherwise."""
        n = len(arrays)
        if not (self.config.masking and _takes_mask(solver)):
            return None, [0.0] * n, [None] * n
        found = [detect_masks(a, self.mask_config) for a in arrays]
        fractions = [m.masked_fraction for m in found]
        valid_masks = [m.valid.cpu().numpy() for m in found]
        valid = torch.stack([m.valid for m in found])[:, None].to(self.device)
        mask = resize_mask(valid, reg_geometry.height, reg_geometry.width)
        for i, m in enumerate(found):
            if m.masked_fraction > 0:
                parts = ", ".join(
                    f"{k} {100 * v:.0f} %"
                    for k, v in m.fractions().items()
                    if k != "masked" and v > 0
                )
                messages[i] = _joined(
                    messages[i], f"masked {100 * m.masked_fraction:.0f} % ({parts})"
                )
        return mask, fractions, valid_masks
