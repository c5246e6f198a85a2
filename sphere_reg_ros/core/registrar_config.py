"""The registrar's settings (:class:`RegistrarConfig`), their defaults chosen on the validation
splits, the device resolution every command shares (:func:`resolve_device`) and the
learning-free residual model a configuration describes. Re-exported by :mod:`.registrar`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import torch

from .lm import LMConfig
from .lm_steps import ROBUST_KERNELS
from .residuals import IntensityResiduals
from .trust import TrustConfig

__all__ = [
    "RegistrarConfig",
    "resolve_device",
    "AUTO_ROBUST",
    "DEFAULT_ROBUST_SCALE",
    "DEFAULT_COVARIANCE_SCALE",
    "INTENSITY_FITS",
]

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
        polish: with a learned similarity, register each image again with the learning-free
            LM of this configuration (``residuals``, ``intensity_fit``, ``robust``, masks, all
            scales, restarts) starting from the learned end; the result is judged (normalised
            cost, consistency, gates) on the learning-free residuals, which the trust thresholds
            were calibrated on. Not for tracking (``fine_only``) registrations. No effect without
            a learned similarity.
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
        """Normalises ``scales``, ``roi`` and ``trust`` and checks every setting (a flat list of
        one check per field, hence its length)."""
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "roi", _roi_setting(self.roi))
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


def _roi_setting(roi):
    """``roi`` as stored: ``"bone"``, ``"center"`` or a tuple of three finite floats (mm).

    Raises:
        ValueError: anything else.
    """
    if isinstance(roi, str):
        if roi not in ("bone", "center"):
            raise ValueError(f"roi must be 'bone', 'center' or three numbers (mm), got {roi!r}")
        return roi
    try:
        point = tuple(float(v) for v in roi)
    except (TypeError, ValueError):
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise ValueError(f"roi must be 'bone', 'center' or three finite numbers (mm), got {roi!r}")
    return point
