"""C-arm pose distributions around a standard view, with disjoint seeds per data split.

A sampled pose is the AP view (``views.ap_pose``) perturbed by a rotation about the CT's
isocentre (a rotation vector whose three components, about the CT world axes, are uniform in
``±rot_deg``) and a translation of the C-arm in its own frame: in-plane ``x, y`` uniform in
``±inplane_mm``, depth ``z`` uniform in ``±depth_mm``:  ``T = G(R, c) · T_ap · Trans(t_carm)``
with ``G(R, c) = Trans(c) R Trans(−c)``.
Defaults (docs/ARCHITECTURE.md, Method: training poses): ±15° per axis, ±30 mm in-plane, ±60 mm
depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import make_pose, so3_exp
from .views import DEFAULT_SOD_MM, ap_pose

#: Offsets that make the seeds of the three splits disjoint by construction:
#: split ``s`` with user seed ``n`` uses generator seed ``3 n + SPLIT_OFFSET[s]``.
SPLIT_OFFSET = {"test": 0, "val": 1, "train": 2}


def split_seed(split: str, seed: int) -> int:
    """Generator seed for a data split; different splits never share a seed."""
    if split not in SPLIT_OFFSET:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSET)}, got {split!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return 3 * int(seed) + SPLIT_OFFSET[split]


@dataclass(frozen=True)
class PoseDistribution:
    """Uniform C-arm poses around the AP view (see the module docstring)."""

    rot_deg: float = 15.0
    inplane_mm: float = 30.0
    depth_mm: float = 60.0
    sod_mm: float = DEFAULT_SOD_MM

    def __post_init__(self) -> None:
        for name in ("rot_deg", "inplane_mm", "depth_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PoseDistribution.{name} must be finite and >= 0, got {value}")
        if not (math.isfinite(self.sod_mm) and self.sod_mm > self.depth_mm):
            raise ValueError(f"sod_mm ({self.sod_mm}) must exceed depth_mm ({self.depth_mm})")

    def reference(self, center_world: np.ndarray) -> torch.Tensor:
        """The unperturbed AP pose ``(1, 4, 4)`` float64 aimed at the isocentre."""
        return ap_pose(center_world, self.sod_mm)

    def compose(
        self, center_world: np.ndarray, rot_rad: torch.Tensor, t_carm: torch.Tensor
    ) -> torch.Tensor:
        """Poses ``(n, 4, 4)`` float64 from rotation vectors ``(n, 3)`` and C-arm shifts ``(n, 3)``."""
        c = torch.as_tensor(np.asarray(center_world, dtype=np.float64)).reshape(3)
        R = so3_exp(rot_rad.to(torch.float64))
        G = make_pose(R, c - R @ c)
        shift = make_pose(
            torch.eye(3, dtype=torch.float64).expand(len(t_carm), 3, 3), t_carm.to(torch.float64)
        )
        return G @ self.reference(center_world) @ shift

    def sample(self, n: int, center_world: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """``n`` poses ``(n, 4, 4)`` float64, reproducible for a generator state."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        u = torch.rand(n, 6, generator=generator, dtype=torch.float64) * 2.0 - 1.0
        rot = u[:, :3] * math.radians(self.rot_deg)
        shift = u[:, 3:] * torch.tensor(
            [self.inplane_mm, self.inplane_mm, self.depth_mm], dtype=torch.float64
        )
        return self.compose(center_world, rot, shift)
