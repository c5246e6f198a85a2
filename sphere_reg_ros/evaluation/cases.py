"""Per-benchmark case set-up: landmarks, initial-pose errors and the CT's fingerprint.

Used by :func:`~sphere_reg_ros.evaluation.benchmark.make_benchmark` (see its module docstring for the
protocol); :func:`default_landmarks` also gives training its validation landmarks, so that a
training mTRE and a benchmark mTRE are measured on the same points. ``ct_fingerprint`` is
:func:`sphere_reg_ros.core.checkpoint.ct_fingerprint`, re-exported for the benchmark files.
Frames and units as in :mod:`sphere_reg_ros.core`: world RAS mm, poses ``T_ct_from_carm``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sphere_reg_ros.core.checkpoint import ct_fingerprint
from sphere_reg_ros.core.geometry import make_pose, se3_inverse, so3_exp
from sphere_reg_ros.core.landmarks import LandmarkError, landmarks_from_labels
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.volume import Volume

__all__ = [
    "InitialErrorConfig",
    "perturb_poses",
    "default_landmarks",
    "ct_fingerprint",
    "BODY_HU_THRESHOLD",
]

#: HU above which a voxel counts as inside the body (landmark grid without a label map).
BODY_HU_THRESHOLD = -300.0


@dataclass(frozen=True)
class InitialErrorConfig:
    """Initial-pose error: direction ``w`` ~ N(0, rot_std_deg), ``v`` ~ N(0, trans_std_mm) per
    axis, scaled so that the mTRE is a target ~ U[mtre_mm] (see :func:`perturb_poses`)."""

    mtre_mm: tuple[float, float] = (5.0, 25.0)
    rot_std_deg: float = 5.0
    trans_std_mm: float = 10.0

    def __post_init__(self) -> None:
        lo, hi = self.mtre_mm
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(
                f"InitialErrorConfig.mtre_mm must be 0 <= low <= high, got {self.mtre_mm}"
            )
        if not (
            self.rot_std_deg >= 0
            and self.trans_std_mm >= 0
            and self.rot_std_deg + self.trans_std_mm > 0
        ):
            raise ValueError(
                "InitialErrorConfig: rot_std_deg and trans_std_mm must be >= 0, not both 0"
            )


def default_landmarks(
    ct: Volume,
    labels: Volume | None = None,
    structures: Mapping[int, str] | None = None,
    ids: Sequence[int] | None = None,
    min_volume_ml: float = 2.0,
) -> tuple[list[str], np.ndarray]:
    """Landmarks ``(names, (K, 3) world mm)``: label centroids, else a grid inside the body.

    With a label map, structures of at least ``min_volume_ml`` millilitres (or the given ``ids``). Without,
    the 3×3×3 grid at 20/50/80 % of the bounding box of ``HU > BODY_HU_THRESHOLD`` keeping the points
    whose nearest voxel is inside the body (at least one point: the body centroid).
    """
    if labels is not None:
        if labels.shape != ct.shape or not np.allclose(labels.affine, ct.affine, atol=1e-3):
            raise LandmarkError(f"{labels.source}: label map grid differs from the CT {ct.source}")
        min_voxels = max(1, math.ceil(1000.0 * min_volume_ml / float(np.prod(labels.spacing))))
        return landmarks_from_labels(labels, ids, structures=structures, min_voxels=min_voxels)
    body = ct.data > BODY_HU_THRESHOLD
    if not body.any():
        raise LandmarkError(
            f"{ct.source}: no voxel above {BODY_HU_THRESHOLD} HU, cannot place landmarks"
        )
    idx = np.argwhere(body)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    names, points = [], []
    for a in (0.2, 0.5, 0.8):
        for b in (0.2, 0.5, 0.8):
            for c in (0.2, 0.5, 0.8):
                ijk = lo + np.array([a, b, c]) * (hi - lo)
                if body[tuple(np.round(ijk).astype(int))]:
                    names.append(f"grid_{a:.1f}_{b:.1f}_{c:.1f}")
                    points.append(ct.voxel_to_world(ijk))
    if not points:
        names, points = ["body_centroid"], [ct.voxel_to_world(idx.mean(axis=0))]
    return names, np.asarray(points, dtype=np.float64)


def _perturbation(c: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Trans(c) Rot(w) Trans(-c) Trans(v)`` for ``w, v`` ``(N, 3)``; ``(N, 4, 4)`` float64."""
    R = so3_exp(w)
    return make_pose(R, c - (R @ c[..., None])[..., 0] + (R @ v[..., None])[..., 0])


def perturb_poses(
    poses: torch.Tensor,
    landmarks: np.ndarray,
    config: InitialErrorConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial poses ``(N, 4, 4)`` and their mTRE ``(N,)`` (mm) for the true ``poses`` (float64).

    ``T_init = G · T_true`` with ``G = Trans(c) Rot(s·w) Trans(−c) Trans(s·v)`` in CT world: ``c``
    the landmarks' centroid, ``w`` ~ N(0, rot_std_deg²) and ``v`` ~ N(0, trans_std_mm²) per axis
    (a random direction mixing rotation and translation), and ``s > 0`` found by bisection so that
    the mTRE on ``landmarks`` ``(K, 3)`` equals a target ~ U[config.mtre_mm] (to ~1e-12 mm).
    Since ``mtre(G T, T) = mean_k |G⁻¹ p_k − p_k|``, the error does not depend on ``T_true``.
    """
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"poses must have shape (N, 4, 4), got {tuple(poses.shape)}")
    poses = poses.to(torch.float64)
    n = poses.shape[0]
    pts = torch.as_tensor(landmarks, dtype=torch.float64)
    c = pts.mean(dim=0).expand(n, 3)
    w = torch.randn(n, 3, generator=generator, dtype=torch.float64) * math.radians(
        config.rot_std_deg
    )
    v = torch.randn(n, 3, generator=generator, dtype=torch.float64) * config.trans_std_mm
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    target = config.mtre_mm[0] + (config.mtre_mm[1] - config.mtre_mm[0]) * u

    def error(s: torch.Tensor) -> torch.Tensor:  # = mtre(G T, T) = mean_k |G⁻¹ p_k − p_k|
        G_inv = se3_inverse(_perturbation(c, s[:, None] * w, s[:, None] * v))
        moved = torch.einsum("bij,kj->bki", G_inv[:, :3, :3], pts) + G_inv[:, None, :3, 3]
        return (moved - pts).norm(dim=-1).mean(dim=-1)

    lo, hi = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    for _ in range(60):  # grow the bracket until it holds the target
        short = error(hi) < target
        if not short.any():
            break
        hi = torch.where(short, 2.0 * hi, hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = error(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    s = 0.5 * (lo + hi)
    init = _perturbation(c, s[:, None] * w, s[:, None] * v) @ poses
    return init, mtre(init, poses, pts)
