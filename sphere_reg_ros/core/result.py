"""The outcome of one registration: pose, uncertainty, cost, status and timings."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np


class Status(enum.Enum):
    """How a registration ended.

    The rule of what may be published (TF, pose) is :meth:`publishable`: only ``CONVERGED``, and
    a converged registration that fails a quality gate becomes ``REJECTED``
    (:mod:`.trust`). ``usable`` says only that the solver ended normally with its best pose and a
    covariance (worth scoring, e.g. among the ends of several starts).
    """

    CONVERGED = "converged"  # a step or cost-decrease test met after at least one accepted step
    NO_PROGRESS = "no_progress"  # no step lowered the cost: the pose is the initial one
    MAX_ITERATIONS = "max_iterations"  # iteration cap reached without meeting a tolerance
    DIVERGED = "diverged"  # moved beyond the limits, or the cost became non-finite
    SINGULAR = "singular"  # normal equations could not be solved
    INVALID_INPUT = "invalid_input"  # image/pose/geometry rejected before optimising
    REJECTED = "rejected"  # converged, but failed a quality gate (see the message)

    @property
    def usable(self) -> bool:
        """The solver ended normally (its best pose and a covariance are there to judge)."""
        return self in (Status.CONVERGED, Status.MAX_ITERATIONS, Status.NO_PROGRESS)

    @property
    def publishable(self) -> bool:
        """The one rule of what may be published: a converged registration that passed every gate
        (one that fails a gate is ``REJECTED``)."""
        return self is Status.CONVERGED


@dataclass(frozen=True)
class RegistrationResult:
    """Result for one image.

    Attributes:
        pose: ``(4, 4)`` ``T_ct_from_carm`` (mm), the best pose found (the initial pose when
            nothing better was found).
        covariance: ``(6, 6)`` covariance of a left-multiplied increment ``(v [mm], w [rad])``
            in the CT world frame (calibrated; see :mod:`.lm` and docs/TRUST.md); NaN when
            unavailable.
        cost: final cost (the similarity ``ε``), ``initial_cost`` before optimising; their scale
            depends on the residual model, the resolution and the mask.
        normalised_cost: the final cost over the mean cost at reference offsets around the final
            pose, all with one kernel scale (:meth:`.lm.LevenbergMarquardt.normalised_cost`):
            about 1 when the image does not pin the pose down (noise, a blank image), well below
            1 at a distinct minimum; comparable across residual models, resolutions and masks.
            NaN when not computed.
        roi_mm: ``(3,)`` the point of the CT (world mm) the uncertainty is expressed at (the
            region of interest, e.g. the centroid of the bone); None: the CT frame's origin.
        consistency_mm: how far (at the region of interest) a second start, offset from the final
            pose, ended from it; NaN when not run.
        rejected_by: the diagnostic key of the quality gate that rejected it (``Status.REJECTED``,
            :mod:`.trust`); '' otherwise.
        iterations: LM iterations taken (all scales together).
        status: see :class:`Status`; ``message`` says why in words.
        timings: seconds per stage (e.g. ``{"regressor": 0.05, "lm": 1.2, "total": 1.3}``).
        history: per-iteration records (``{"iteration", "cost", "lambda", "accepted", "time_s"}``).
        masked_fraction: share of the image's pixels masked as unexplainable by the CT
            (collimator shutters, metal, saturation: :mod:`.masks`).
        valid_mask: ``(H, W)`` bool at the image's size, False where masked (None: no masks
            were computed); overlays draw the masked pixels hatched.
    """

    pose: np.ndarray
    covariance: np.ndarray
    cost: float
    initial_cost: float
    iterations: int
    status: Status
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    masked_fraction: float = 0.0
    valid_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    normalised_cost: float = math.nan
    roi_mm: np.ndarray | None = None
    consistency_mm: float = math.nan
    rejected_by: str = ""

    @property
    def ok(self) -> bool:
        """True when the pose may be published (:meth:`Status.publishable`)."""
        return self.status.publishable

    @property
    def roi_covariance(self) -> np.ndarray:
        """``(3, 3)`` covariance (mm²) of the error of the region-of-interest point (world frame)."""
        return point_covariance(self.covariance, self.roi_mm)

    @property
    def position_std_mm(self) -> float:
        """Largest standard deviation (mm) of the error at the region of interest (``roi_mm``;
        the CT frame's origin without one); inf when there is no covariance."""
        cov = self.roi_covariance
        if not np.all(np.isfinite(cov)):
            return float("inf")
        return float(np.sqrt(max(np.linalg.eigvalsh(0.5 * (cov + cov.T)).max(), 0.0)))


#: χ² quantile (3 degrees of freedom) of the 95 % ellipsoid of a point's error: the true error ``e``
#: lies inside when ``eᵀ C⁻¹ e`` is at most this (``C`` from :func:`point_covariance`).
CHI2_3_95 = 7.814727903251178


def point_covariance(covariance: np.ndarray, point: np.ndarray | None) -> np.ndarray:
    """Covariance ``(3, 3)`` of a CT point's error from that of the increment ``δ = (v, w)``.

    With ``T ← exp(δ) T`` the registered pose maps the point ``p`` seen by the C-arm to
    ``p + v + w × p`` (first order), so its error is ``A δ`` with ``A = [I, −[p]×]``.
    """
    cov = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    p = np.zeros(3) if point is None else np.asarray(point, dtype=np.float64).reshape(3)
    A = np.concatenate([np.eye(3), -_skew(p)], axis=1)
    out = A @ cov @ A.T
    return 0.5 * (out + out.T)


def point_error(estimate: np.ndarray, truth: np.ndarray, point: np.ndarray | None) -> np.ndarray:
    """``(3,)`` error (mm, world) at ``point`` of an estimated pose ``T_ct_from_carm``: where the
    estimate puts the CT point the truth shows at ``point``, minus ``point``."""
    p = np.zeros(3) if point is None else np.asarray(point, dtype=np.float64).reshape(3)
    D = np.asarray(estimate, dtype=np.float64) @ np.linalg.inv(np.asarray(truth, dtype=np.float64))
    return D[:3, :3] @ p + D[:3, 3] - p


def _skew(p: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -p[2], p[1]], [p[2], 0.0, -p[0]], [-p[1], p[0], 0.0]])
