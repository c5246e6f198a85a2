"""The registration API the ROS node, the CLI and notebooks use: regressor, then LM.

:class:`Registrar` holds the CT (resampled for rendering), the similarity (a trained
``SimilarityNet`` or the learning-free :class:`~.residuals.IntensityResiduals`), an optional pose
regressor and a cache of DRR renderers per (geometry, scale). ``register(image, geometry,
init_pose)`` never raises for bad input: it returns a :class:`~.result.RegistrationResult`
whose status says what happened (``INVALID_INPUT`` with a message for a wrong-size, wrong-type or
non-finite image, a bad geometry or pose).

Images are float line-integral images (log domain, ``(H, W)``, rows down, columns right) on the
detector described by ``geometry``. They are resampled to the registration resolution
(``config.resolution`` rows, columns in proportion; block means for integer factors, antialiased
bilinear otherwise) with ``geometry.resized`` so that the field of view is unchanged; the LM runs
coarse to fine over ``config.scales`` (fractions of that).

The parts of the class live beside it: settings in :mod:`.registrar_config`, input checks in
:mod:`.registrar_inputs`, detectors and rendering in :mod:`.registrar_views`, start poses, masks,
restarts, polish and trust numbers in :mod:`.registrar_passes`; this module builds the registrar
and runs a registration through them.

Threads: the registrar keeps no per-call state besides its renderer cache; call it from one
thread at a time (the ROS node's worker). On a loaded CPU, ``torch.set_num_threads(1)`` is often
much faster than the default for these small tensors.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from .carm import CarmGeometry
from .checkpoint import load_checkpoint
from .drr import DrrRenderer
from .lm import LevenbergMarquardt
from .masks import MaskConfig
from .registrar_config import (
    AUTO_ROBUST,
    DEFAULT_COVARIANCE_SCALE,
    DEFAULT_ROBUST_SCALE,
    INTENSITY_FITS,
    RegistrarConfig,
    _learning_free_residuals,
    resolve_device,
)
from .registrar_inputs import (
    _checked_batch,
    _refused_batch,
    failed_result,
)
from .registrar_multiview import ExtraViews, RegistrarMultiView
from .registrar_passes import RegistrationPasses
from .registrar_views import RegistrarViews
from .result import RegistrationResult, Status
from .trust import TrustConfig, apply_gates
from .volume import (
    Volume,
    bone_attenuation,
    hu_to_attenuation,
    load_example_ct,
    load_volume,
    resample,
)

__all__ = [
    "RegistrarConfig",
    "Registrar",
    "resolve_device",
    "AUTO_ROBUST",
    "DEFAULT_ROBUST_SCALE",
    "DEFAULT_COVARIANCE_SCALE",
    "INTENSITY_FITS",
]

log = logging.getLogger(__name__)


class Registrar(RegistrarViews, RegistrationPasses, RegistrarMultiView):
    """Register X-ray images of one CT: regressor (optional) then coarse-to-fine LM.

    Args:
        ct: the CT (HU). It is resampled to ``spacing_mm`` for rendering.
        similarity: a residual model with ``embed``/``residuals`` (e.g. ``SimilarityNet``);
            None → learning-free residuals (``config.residuals``).
        regressor: ``PoseRegressor`` (images → poses) for registrations without an initial
            pose; None → the AP view of the CT's centre is the default start.
        config: :class:`RegistrarConfig`.
        spacing_mm: voxel size for rendering (mm).
    """

    def __init__(
        self,
        ct: Volume,
        similarity=None,
        regressor=None,
        config: RegistrarConfig = RegistrarConfig(),
        spacing_mm: float = 2.0,
    ) -> None:
        if not isinstance(ct, Volume):
            raise ValueError(f"ct must be a Volume, got {type(ct).__name__}")
        if not (math.isfinite(spacing_mm) and spacing_mm > 0):
            raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
        self.config = config
        self.device = resolve_device(config.device)
        self.ct = ct
        self.spacing_mm = float(spacing_mm)
        render_ct = ct if np.allclose(ct.spacing, spacing_mm) else resample(ct, spacing_mm)
        self._mu = torch.as_tensor(hu_to_attenuation(render_ct.data))
        self._affine = render_ct.affine
        self.center_world = np.asarray(ct.center_world, dtype=np.float64)
        self.roi_world = self._roi(ct, render_ct, config.roi)
        self.learned = similarity is not None
        if similarity is None:
            similarity = _learning_free_residuals(config)
        if isinstance(similarity, torch.nn.Module):
            similarity = similarity.to(self.device).eval()
        self.similarity = similarity
        self._make_solvers(config)
        # the bone's own attenuation, rendered beside the whole DRR when the residuals weigh it
        self._channels = (
            torch.as_tensor(bone_attenuation(render_ct.data))[None]
            if getattr(similarity, "drr_channels", 1) > 1
            else None
        )
        self.regressor = regressor.to(self.device).eval() if regressor is not None else None
        self._renderers: dict[CarmGeometry, DrrRenderer] = {}
        self.mask_config = MaskConfig()
        #: the quality gates applied when ``config.gates`` (may be replaced between registrations,
        #: e.g. when the node's gate parameters change; no rebuild needed)
        self.trust: TrustConfig = config.trust
        self.model_geometry: CarmGeometry | None = None  # the detector the models were trained for
        self.source = (
            f"CT {ct.source} at {spacing_mm:g} mm; "
            + (
                "learned similarity"
                if self.learned
                else f"learning-free {config.residuals} residuals"
            )
            + (" + regressor" if regressor is not None else "")
        )

    def _make_solvers(self, config: RegistrarConfig) -> None:
        """The LM solvers of ``self.similarity``: cold (``solver``), tracking, the consistency
        check's; and the learning-free registrar that polishes a learned end (``config.polish``).
        """
        similarity = self.similarity
        #: with ``config.polish`` and a learned similarity: a learning-free registrar on the same CT
        #: that registers again from each learned end (:meth:`_polished`); None otherwise
        self._free = (
            Registrar(self.ct, config=replace(config, polish=False), spacing_mm=self.spacing_mm)
            if self.learned and config.polish
            else None
        )
        self.solver = LevenbergMarquardt(similarity, config.lm_config(learned=self.learned))
        # tracking registrations: own solver (narrower sampling window; its own render cache)
        self.tracking_solver = LevenbergMarquardt(
            similarity, config.lm_config(learned=self.learned, tracking=True)
        )
        # the consistency check's second starts: own solver, so they leave the tracking render cache alone
        self._check_solver = LevenbergMarquardt(
            similarity, config.lm_config(learned=self.learned, tracking=True)
        )

    def _roi(self, ct: Volume, render_ct: Volume, roi) -> np.ndarray:
        """The region-of-interest point (world mm) of ``config.roi``."""
        if not isinstance(roi, str):
            return np.asarray(roi, dtype=np.float64)
        if roi == "bone":
            bone = np.asarray(bone_attenuation(render_ct.data)) > 0
            if bone.any():
                ijk = np.argwhere(bone).mean(axis=0)
                return (render_ct.affine @ np.append(ijk, 1.0))[:3].astype(np.float64)
            log.warning("the CT has no bone voxels: the region of interest is its centre")
        return np.asarray(ct.center_world, dtype=np.float64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(
        cls,
        ct_path: str | None,
        model_path: str | None,
        config: RegistrarConfig = RegistrarConfig(),
        spacing_mm: float | None = None,
        force: bool = False,
    ) -> "Registrar":
        """CT from a file (None → the embedded example CT) and models from a checkpoint
        (None → learning-free; else :meth:`from_checkpoint`). The checkpoint is refused for
        another CT unless ``force``. ``spacing_mm`` None: the CT spacing the models were trained
        with, else 2 mm; the ray step is the training one unless ``config.ray_step_mm`` is set."""
        ct = load_example_ct()[0] if not ct_path else load_volume(ct_path)
        if not model_path:
            return cls(ct, config=config, spacing_mm=spacing_mm or 2.0)
        return cls.from_checkpoint(ct, model_path, config, spacing_mm=spacing_mm, force=force)

    @classmethod
    def from_checkpoint(
        cls,
        ct: Volume,
        model_path: str,
        config: RegistrarConfig = RegistrarConfig(),
        spacing_mm: float | None = None,
        force: bool = False,
        default_spacing_mm: float = 2.0,
    ) -> "Registrar":
        """A registrar of ``ct`` with the networks of the checkpoint ``model_path``.

        The checkpoint is loaded with :func:`~sphere_reg_ros.core.checkpoint.load_checkpoint`
        (``weights_only=True``, on ``config.device``) and refused for another CT unless
        ``force``. The CT is rendered at ``spacing_mm`` (mm) when given, else at the spacing the
        models were trained with, else at ``default_spacing_mm``; the ray step is the training one
        unless ``config.ray_step_mm`` is set. The loaded checkpoint (a ``core.checkpoint.Bundle``)
        is kept as ``bundle``, its C-arm geometry as ``model_geometry``.

        Raises:
            CheckpointError: the file cannot be used (it names the file and the problem).
        """
        bundle = load_checkpoint(
            model_path,
            ct=ct,
            geometry=None,
            force=force,
            map_location=resolve_device(config.device),
        )
        spacing = spacing_mm or bundle.working_spacing_mm or default_spacing_mm
        step = bundle.training.get("step_mm")
        if config.ray_step_mm is None and step:
            config = replace(config, ray_step_mm=float(step))
        reg = cls(
            ct,
            similarity=bundle.similarity,
            regressor=bundle.regressor,
            config=config,
            spacing_mm=float(spacing),
        )
        reg.bundle = bundle
        reg.model_geometry = bundle.geometry
        reg.source += f"; model {model_path}"
        return reg

    # ------------------------------------------------------------------ registration
    def register(
        self,
        image: np.ndarray,
        geometry: CarmGeometry,
        init_pose: np.ndarray | None = None,
        *,
        solver=None,
        fine_only: bool = False,
    ) -> RegistrationResult:
        """Register one image ``(H, W)`` (float, log domain) taken with ``geometry``.

        ``init_pose`` ``(4, 4)`` ``T_ct_from_carm`` (mm) to start from; None → the regressor, or
        the AP view without one. Never raises for bad input (see the module docstring).
        ``solver``: another optimiser with the LM's ``solve`` signature (e.g. a baseline from
        :mod:`.baselines`) to run instead of ``self.solver``. ``fine_only``: skip the coarse scales
        (tracking: the initial pose is already close, so the coarse pass only costs time; the
        default solver is then ``tracking_solver``).
        """
        return self.register_batch(
            [image],
            geometry,
            None if init_pose is None else [init_pose],
            solver=solver,
            fine_only=fine_only,
        )[0]

    def register_batch(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        geometry: CarmGeometry,
        init_poses: Sequence[np.ndarray | None] | np.ndarray | None = None,
        *,
        solver=None,
        fine_only: bool = False,
    ) -> list[RegistrationResult]:
        """Register ``N`` images ``(N, H, W)`` of one geometry, batched through the solver.

        ``init_poses``: ``(N, 4, 4)``, a list with None entries (regressor / default), or None.
        Timings per result are the batch's times divided by the number of valid images.
        """
        t0 = time.perf_counter()
        refused = _refused_batch(images, geometry, init_poses)
        if refused is not None:
            return refused
        results, valid, arrays, inits = _checked_batch(images, geometry, init_poses, t0)
        if valid:
            done = self._register_guarded(arrays, geometry, inits, t0, solver, fine_only)
            for i, res in zip(valid, done):
                results[i] = res
        return results  # type: ignore[return-value]

    def _register_guarded(
        self,
        arrays: list[np.ndarray],
        geometry: CarmGeometry,
        inits: list[np.ndarray | None],
        t0: float,
        solver,
        fine_only: bool,
        extra: ExtraViews | None = None,
    ) -> list[RegistrationResult]:
        """Checked images (and their ``extra`` views) registered, then polished where configured;
        an exception becomes a failed result for each image (never raised)."""
        try:
            default = self.tracking_solver if fine_only else self.solver
            done = self._register_valid(
                arrays, inits, geometry, t0, solver or default, fine_only, extra
            )
            if self._free is not None and solver is None and not fine_only:
                done = self._polished(arrays, geometry, done, extra)
        except Exception as exc:  # never let a bad case take the caller down
            log.exception("registration failed")
            status = Status.INVALID_INPUT if isinstance(exc, ValueError) else Status.DIVERGED
            total = (time.perf_counter() - t0) / len(arrays)
            done = [
                failed_result(status, f"{type(exc).__name__}: {exc}", init, {"total": total})
                for init in inits
            ]
        return done

    def _register_valid(
        self,
        arrays: list[np.ndarray],
        inits: list[np.ndarray | None],
        geometry: CarmGeometry,
        t0: float,
        solver,
        fine_only: bool = False,
        extra: ExtraViews | None = None,
    ) -> list[RegistrationResult]:
        """Checked images registered: start poses, masks, the solver over the scales (then the
        restarts and the polish where configured), the trust numbers, timings and gates;
        ``extra``: further views of each image (:mod:`.registrar_multiview`)."""
        n = len(arrays)
        reg_geometry, full, fixed, renderers = self._view_inputs(arrays, geometry, fine_only)
        messages = [""] * n
        poses, t_reg = self._start_poses(full, inits, geometry, messages)
        t2 = time.perf_counter()
        mask, fractions, valid_masks = self._masks(arrays, reg_geometry, solver, messages)
        kwargs = {} if mask is None else {"mask": mask}
        views = self._solver_views(extra, len(renderers), fine_only, solver, messages)
        if views:
            first = (renderers[-1], fixed, mask)
            self._fused_starts(poses, inits, views, extra, first, messages)
            kwargs["views"] = views
        out = solver.solve(
            renderers, fixed, torch.from_numpy(poses), center=self.center_world, **kwargs
        )
        if self.config.restarts and not fine_only and solver is self.solver:
            self._restart_failures(out, renderers, fixed, poses, mask, messages, views)
        results = out.to_results()
        t_lm = time.perf_counter() - t2
        t3 = time.perf_counter()
        final = [
            self._judged(
                replace(
                    res,
                    masked_fraction=fractions[i],
                    valid_mask=valid_masks[i],
                    roi_mm=self.roi_world.copy(),
                ),
                messages[i],
                renderers[-1],
                fixed[i : i + 1],
                None if mask is None else mask[i : i + 1],
                fine_only,
                self._element_views(views, i, finest=True),
            )
            for i, res in enumerate(results)
        ]
        t_trust = (time.perf_counter() - t3) / n
        total = time.perf_counter() - t0
        timings = {"regressor": t_reg / n, "lm": t_lm / n, "trust": t_trust, "total": total / n}
        final = [replace(r, timings=dict(timings)) for r in final]
        if self.config.gates:
            final = [apply_gates(r, self.trust) for r in final]
        return final
