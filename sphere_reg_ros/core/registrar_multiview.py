"""Several C-arm views of one patient pose (biplane, a second shot at a known orbital angle):
:meth:`RegistrarMultiView.register_views` and the pieces the registration passes use for the
further views (methods of :class:`~.registrar.Registrar`).

From one X-ray the depth along the beam is the weakest direction; a second view at a wide angle
sees that depth in its image plane. The views share one rigid pose: view ``k`` is at
``T_ct_from_carmk = T_ct_from_carm0 @ T_carm0_from_carmk`` with the relative C-arm poses known
(a biplane calibration, the positioner angles, TF). The LM stacks the views' residuals and
Jacobians (:class:`~.lm.SolverView`, :mod:`.lm_scale`); everything else a registration does (masks,
restarts, the trust numbers, the polish, the gates) runs over all views. One view is the plain
:meth:`~.registrar.Registrar.register` (the same code path, bit-identical).

Start pose without ``init_pose``: with a regressor, each view's prediction (moved into the first
view's frame) is a candidate and the one with the lowest summed cost over the views at the finest
registration scale is kept (the message says which view's); without a regressor, the AP view of
the first view, as for one view.

Trust numbers over views: the normalised cost is the mean of the views' normalised costs (each
about 1 when its image does not pin the pose down); the consistency check starts the multi-view
solve a second time. The gates' thresholds are those of one view.

:class:`RegistrarMultiView` is a mixin: it uses the registrar's solvers, renderers, ``device``,
``regressor`` and the passes of :mod:`.registrar_passes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .carm import CarmGeometry
from .lm import SolverView
from .registrar_inputs import _check_image, _check_pose, _Invalid, _joined, failed_result
from .result import RegistrationResult, Status

__all__ = ["RegistrarMultiView", "ExtraViews"]


@dataclass
class ExtraViews:
    """The further views of a batch of registrations (the first view is the batch itself).

    Attributes:
        arrays: per view, the N checked images (float32 (H_k, W_k)).
        geometries: per view, its detector.
        offsets: per view, (N, 4, 4) ``T_carm0_from_carmk``.
    """

    arrays: list[list[np.ndarray]]
    geometries: list[CarmGeometry]
    offsets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.geometries)


def _checked_offsets(offsets: Sequence, n_views: int) -> list[np.ndarray]:
    """``T_carm0_from_carmk`` of each view from the views' poses in any common frame (the first
    need not be the identity: each is taken relative to the first)."""
    if offsets is None or len(offsets) != n_views:
        got = "none" if offsets is None else len(offsets)
        raise _Invalid(f"{n_views} views need {n_views} relative C-arm poses, got {got}")
    poses = []
    for k, T in enumerate(offsets):
        try:
            poses.append(_check_pose(T))
        except _Invalid as exc:
            raise _Invalid(f"view {k + 1}: relative C-arm pose: {exc}".replace("initial pose ", ""))
    first_inv = np.linalg.inv(poses[0])
    return [first_inv @ T for T in poses]


class RegistrarMultiView:
    """Multi-view registration of :class:`~.registrar.Registrar` (see the module)."""

    def register_views(
        self,
        images: Sequence[np.ndarray],
        geometries: Sequence[CarmGeometry],
        offsets: Sequence[np.ndarray],
        init_pose: np.ndarray | None = None,
        *,
        fine_only: bool = False,
    ) -> RegistrationResult:
        """Register one patient pose from ``V`` views at known relative C-arm poses.

        Args:
            images: ``V`` float line-integral images ``(H_k, W_k)`` (log domain), one per view.
            geometries: ``V`` detectors (:class:`~.carm.CarmGeometry`), one per view.
            offsets: ``V`` C-arm poses ``(4, 4)`` in one common frame (e.g.
                ``T_carm0_from_carmk``, the first the identity; or the views' poses on the
                C-arm's base): only the poses relative to the first view count.
            init_pose: ``T_ct_from_carm0`` (the first view's) to start from; None → the
                regressor's best view, or the AP view of the first view (see the module).
            fine_only: as in :meth:`~.registrar.Registrar.register` (tracking).

        Returns:
            One :class:`~.result.RegistrationResult` whose ``pose`` is ``T_ct_from_carm0`` (view
            ``k``'s is ``pose @ T_carm0_from_carmk``) with the covariance of that shared pose.
            Never raises for bad input: ``INVALID_INPUT`` with a message naming the view.
        """
        t0 = time.perf_counter()
        try:
            if len(images) != len(geometries) or not len(images):
                raise _Invalid(
                    f"need as many geometries as images (at least one), got {len(images)} images "
                    f"and {len(geometries)} geometries"
                )
            rel = _checked_offsets(offsets, len(images))
            arrays = []
            for k, (img, g) in enumerate(zip(images, geometries)):
                if not isinstance(g, CarmGeometry):
                    raise _Invalid(f"view {k + 1}: geometry must be a CarmGeometry")
                try:
                    arrays.append(_check_image(img, g))
                except _Invalid as exc:
                    raise _Invalid(f"view {k + 1}: {exc}") from exc
            init = None if init_pose is None else _check_pose(init_pose)
        except (_Invalid, TypeError) as exc:
            return failed_result(
                Status.INVALID_INPUT, str(exc), None, {"total": time.perf_counter() - t0}
            )
        if len(arrays) == 1:
            return self.register(arrays[0], geometries[0], init, fine_only=fine_only)
        extra = ExtraViews(
            [[a] for a in arrays[1:]], list(geometries[1:]), [r[None] for r in rel[1:]]
        )
        return self._register_guarded(
            [arrays[0]], geometries[0], [init], t0, None, fine_only, extra
        )[0]

    # ------------------------------------------------------------------ the passes' view pieces
    def _solver_views(
        self, extra: ExtraViews | None, n_scales: int, fine_only: bool, solver, messages: list[str]
    ) -> list[SolverView]:
        """The further views as :class:`~.lm.SolverView` for ``solver`` (their images at the
        registration resolution, masks, renderers of the last ``n_scales`` scales); ``messages``
        get each view's masking note. Empty for one view."""
        if not extra:
            return []
        views = []
        for k in range(len(extra)):
            g, _, fixed, renderers = self._view_inputs(
                extra.arrays[k], extra.geometries[k], fine_only
            )
            if len(renderers) < n_scales:  # a smaller detector with fewer distinct scales
                renderers = renderers[:1] * (n_scales - len(renderers)) + renderers
            renderers = renderers[-n_scales:]
            notes = [""] * len(messages)
            mask, _, _ = self._masks(extra.arrays[k], g, solver, notes)
            for i, note in enumerate(notes):
                messages[i] = _joined(messages[i], note and f"view {k + 2}: {note}")
            off = torch.from_numpy(np.asarray(extra.offsets[k], dtype=np.float64))
            views.append(SolverView(renderers, fixed, off, mask))
        return views

    @staticmethod
    def _element_views(views: Sequence[SolverView], i: int, n: int = 1, finest: bool = False):
        """The further ``views`` of element ``i`` repeated ``n`` times (a solve of ``n`` starts of
        that element); ``finest``: with the finest renderer only."""
        return [
            SolverView(
                v.renderers[-1:] if finest else v.renderers,
                v.fixed[i : i + 1].expand(n, -1, -1, -1),
                torch.as_tensor(v.offset)[i : i + 1].expand(n, 4, 4),
                None if v.mask is None else v.mask[i : i + 1].expand(n, -1, -1, -1),
            )
            for v in views
        ]

    def _view_scores(
        self,
        renderer,
        fixed: torch.Tensor,
        poses: torch.Tensor,
        mask: torch.Tensor | None,
        views: Sequence[SolverView],
        i: int,
    ) -> torch.Tensor:
        """Costs ``(K,)`` of first-view poses ``(K, 4, 4)`` of element ``i`` summed over the views
        (each view with its own robust kernel scale, that of the first pose); ``fixed``/``mask``
        are the first view's image of element ``i``."""
        costs, _ = self.solver.score(renderer, fixed, poses, mask)
        for v in views:
            off = torch.as_tensor(v.offset)[i].to(poses)
            m = None if v.mask is None else v.mask[i : i + 1]
            costs = (
                costs + self.solver.score(v.renderers[-1], v.fixed[i : i + 1], poses @ off, m)[0]
            )
        return costs

    def _fused_starts(
        self,
        poses: np.ndarray,
        inits: list[np.ndarray | None],
        views: Sequence[SolverView],
        extra: ExtraViews,
        first: tuple,
        messages: list[str],
    ) -> None:
        """Where no initial pose was given and a regressor predicted the first view's start: each
        further view's prediction (moved into the first view's frame) competes; the lowest summed
        cost over the views is kept (``poses`` changed in place). ``first`` = (finest renderer,
        fixed images, mask) of the first view."""
        missing = [i for i in range(len(inits)) if inits[i] is None]
        if not (missing and views and self.regressor is not None):
            return
        renderer, fixed, mask = first
        preds = [
            self._regressor_poses(
                torch.from_numpy(np.stack([a[i] for i in missing]))[:, None].to(self.device)
            )
            for a in extra.arrays
        ]
        for j, i in enumerate(missing):
            cands = [poses[i]]
            for k in range(len(extra)):
                cands.append(preds[k][j] @ np.linalg.inv(extra.offsets[k][i]))
            stack = torch.from_numpy(np.stack(cands))
            m = None if mask is None else mask[i : i + 1]
            costs = self._view_scores(renderer, fixed[i : i + 1], stack, m, views, i)
            best = int(torch.argmin(torch.nan_to_num(costs, nan=float("inf"))))
            poses[i] = cands[best]
            messages[i] = _joined(
                messages[i],
                f"the regressor's start of view {best + 1} of {len(cands)} (lowest cost)",
            )
