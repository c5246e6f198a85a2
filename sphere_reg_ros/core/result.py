"""The outcome of one registration: pose, uncertainty, cost, status and timings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Status(enum.Enum):
    """How a registration ended. Only ``CONVERGED`` and ``MAX_ITERATIONS`` carry a usable pose."""

    CONVERGED = "converged"  # step or cost tolerance reached
    MAX_ITERATIONS = "max_iterations"  # iteration cap reached without meeting a tolerance
    DIVERGED = "diverged"  # cost grew or became non-finite; pose is the best one seen
    SINGULAR = "singular"  # normal equations could not be solved
    INVALID_INPUT = "invalid_input"  # image/pose/geometry rejected before optimising
    REJECTED = "rejected"  # optimised, but failed a quality gate (cost, covariance)

    @property
    def usable(self) -> bool:
        return self in (Status.CONVERGED, Status.MAX_ITERATIONS)


@dataclass(frozen=True)
class RegistrationResult:
    """Result for one image.

    Attributes:
        pose: ``(4, 4)`` ``T_ct_from_carm`` (mm), the best pose found (the initial pose when
            nothing better was found).
        covariance: ``(6, 6)`` covariance of a left-multiplied increment ``(v [mm], w [rad])``
            in the CT world frame, ``σ² (JᵀWJ)⁻¹``; NaN when unavailable.
        cost: final cost (the similarity ``ε``), ``initial_cost`` before optimising.
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

    @property
    def ok(self) -> bool:
        """True when the pose may be published (converged or stopped at the iteration cap)."""
        return self.status.usable

    @property
    def position_std_mm(self) -> float:
        """Largest standard deviation of the translation part (mm), from the covariance."""
        cov = np.asarray(self.covariance, dtype=np.float64)[:3, :3]
        if not np.all(np.isfinite(cov)):
            return float("inf")
        return float(np.sqrt(max(np.linalg.eigvalsh(0.5 * (cov + cov.T)).max(), 0.0)))
