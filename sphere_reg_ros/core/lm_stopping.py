"""Stopping rules of the LM solver (:mod:`.lm`): the tests that end an element's iteration, each
giving a :class:`~.result.Status` and a message. Pure functions of one element's numbers.

Per element: a step below ``step_tol_mm`` / ``step_tol_rad`` or an accepted step that lowers the
cost by less than ``cost_tol`` (relative) → CONVERGED; ``max_rejections`` rejections in a row or
λ at ``lambda_max`` → CONVERGED (no further decrease found); any of these before a single step
was accepted (over all scales) → NO_PROGRESS; the iteration cap of the last scale →
MAX_ITERATIONS; moving more than ``max_translation_mm`` / ``max_rotation_rad`` from the initial
pose → DIVERGED; singular normal equations → SINGULAR; a non-finite image, pose or initial cost
→ INVALID_INPUT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .lm_config import LMConfig
from .result import Status

__all__ = [
    "Tolerances",
    "STEP_BELOW_TOLERANCE",
    "SINGULAR_AT_END",
    "input_status",
    "start_status",
    "small_steps",
    "step_status",
    "cap_status",
    "final_status",
]

#: The outcome of a step shorter than the tolerances.
STEP_BELOW_TOLERANCE = (Status.CONVERGED, "step below tolerance")
#: The outcome of a usable element whose normal equations are singular at its final pose.
SINGULAR_AT_END = (Status.SINGULAR, "normal equations are singular at the final pose")

Outcome = tuple[Status, str] | None


@dataclass(frozen=True)
class Tolerances:
    """Convergence tolerances of one scale: step length (mm, of the centre and of ``L·w``), step
    angle (rad) and relative cost decrease."""

    step_mm: float
    step_rad: float
    cost: float

    @classmethod
    def for_scale(cls, config: LMConfig, final: bool) -> Tolerances:
        """The configured tolerances, ``coarse_tol_factor`` times looser unless ``final``."""
        f = 1.0 if final else config.coarse_tol_factor
        return cls(config.step_tol_mm * f, config.step_tol_rad * f, config.cost_tol * f)


def input_status(image_ok: bool, pose_ok: bool) -> Outcome:
    """INVALID_INPUT for a non-finite image or an initial pose that is not a rigid transform."""
    if not image_ok:
        return Status.INVALID_INPUT, "image contains NaN or inf"
    if not pose_ok:
        return Status.INVALID_INPUT, "initial pose is not a finite rigid transform"
    return None


def start_status(bad: bool, singular: bool, first: bool, height: int) -> Outcome:
    """At the start of a scale of ``height`` px: a non-finite cost or normal equations (``bad``)
    is INVALID_INPUT on the ``first`` scale (the initial pose), DIVERGED on a later one; singular
    normal equations are SINGULAR."""
    if bad:
        if first:
            return (
                Status.INVALID_INPUT,
                "the initial pose gives a non-finite cost (is the CT in view?)",
            )
        return Status.DIVERGED, f"non-finite cost at the start of scale {height} px"
    if singular:
        return (
            Status.SINGULAR,
            "normal equations are singular: the residuals do not determine the pose",
        )
    return None


def small_steps(
    ok: torch.Tensor, step_mm: torch.Tensor, step_rad: torch.Tensor, tol: Tolerances
) -> torch.Tensor:
    """(B,) bool: solved steps with length ``step_mm`` (B,) and angle ``step_rad`` (B,) both
    below the tolerances. Such a step cannot move the pose by more than the tolerance, so the
    element stops before its trial is rendered."""
    return ok & (step_mm < tol.step_mm) & (step_rad < tol.step_rad)


def step_status(
    *,
    runaway: bool,
    solved: bool,
    accepted: bool,
    step_mm: float,
    step_rad: float,
    moved_mm: float,
    moved_rad: float,
    old_cost: float,
    new_cost: float,
    rejections: int,
    lam: float,
    tol: Tolerances,
    config: LMConfig,
) -> Outcome:
    """The stopping rule after one trial of one element, None to go on; first match wins.

    Args:
        runaway: the trial was acceptable but moved further than allowed from the initial pose
            (by ``moved_mm`` mm / ``moved_rad`` rad) → DIVERGED.
        solved: the damped normal equations were solved; if not with λ (after its update) at
            ``lambda_max`` → SINGULAR.
        accepted: the trial was accepted; ``old_cost`` / ``new_cost`` the cost before / after.
        step_mm, step_rad: the step's length (mm) and angle (rad).
        rejections: consecutive rejections including this trial.
    """
    if runaway:
        return (
            Status.DIVERGED,
            f"moved {moved_mm:.0f} mm / {moved_rad:.2f} rad from the initial pose (limit exceeded)",
        )
    if not solved and lam >= config.lambda_max:
        return Status.SINGULAR, "damped normal equations could not be solved"
    if solved and step_mm < tol.step_mm and step_rad < tol.step_rad:
        return STEP_BELOW_TOLERANCE
    if accepted and old_cost - new_cost < tol.cost * old_cost:
        return Status.CONVERGED, "relative cost decrease below tolerance"
    if not accepted and (rejections >= config.max_rejections or lam >= config.lambda_max):
        return Status.CONVERGED, f"no further decrease found (lambda {lam:.1e})"
    return None


def cap_status(max_iterations: int) -> tuple[Status, str]:
    """The outcome of an element still iterating when the finest scale's cap is reached."""
    return Status.MAX_ITERATIONS, f"iteration cap ({max_iterations}) reached"


def final_status(
    status: Status | None, message: str, history: Sequence[dict]
) -> tuple[Status, str]:
    """The reported outcome of an element after all scales, from its last ``status`` and the
    ``history`` of its trials: MAX_ITERATIONS when no scale ran for it (every cap 0), and a
    convergence before any accepted step (iteration > 0) is NO_PROGRESS (the start was not
    improved: a flat or uninformative cost, or a start already at the minimum)."""
    if status is None:
        return Status.MAX_ITERATIONS, "iteration cap reached"
    if status is Status.CONVERGED and not any(
        h["accepted"] and h["iteration"] > 0 for h in history
    ):
        return Status.NO_PROGRESS, f"no step lowered the cost ({message})"
    return status, message
