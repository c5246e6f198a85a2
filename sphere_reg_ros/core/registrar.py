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

Threads: the registrar keeps no per-call state besides its renderer cache; call it from one
thread at a time (the ROS node's worker). On a loaded CPU, ``torch.set_num_threads(1)`` is often
much faster than the default for these small tensors.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from .carm import CarmGeometry
from .checkpoint import load_checkpoint
from .drr import DrrRenderer
from .lm import LevenbergMarquardt, LMConfig, resize_images
from .lm_steps import ROBUST_KERNELS
from .masks import MaskConfig, detect_masks, resize_mask
from .residuals import IntensityResiduals
from .result import RegistrationResult, Status, point_error
from .trust import TrustConfig, apply_gates
from .views import ap_pose
from .volume import (
    Volume,
    bone_attenuation,
    hu_to_attenuation,
    load_example_ct,
    load_volume,
    resample,
)

__all__ = ["RegistrarConfig", "Registrar", "resolve_device", "AUTO_ROBUST", "DEFAULT_ROBUST_SCALE"]

log = logging.getLogger(__name__)

_MAX_RENDERERS = 12

#: Robust kernel of ``robust="auto"`` for the learning-free residuals, and each kernel's default
#: scale (robust spreads); chosen on the validation split of the degraded benchmark
#: (docs/ROBUSTNESS.md).
AUTO_ROBUST = "tukey"
DEFAULT_ROBUST_SCALE = {
    "none": 2.0,
    "cauchy": 2.0,
    "huber": 2.0,
    "geman-mcclure": 2.0,
    "tukey": 4.0,
}
#: Factor on the LM's covariance (``RegistrarConfig.covariance_scale``), calibrated on the
#: validation splits so that the 95 % error ellipsoid at the region of interest covers about
#: 95 % of the true errors (docs/TRUST.md).
DEFAULT_COVARIANCE_SCALE = 36.0
#: Intensity models the learning-free residuals can fit (``RegistrarConfig.intensity_fit``).
INTENSITY_FITS = ("none", "bone", "curve", "bone+curve")


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device of a device setting (registrar, training, evaluation, the node).

    ``"auto"``: cuda when available, else cpu; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` as given.

    Raises:
        ValueError: any other value, or a cuda device on a machine without CUDA.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device)
    if text not in ("cpu", "cuda") and re.fullmatch(r"cuda:\d+", text) is None:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {text!r} requested but CUDA is not available (use 'cpu' or 'auto')"
        )
    return torch.device(text)


@dataclass(frozen=True)
class RegistrarConfig:
    """Registration settings (the ROS parameters and the CLI mirror these).

    Attributes:
        resolution: registration image height in pixels (width in proportion).
        scales: coarse-to-fine fractions of ``resolution`` (last should be 1.0).
        max_iterations: LM iteration cap per scale.
        step_tol_mm, step_tol_rad, cost_tol: LM stopping tolerances (see ``LMConfig``).
        damping: ``"marquardt"`` or ``"levenberg"``; ``lambda_init``: initial damping (relative).
        rotation_scale_mm: characteristic length balancing rotations against translations.
        max_translation_mm, max_rotation_rad: divergence limits from the initial pose.
        residuals: learning-free model used without a similarity network:
            ``"intensity+gradient"`` (normalised intensities and gradients; the default, as
            evaluated) or ``"intensity"`` (normalised intensity, cost = 1 − NCC).
        residual_levels: pyramid levels of the learning-free residuals.
        local_window: learning-free residuals standardise intensities over windows of this
            fraction of the image height (local NCC; robust to scatter, heel effect, bone
            contrast); 0 = globally.
        intensity_fit: an intensity model the learning-free residuals fit to each X-ray in closed
            form at every evaluation (``residuals.fit_intensity``) before comparing: ``"bone"``
            (the bone's DRR weighed freely against the whole DRR: bone contrast), ``"curve"``
            (a cubic of the DRR: beam hardening, detector response), ``"bone+curve"``, or
            ``"none"``. Default ``"bone"``, chosen on the validation split (docs/ROBUSTNESS.md).
        robust: robust kernel of the LM (``"none"``, ``"cauchy"``, ``"huber"``,
            ``"geman-mcclure"``, ``"tukey"``); ``"auto"`` = :data:`AUTO_ROBUST` for the
            learning-free residuals (metal, noise, scatter are outliers there), none for a learned
            similarity.
        masking: detect what the CT cannot explain in each X-ray (collimator shutters, metal,
            saturated pixels: :mod:`.masks`) and give it zero weight in the LM.
        robust_scale: kernel scale in units of the residuals' robust spread; 0 = the kernel's
            default (:data:`DEFAULT_ROBUST_SCALE`, chosen on the validation split).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        render_max_size: largest side rendered by :meth:`Registrar.render` (then upsampled).
        ray_step_mm: spacing of the DRR samples along each ray (None: the CT's voxel size;
            a model is best used with the step it was trained with, see ``from_files``).
        tracking_window_margin_mm: depth margin of the DRR sampling window for tracking
            registrations (``fine_only``; cold ones use ``LMConfig.window_margin_mm``, 60 mm): they
            move by about a millimetre, so fewer samples per ray suffice (the LM widens the window
            if a trial pose leaves it).
        restarts: when a cold registration looks failed (not usable, or its final cost above
            ``restart_cost_ratio`` times its initial cost), start again from up to this many
            hypotheses around the initial pose (rotated by ``± restart_rotation_deg`` about the
            C-arm's axes through the CT's centre; at most 6), in pairs until
            ``restart_budget_s`` is spent, and keep the end with the lowest cost (all scored with
            one kernel scale). 0 = off. Default 4 hypotheses and a ratio of 0.35, chosen on
            the validation split (docs/ROBUSTNESS.md); the budget is checked between pairs, so a
            restart may take up to about twice it.
        roi: where the uncertainty is expressed and the consistency measured: ``"bone"`` (the
            centroid of the CT's bone, the default), ``"center"`` (the CT's centre) or three
            numbers (a world point, mm, e.g. the centroid of the surgical landmarks).
        covariance_scale: factor on the LM's covariance (after its correction for correlated
            residuals), calibrated on validation benchmarks (docs/TRUST.md).
        reference_offset_mm: offsets of the reference poses of the normalised cost
            (:meth:`.lm.LevenbergMarquardt.normalised_cost`).
        gates: apply the quality gates of ``trust`` (:mod:`.trust`): a converged registration that
            fails one is ``Status.REJECTED``. False: the results keep the solver's status (the
            features are still computed, for calibration).
        trust: :class:`~.trust.TrustConfig` (thresholds; the consistency check's offset).
        polish: with a learned similarity, refine its end on the learning-free residuals of this
            configuration (``residuals``, ``intensity_fit``, ``robust``) at the finest scale, and
            judge the result (normalised cost, consistency, gates) on those residuals, which the
            trust thresholds were calibrated on. No effect without a learned similarity.
    """

    resolution: int = 64
    scales: tuple[float, ...] = (0.5, 1.0)
    max_iterations: int = 20
    step_tol_mm: float = 0.02
    step_tol_rad: float = 1e-4
    cost_tol: float = 1e-4
    damping: str = "marquardt"
    lambda_init: float = 1e-3
    rotation_scale_mm: float = 100.0
    max_translation_mm: float = 300.0
    max_rotation_rad: float = 1.2
    residuals: str = "intensity+gradient"
    residual_levels: int = 1
    local_window: float = 0.125
    intensity_fit: str = "bone"
    robust: str = "auto"
    robust_scale: float = 0.0
    masking: bool = True
    device: str = "cpu"
    render_max_size: int = 256
    ray_step_mm: float | None = None
    tracking_window_margin_mm: float = 10.0
    restarts: int = 4
    restart_rotation_deg: float = 10.0
    restart_cost_ratio: float = 0.35
    restart_budget_s: float = 10.0
    roi: str | tuple[float, float, float] = "bone"
    covariance_scale: float = DEFAULT_COVARIANCE_SCALE
    reference_offset_mm: float = 5.0
    gates: bool = True
    trust: TrustConfig = TrustConfig()
    polish: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if isinstance(self.roi, str):
            if self.roi not in ("bone", "center"):
                raise ValueError(
                    f"roi must be 'bone', 'center' or three numbers (mm), got {self.roi!r}"
                )
        else:
            try:
                point = tuple(float(v) for v in self.roi)
            except (TypeError, ValueError):
                point = ()
            if len(point) != 3 or not all(math.isfinite(v) for v in point):
                raise ValueError(
                    f"roi must be 'bone', 'center' or three finite numbers (mm), got {self.roi!r}"
                )
            object.__setattr__(self, "roi", point)
        if isinstance(self.trust, dict):
            object.__setattr__(self, "trust", TrustConfig(**self.trust))
        if not isinstance(self.trust, TrustConfig):
            raise ValueError(f"trust must be a TrustConfig, got {type(self.trust).__name__}")
        if not isinstance(self.gates, bool):
            raise ValueError(f"gates must be a bool, got {self.gates!r}")
        if not (math.isfinite(self.reference_offset_mm) and self.reference_offset_mm > 0):
            raise ValueError(
                f"reference_offset_mm must be finite and > 0, got {self.reference_offset_mm!r}"
            )
        if not (isinstance(self.resolution, int) and 8 <= self.resolution <= 2048):
            raise ValueError(f"resolution must be an int in [8, 2048], got {self.resolution!r}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be fractions in (0, 1], got {self.scales}")
        if self.robust != "auto" and self.robust not in ROBUST_KERNELS:
            raise ValueError(
                f"robust must be 'auto' or one of {', '.join(ROBUST_KERNELS)}, got {self.robust!r}"
            )
        if not isinstance(self.masking, bool):
            raise ValueError(f"masking must be a bool, got {self.masking!r}")
        if not isinstance(self.polish, bool):
            raise ValueError(f"polish must be a bool, got {self.polish!r}")
        if self.residuals not in ("intensity", "intensity+gradient"):
            raise ValueError(
                f"residuals must be 'intensity' or 'intensity+gradient', got {self.residuals!r}"
            )
        if self.intensity_fit not in INTENSITY_FITS:
            raise ValueError(
                f"intensity_fit must be one of {', '.join(INTENSITY_FITS)}, got {self.intensity_fit!r}"
            )
        if not (
            math.isfinite(self.tracking_window_margin_mm) and self.tracking_window_margin_mm > 0
        ):
            raise ValueError(
                f"tracking_window_margin_mm must be > 0, got {self.tracking_window_margin_mm}"
            )
        if self.ray_step_mm is not None and not (
            math.isfinite(self.ray_step_mm) and self.ray_step_mm > 0
        ):
            raise ValueError(f"ray_step_mm must be > 0 (or None), got {self.ray_step_mm}")
        if not (isinstance(self.restarts, int) and 0 <= self.restarts <= 6):
            raise ValueError(f"restarts must be an int in [0, 6], got {self.restarts!r}")
        for name in ("restart_rotation_deg", "restart_cost_ratio", "restart_budget_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        if self.device != "auto":
            torch.device(self.device)  # raises for a malformed name
        self.lm_config()  # validates the solver settings

    def lm_config(
        self, unrolled: bool = False, learned: bool = False, tracking: bool = False
    ) -> LMConfig:
        """The solver settings of this configuration (``learned``: for a learned similarity;
        ``tracking``: for registrations that start within about a millimetre)."""
        robust = ("none" if learned else AUTO_ROBUST) if self.robust == "auto" else self.robust
        margin = {"window_margin_mm": self.tracking_window_margin_mm} if tracking else {}
        return LMConfig(
            **margin,
            max_iterations=self.max_iterations,
            step_tol_mm=self.step_tol_mm,
            step_tol_rad=self.step_tol_rad,
            cost_tol=self.cost_tol,
            damping=self.damping,
            lambda_init=self.lambda_init,
            rotation_scale_mm=self.rotation_scale_mm,
            max_translation_mm=self.max_translation_mm,
            max_rotation_rad=self.max_rotation_rad,
            robust=robust,
            robust_scale=self.robust_scale or DEFAULT_ROBUST_SCALE.get(robust, 2.0),
            unrolled=unrolled,
            covariance_scale=self.covariance_scale,
        )

    @classmethod
    def from_dict(cls, values: dict) -> "RegistrarConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown RegistrarConfig keys: {sorted(unknown)}")
        return cls(**values)


def _learning_free_residuals(config: RegistrarConfig) -> IntensityResiduals:
    """The learning-free residual model of ``config`` (``residuals``, ``intensity_fit``)."""
    return IntensityResiduals(
        gradients=config.residuals == "intensity+gradient",
        levels=config.residual_levels,
        local_window=config.local_window,
        curve_degree=3 if "curve" in config.intensity_fit else 0,
        materials="bone" in config.intensity_fit,
        fit_min_height=config.resolution,
    )


def _joined(*parts: str) -> str:
    """The non-empty ``parts`` joined by "; " (messages of one registration)."""
    return "; ".join(p for p in parts if p)


@functools.lru_cache(maxsize=32)
def _solve_takes_mask(solve_type: type) -> bool:
    return "mask" in inspect.signature(solve_type.solve).parameters


def _takes_mask(solver) -> bool:
    """Whether ``solver.solve`` accepts ``mask=`` (the LM does; some baselines do not), per type."""
    if not callable(getattr(type(solver), "solve", None)):  # solve set on the instance
        return "mask" in inspect.signature(solver.solve).parameters
    return _solve_takes_mask(type(solver))


class _Invalid(ValueError):
    """Bad input to one registration (becomes Status.INVALID_INPUT)."""


def _failed(
    status: Status, message: str, pose: np.ndarray | None, timings: dict | None = None
) -> RegistrationResult:
    pose = np.full((4, 4), np.nan) if pose is None else np.asarray(pose, dtype=np.float64)
    return RegistrationResult(
        pose=pose,
        covariance=np.full((6, 6), np.nan),
        cost=math.nan,
        initial_cost=math.nan,
        iterations=0,
        status=status,
        message=message,
        timings=dict(timings or {}),
        history=[],
    )


def _fov_mismatch(trained: CarmGeometry | None, actual: CarmGeometry) -> str:
    """What differs physically between two detectors (sdd, size in mm, principal point); ''."""
    if trained is None:
        return ""
    a = {
        "sdd": trained.sdd,
        "width_mm": trained.width * trained.delx,
        "height_mm": trained.height * trained.dely,
        "x0": trained.x0,
        "y0": trained.y0,
    }
    b = {
        "sdd": actual.sdd,
        "width_mm": actual.width * actual.delx,
        "height_mm": actual.height * actual.dely,
        "x0": actual.x0,
        "y0": actual.y0,
    }
    return ", ".join(
        f"{k} {a[k]:g} vs {b[k]:g}"
        for k in a
        if not math.isclose(a[k], b[k], rel_tol=1e-3, abs_tol=1e-3 * max(1.0, a["sdd"] / 1000))
    )


def _check_image(image: Any, geometry: CarmGeometry) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise _Invalid(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise _Invalid(f"image must be 2-D (H, W), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise _Invalid(
            f"image must be a float line-integral image (log domain), got dtype {image.dtype}; "
            "convert raw intensities with log(I0) - log(I)"
        )
    if image.shape != (geometry.height, geometry.width):
        raise _Invalid(
            f"image is {image.shape[0]}x{image.shape[1]} but the geometry is "
            f"{geometry.height}x{geometry.width}"
        )
    if not np.all(np.isfinite(image)):
        raise _Invalid(
            f"image contains {int(np.size(image) - np.count_nonzero(np.isfinite(image)))} NaN or inf pixels"
        )
    if float(image.max()) - float(image.min()) <= 1e-12 * max(1.0, float(np.abs(image).max())):
        raise _Invalid("image is constant (no contrast to register)")
    return image.astype(np.float32, copy=False)


def _check_pose(pose: Any) -> np.ndarray:
    if isinstance(pose, torch.Tensor):
        pose = pose.detach().cpu().numpy()
    try:
        T = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _Invalid(f"initial pose is not numeric ({exc})") from exc
    if T.shape == (1, 4, 4):
        T = T[0]
    if T.shape != (4, 4):
        raise _Invalid(f"initial pose must be 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise _Invalid("initial pose contains NaN or inf")
    R = T[:3, :3]
    if (
        np.abs(R.T @ R - np.eye(3)).max() > 1e-3
        or np.linalg.det(R) <= 0
        or np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-6
    ):
        raise _Invalid(
            "initial pose is not a rigid transform (rotation not orthonormal or last row not 0 0 0 1)"
        )
    return T


class Registrar:
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
        #: the learning-free solver that polishes a learned end (``config.polish``), and its own
        #: solver for the consistency check's second starts; None without
        self._polisher = self._polish_check = None
        if self.learned and config.polish:
            free = _learning_free_residuals(config)
            self._polisher = LevenbergMarquardt(free, config.lm_config(tracking=True))
            self._polish_check = LevenbergMarquardt(free, config.lm_config(tracking=True))
        # the bone's own attenuation, rendered beside the whole DRR when the residuals weigh it
        wanted = [similarity] + ([self._polisher.model] if self._polisher is not None else [])
        self._channels = (
            torch.as_tensor(bone_attenuation(render_ct.data))[None]
            if any(getattr(m, "drr_channels", 1) > 1 for m in wanted)
            else None
        )
        self.regressor = regressor.to(self.device).eval() if regressor is not None else None
        self.solver = LevenbergMarquardt(similarity, config.lm_config(learned=self.learned))
        # tracking registrations: own solver (narrower sampling window; its own render cache)
        self.tracking_solver = LevenbergMarquardt(
            similarity, config.lm_config(learned=self.learned, tracking=True)
        )
        # the consistency check's second starts: own solver, so they leave the tracking render cache alone
        self._check_solver = LevenbergMarquardt(
            similarity, config.lm_config(learned=self.learned, tracking=True)
        )
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

    # ------------------------------------------------------------------ geometry
    @property
    def _multiple(self) -> int:
        """Image sizes must be multiples of this (the similarity network's downsampling)."""
        cfg = getattr(self.similarity, "config", None)
        return int(getattr(cfg, "downsample", 1) or 1)

    def registration_geometry(self, geometry: CarmGeometry) -> CarmGeometry:
        """``geometry`` resized to the registration resolution (same field of view)."""
        m = self._multiple
        h = max(m, int(round(self.config.resolution / m)) * m)
        w = max(m, int(round(self.config.resolution * geometry.width / geometry.height / m)) * m)
        return geometry.resized(h, w)

    def scale_geometries(self, geometry: CarmGeometry) -> list[CarmGeometry]:
        """Coarse-to-fine geometries for a registration geometry (sizes multiples of the model's)."""
        m, out = self._multiple, []
        for s in self.config.scales:
            h = max(m, int(round(geometry.height * s / m)) * m)
            w = max(m, int(round(geometry.width * s / m)) * m)
            g = geometry.resized(h, w)
            if not out or out[-1] != g:
                out.append(g)
        return out

    def renderer(self, geometry: CarmGeometry) -> DrrRenderer:
        """The (cached) DRR renderer of ``geometry``."""
        r = self._renderers.get(geometry)
        if r is None:
            if len(self._renderers) >= _MAX_RENDERERS:
                self._renderers.pop(next(iter(self._renderers)))
            # the bone's DRR only where the residuals fit it (see IntensityResiduals.fit_min_height)
            fits = geometry.height >= getattr(self.similarity, "fit_min_height", 0)
            r = DrrRenderer(
                self._mu,
                self._affine,
                geometry,
                step_mm=self.config.ray_step_mm,
                channels=self._channels if fits else None,
            ).to(self.device)
            self._renderers[geometry] = r
        return r

    def default_pose(self) -> np.ndarray:
        """The AP view aimed at the CT's centre (``views.ap_pose``), (4, 4)."""
        return ap_pose(self.center_world)[0].numpy()

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
        try:
            n = len(images)
        except TypeError:
            return [
                _failed(
                    Status.INVALID_INPUT,
                    f"images must be a sequence or (N, H, W) array, got {type(images).__name__}",
                    None,
                )
            ]
        if not isinstance(geometry, CarmGeometry):
            return [
                _failed(
                    Status.INVALID_INPUT,
                    f"geometry must be a CarmGeometry, got {type(geometry).__name__}",
                    None,
                )
                for _ in range(n)
            ]
        if init_poses is not None and len(init_poses) != n:
            return [
                _failed(
                    Status.INVALID_INPUT, f"{len(init_poses)} initial poses for {n} images", None
                )
                for _ in range(n)
            ]
        results: list[RegistrationResult | None] = [None] * n
        valid, arrays, inits = [], [], []
        for i in range(n):
            init = None if init_poses is None else init_poses[i]
            try:
                arrays.append(_check_image(images[i], geometry))
                inits.append(None if init is None else _check_pose(init))
                valid.append(i)
            except _Invalid as exc:
                if len(arrays) > len(inits):
                    arrays.pop()
                results[i] = _failed(
                    Status.INVALID_INPUT, str(exc), None, {"total": time.perf_counter() - t0}
                )
        if valid:
            try:
                default = self.tracking_solver if fine_only else self.solver
                done = self._register_valid(
                    arrays, inits, geometry, t0, solver or default, fine_only
                )
            except Exception as exc:  # never let a bad case take the caller down
                log.exception("registration failed")
                status = Status.INVALID_INPUT if isinstance(exc, ValueError) else Status.DIVERGED
                total = (time.perf_counter() - t0) / len(valid)
                done = [
                    _failed(status, f"{type(exc).__name__}: {exc}", init, {"total": total})
                    for init in inits
                ]
            for i, res in zip(valid, done):
                results[i] = res
        return results  # type: ignore[return-value]

    def _register_valid(
        self,
        arrays: list[np.ndarray],
        inits: list[np.ndarray | None],
        geometry: CarmGeometry,
        t0: float,
        solver,
        fine_only: bool = False,
    ) -> list[RegistrationResult]:
        n = len(arrays)
        reg_geometry = self.registration_geometry(geometry)
        full = torch.from_numpy(np.stack(arrays))[:, None].to(self.device)
        fixed = resize_images(full, reg_geometry.height, reg_geometry.width)
        messages = [""] * n
        t_reg = 0.0
        missing = [i for i in range(n) if inits[i] is None]
        poses = np.stack([np.eye(4) if p is None else p for p in inits])
        if missing:
            if self.regressor is not None:
                t1 = time.perf_counter()
                cfg = self.regressor.config
                with torch.no_grad():
                    x = resize_images(full[missing], cfg.height, cfg.width)
                    pred = self.regressor(x).detach().to("cpu", torch.float64).numpy()
                poses[missing] = pred
                t_reg = time.perf_counter() - t1
                note = _fov_mismatch(self.model_geometry, geometry)
                for i in missing:
                    messages[i] = "initial pose from the regressor" + (
                        f" (trained for another detector: {note})" if note else ""
                    )
            else:
                poses[missing] = self.default_pose()
                for i in missing:
                    messages[i] = "initial pose: the AP view (no regressor, no initial pose given)"
        scales = self.scale_geometries(reg_geometry)
        renderers = [self.renderer(g) for g in (scales[-1:] if fine_only else scales)]
        t2 = time.perf_counter()
        kwargs, fractions, valid_masks = {}, [0.0] * n, [None] * n
        if self.config.masking and _takes_mask(solver):
            found = [detect_masks(a, self.mask_config) for a in arrays]
            fractions = [m.masked_fraction for m in found]
            valid_masks = [m.valid.cpu().numpy() for m in found]
            valid = torch.stack([m.valid for m in found])[:, None].to(self.device)
            kwargs["mask"] = resize_mask(valid, reg_geometry.height, reg_geometry.width)
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
        out = solver.solve(
            renderers, fixed, torch.from_numpy(poses), center=self.center_world, **kwargs
        )
        if self.config.restarts and not fine_only and solver is self.solver:
            self._restart_failures(out, renderers, fixed, poses, kwargs.get("mask"), messages)
        results = out.to_results()
        mask = kwargs.get("mask")
        judge, check = self.solver, self._check_solver
        if self._polisher is not None and not fine_only and solver is self.solver:
            results = self._polish(results, renderers[-1], fixed, mask, messages)
            judge, check = self._polisher, self._polish_check
        t_lm = time.perf_counter() - t2
        t3 = time.perf_counter()
        final = []
        for i, res in enumerate(results):
            status, msg = res.status, res.message
            if fine_only and status is Status.NO_PROGRESS:
                # the warm start is a previous registration's end (real progress was made there)
                status, msg = (
                    Status.CONVERGED,
                    f"the start (the last registration's end) is already the minimum ({msg})",
                )
            res = replace(
                res,
                status=status,
                masked_fraction=fractions[i],
                valid_mask=valid_masks[i],
                roi_mm=self.roi_world.copy(),
            )
            if status.usable:
                m = None if mask is None else mask[i : i + 1]
                res = replace(
                    res,
                    normalised_cost=judge.normalised_cost(
                        renderers[-1],
                        fixed[i : i + 1],
                        torch.from_numpy(res.pose),
                        m,
                        offset_mm=self.config.reference_offset_mm,
                        center=self.center_world,
                    ),
                )
                # the consistency check for cold starts only: a warm start begins at a checked pose
                if status is Status.CONVERGED and self.trust.consistency and not fine_only:
                    res = replace(
                        res,
                        consistency_mm=self._consistency(
                            renderers[-1], fixed[i : i + 1], res.pose, m, check
                        ),
                    )
            final.append(replace(res, message=_joined(msg, messages[i])))
        t_trust = (time.perf_counter() - t3) / n
        total = time.perf_counter() - t0
        timings = {"regressor": t_reg / n, "lm": t_lm / n, "trust": t_trust, "total": total / n}
        final = [replace(r, timings=dict(timings)) for r in final]
        if self.config.gates:
            final = [apply_gates(r, self.trust) for r in final]
        return final

    def _consistency(
        self,
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        pose: np.ndarray,
        mask: torch.Tensor | None,
        solver=None,
    ) -> float:
        """Distance (mm, at the region of interest) between ``pose`` and where a second start ends:
        ``pose`` moved by ``trust.consistency_offset_mm`` along the C-arm's x axis and rotated by
        ``offset / 100`` rad about its y axis through the CT's centre (finest scale only), with
        ``solver`` (default the consistency solver of the registrar's own similarity)."""
        from .geometry import make_pose, so3_exp

        d = self.trust.consistency_offset_mm
        T = torch.as_tensor(pose, dtype=torch.float64)
        c = torch.as_tensor(self.center_world, dtype=torch.float64)
        R = so3_exp(T[:3, 1] * (d / 100.0))
        start = (
            make_pose(R, c - R @ c) @ make_pose(torch.eye(3, dtype=torch.float64), d * T[:3, 0]) @ T
        )
        kw = {} if mask is None else {"mask": mask}
        out = (solver or self._check_solver).solve(
            [renderer], fixed, start[None], center=self.center_world, **kw
        )
        if not out.status[0].usable:
            return math.inf
        end = out.pose[0].detach().to("cpu", torch.float64).numpy()
        return float(
            np.linalg.norm(point_error(end, np.asarray(pose, dtype=np.float64), self.roi_world))
        )

    def _polish(
        self,
        results: list[RegistrationResult],
        renderer: DrrRenderer,
        fixed: torch.Tensor,
        mask: torch.Tensor | None,
        messages: list[str],
    ) -> list[RegistrationResult]:
        """The learned ends ``results`` refined by the learning-free solver at the finest scale
        (``config.polish``). An element keeps its learned result where the polish fails; a polish
        that makes no progress confirms the learned end (it is already the minimum)."""
        starts = torch.from_numpy(np.stack([r.pose for r in results]))
        kw = {} if mask is None else {"mask": mask}
        polished = self._polisher.solve(
            [renderer], fixed, starts, center=self.center_world, **kw
        ).to_results()
        out = []
        for i, (learned, res) in enumerate(zip(results, polished)):
            if res.status is Status.NO_PROGRESS and learned.status.usable:
                res = replace(res, status=learned.status)
            if not res.status.usable:
                messages[i] = _joined(
                    messages[i], f"polish failed ({res.message}); learned end kept"
                )
                out.append(learned)
                continue
            shift = float(np.linalg.norm(point_error(res.pose, learned.pose, self.roi_world)))
            messages[i] = _joined(
                messages[i],
                f"learned end ({learned.status.value}, {learned.iterations} iterations) polished "
                f"on the learning-free residuals: {res.iterations} iterations, {shift:.2f} mm",
            )
            out.append(replace(res, iterations=learned.iterations + res.iterations))
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
        from .geometry import make_pose, so3_exp

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

    def _restart_failures(self, out, renderers, fixed, poses, mask, messages) -> None:
        """Multi-start for the elements of ``out`` that look failed (in place, see ``restarts``)."""
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
            costs, _ = self.solver.score(renderers[-1], fx, end_poses, mk)
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

    # ------------------------------------------------------------------ rendering
    def render(self, pose: np.ndarray, geometry: CarmGeometry) -> np.ndarray:
        """DRR ``(H, W)`` float32 (line integrals) of the CT at ``pose`` (4, 4) on ``geometry``.

        Rendered at most ``config.render_max_size`` pixels per side and resized to ``(H, W)``.
        Raises ValueError for a bad pose or geometry.
        """
        T = _check_pose(pose)
        if not isinstance(geometry, CarmGeometry):
            raise ValueError(f"geometry must be a CarmGeometry, got {type(geometry).__name__}")
        side = max(geometry.height, geometry.width)
        g = geometry
        if side > self.config.render_max_size:
            f = self.config.render_max_size / side
            g = geometry.resized(
                max(1, round(geometry.height * f)), max(1, round(geometry.width * f))
            )
        r = self.renderer(g)
        with torch.no_grad():
            img = r(torch.as_tensor(T, dtype=r.dtype, device=self.device)[None])
            img = resize_images(img, geometry.height, geometry.width)
        return img[0, 0].cpu().numpy().astype(np.float32)
