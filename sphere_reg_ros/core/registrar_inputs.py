"""What the registrar checks before it registers (images, initial poses, a batch as a whole),
the result of a refused registration, and the small helpers of its messages. Used by
:mod:`.registrar`."""

from __future__ import annotations

import functools
import inspect
import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from .carm import CarmGeometry
from .result import RegistrationResult, Status

__all__ = ["failed_result"]


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


def failed_result(
    status: Status, message: str, pose: np.ndarray | None, timings: dict | None = None
) -> RegistrationResult:
    """The result of a registration that did not run or failed: ``pose`` (None: NaN), no
    covariance, cost or iterations; ``status`` and ``message`` say why."""
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


def _refused_batch(images: Any, geometry: Any, init_poses: Any) -> list[RegistrationResult] | None:
    """The results of a batch refused as a whole (``images`` not a sequence, ``geometry`` not a
    :class:`~.carm.CarmGeometry`, as many initial poses as images), else None."""
    try:
        n = len(images)
    except TypeError:
        return [
            failed_result(
                Status.INVALID_INPUT,
                f"images must be a sequence or (N, H, W) array, got {type(images).__name__}",
                None,
            )
        ]
    if not isinstance(geometry, CarmGeometry):
        return [
            failed_result(
                Status.INVALID_INPUT,
                f"geometry must be a CarmGeometry, got {type(geometry).__name__}",
                None,
            )
            for _ in range(n)
        ]
    if init_poses is not None and len(init_poses) != n:
        return [
            failed_result(
                Status.INVALID_INPUT, f"{len(init_poses)} initial poses for {n} images", None
            )
            for _ in range(n)
        ]
    return None


def _checked_batch(
    images: Sequence[Any], geometry: CarmGeometry, init_poses: Any, t0: float
) -> tuple[list[RegistrationResult | None], list[int], list[np.ndarray], list[np.ndarray | None]]:
    """Each element checked: ``(results, valid, arrays, inits)``, where ``results`` holds the
    refusals (None elsewhere), ``valid`` the indices of the usable elements, ``arrays`` their
    float32 images and ``inits`` their initial poses (None: none given)."""
    n = len(images)
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
            results[i] = failed_result(
                Status.INVALID_INPUT, str(exc), None, {"total": time.perf_counter() - t0}
            )
    return results, valid, arrays, inits
