"""When a registration may be published, and where the next one starts: gates and tracking.

One policy for the ROS node, ``sphere-reg register`` and ``sphere-reg evaluate``:

* the solver's status must be publishable (:meth:`.result.Status.publishable`: only
  ``CONVERGED``);
* then the quality gates of :class:`TrustConfig`, in this order, each with its diagnostic key:

  ==========================  ===============================================================
  key                         fails when
  ==========================  ===============================================================
  ``rejected_cost``           ``normalised_cost`` (final cost over the cost at reference
                              offsets; about 1 when the image does not pin the pose down)
                              above ``max_normalised_cost``
  ``rejected_covariance``     the largest standard deviation at the region of interest
                              (``position_std_mm``) above ``max_position_std_mm``
  ``rejected_masked``         more than ``max_masked_fraction`` of the image masked
  ``rejected_inconsistent``   a second start, offset from the final pose, ended more than
                              ``max_inconsistency_mm`` away (at the region of interest)
  ==========================  ===============================================================

  A registration that fails one becomes ``Status.REJECTED`` with the reason in its message
  (:func:`apply_gates`). The defaults are calibrated on the validation splits of the synthetic
  benchmarks (docs/TRUST.md), never on the cases the tables report.

:class:`Tracker` holds the last *published* pose: the next frame starts there (finest scale
only) and falls back to a cold start when that fails a gate or its normalised cost grew beyond
``cost_factor`` times the last published one. A rejected frame never seeds tracking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .result import RegistrationResult, Status

__all__ = ["TrustConfig", "GATE_REASONS", "gate", "apply_gates", "Tracker"]

#: Diagnostic keys of the gates, in the order they are checked (plus ``registration_failed`` for
#: a status that is not publishable).
GATE_REASONS = (
    "registration_failed",
    "rejected_cost",
    "rejected_covariance",
    "rejected_masked",
    "rejected_inconsistent",
)


@dataclass(frozen=True)
class TrustConfig:
    """Quality gates (0 turns one off). Defaults calibrated on validation benchmarks (docs/TRUST.md):
    the normalised cost and the standard deviation at the region of interest were chosen together so
    that at least 90 % of the good registrations (mTRE < 1 mm) pass on the validation splits of
    both degradation families; the masked share lies above every validation case's; the consistency
    limit rejects no good validation case.

    Attributes:
        max_normalised_cost: largest ``normalised_cost`` that passes.
        max_position_std_mm: largest standard deviation (mm) at the region of interest.
        max_masked_fraction: largest share of the image masked (shutters, metal, saturation).
        max_inconsistency_mm: largest distance (mm, at the region of interest) between the final
            pose and the end of a second start offset from it (``consistency_offset_mm``).
        consistency_offset_mm: the second start's offset: this far along the C-arm's x axis and
            rotated by ``consistency_offset_mm / 100`` rad about its y axis through the CT's centre.
    """

    max_normalised_cost: float = 0.8
    max_position_std_mm: float = 2.0
    max_masked_fraction: float = 0.7
    max_inconsistency_mm: float = 3.0
    consistency_offset_mm: float = 4.0

    def __post_init__(self) -> None:
        for name in (
            "max_normalised_cost",
            "max_position_std_mm",
            "max_masked_fraction",
            "max_inconsistency_mm",
            "consistency_offset_mm",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.max_masked_fraction > 1:
            raise ValueError(
                f"max_masked_fraction must be in [0, 1], got {self.max_masked_fraction}"
            )

    @property
    def consistency(self) -> bool:
        """Whether the consistency check runs (a second start costs about a tracking registration)."""
        return self.max_inconsistency_mm > 0 and self.consistency_offset_mm > 0


def gate(result: RegistrationResult, config: TrustConfig) -> tuple[str, str] | None:
    """``(key, message)`` of the first gate ``result`` fails (see the module docstring), or None
    when it may be published. A result already ``REJECTED`` keeps its own reason."""
    st = result.status
    if st is Status.REJECTED:
        return "rejected", result.message
    if not st.publishable:
        return "registration_failed", f"registration failed ({st.value}): {result.message}"
    nc = result.normalised_cost
    if config.max_normalised_cost > 0 and not nc <= config.max_normalised_cost:
        return "rejected_cost", (
            f"normalised cost {nc:.3g} > {config.max_normalised_cost:g}: the image does "
            "not pin the pose down (noise, a blank or unrelated image, or a false minimum)"
        )
    std = result.position_std_mm
    if config.max_position_std_mm > 0 and not std <= config.max_position_std_mm:
        return "rejected_covariance", (
            f"position std {std:.3g} mm at the region of interest > "
            f"{config.max_position_std_mm:g} mm"
        )
    if config.max_masked_fraction > 0 and not result.masked_fraction <= config.max_masked_fraction:
        return "rejected_masked", (
            f"{100 * result.masked_fraction:.0f} % of the image masked > "
            f"{100 * config.max_masked_fraction:.0f} %"
        )
    d = result.consistency_mm
    if config.consistency and math.isfinite(d) and d > config.max_inconsistency_mm:
        return "rejected_inconsistent", (
            f"a second start ended {d:.2g} mm away (> {config.max_inconsistency_mm:g} mm):"
            " the minimum is not well defined"
        )
    return None


def apply_gates(result: RegistrationResult, config: TrustConfig) -> RegistrationResult:
    """``result`` unchanged when it may be published or its status already says why not; else
    the same result with ``Status.REJECTED`` and the gate's message (pose and covariance kept for
    the record)."""
    failed = gate(result, config)
    if failed is None or failed[0] in ("registration_failed", "rejected"):
        return result
    key, text = failed
    return replace(
        result,
        status=Status.REJECTED,
        rejected_by=key,
        message=f"{key}: {text}; {result.message}".rstrip("; "),
    )


def rejection_key(result: RegistrationResult) -> str:
    """The diagnostic key of a result that may not be published ('' when it may)."""
    if result.ok:
        return ""
    if result.status is Status.REJECTED:
        return result.rejected_by or "rejected"
    return "registration_failed"


class Tracker:
    """Warm starts from the last published pose (see the module docstring).

    Args:
        cost_factor: fall back to a cold start when a tracked registration's normalised cost
            exceeds this factor times the last published one.
    """

    def __init__(self, cost_factor: float = 3.0) -> None:
        if not (math.isfinite(cost_factor) and cost_factor >= 1):
            raise ValueError(f"cost_factor must be >= 1, got {cost_factor!r}")
        self.cost_factor = float(cost_factor)
        self.pose: np.ndarray | None = None
        self.normalised_cost = math.inf

    @property
    def active(self) -> bool:
        return self.pose is not None

    def reset(self) -> bool:
        """Forget the last pose; True when there was one."""
        had = self.pose is not None
        self.pose, self.normalised_cost = None, math.inf
        return had

    def register(
        self,
        registrar,
        image: np.ndarray,
        geometry,
        cold_init: np.ndarray | None = None,
        cold_how: str = "registrar_default",
    ) -> tuple[RegistrationResult, str]:
        """Register ``image``: from the last published pose when there is one (falling back to a
        cold start from ``cold_init``), else cold. Returns the result and how it started
        (``"tracking"``, ``cold_how`` or ``"<cold_how> (tracking fell back)"``). Only a
        publishable result becomes the next start."""
        if self.pose is None:
            result, how = registrar.register(image, geometry, cold_init), cold_how
        else:
            result, how = (
                registrar.register(image, geometry, self.pose.copy(), fine_only=True),
                "tracking",
            )
            degraded = not result.normalised_cost <= self.cost_factor * max(
                self.normalised_cost, 1e-3
            )
            if not result.ok or degraded:
                cold = registrar.register(image, geometry, cold_init)
                if cold.ok and (not result.ok or cold.normalised_cost < result.normalised_cost):
                    result, how = cold, f"{cold_how} (tracking fell back)"
        if result.ok:
            self.pose, self.normalised_cost = (
                np.asarray(result.pose, dtype=np.float64).copy(),
                result.normalised_cost,
            )
        return result, how
