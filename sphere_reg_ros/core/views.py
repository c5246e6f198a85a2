"""Standard C-arm views and the default detector, in the conventions of ``sphere_reg_ros.core``.

The anterior-posterior (AP) view puts the X-ray source in front of the patient (+y, anterior,
in RAS) and the detector behind; the image is shown in radiological convention (patient's right
on the image's left, head up): optical ``x`` = −x_RAS, ``y`` = −z_RAS, ``z`` = −y_RAS.
"""

from __future__ import annotations

import numpy as np
import torch

from .carm import CarmGeometry

#: Rotation (columns: optical x, y, z in CT world RAS) of the AP view.
R_AP = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T

#: Default source-to-isocentre distance, mm (typical mobile C-arm: SDD 1020 mm, SOD ~650 mm).
DEFAULT_SOD_MM = 650.0


def ap_pose(
    center_world: np.ndarray, sod_mm: float = DEFAULT_SOD_MM, dtype=torch.float64
) -> torch.Tensor:
    """``T_ct_from_carm`` ``(1, 4, 4)`` of the AP view aimed at ``center_world`` (mm, RAS)."""
    center = np.asarray(center_world, dtype=np.float64).reshape(3)
    T = np.eye(4)
    T[:3, :3] = R_AP
    T[:3, 3] = center - sod_mm * R_AP[:, 2]
    return torch.as_tensor(T, dtype=dtype)[None]


def default_geometry(
    resolution: int = 128, detector_mm: float = 384.0, sdd: float = 1020.0
) -> CarmGeometry:
    """Square detector of ``detector_mm`` side sampled with ``resolution²`` pixels."""
    spacing = detector_mm / resolution
    return CarmGeometry(sdd=sdd, height=resolution, width=resolution, delx=spacing, dely=spacing)


def orbit_offset(angle_deg: float, sod_mm: float = DEFAULT_SOD_MM) -> np.ndarray:
    """``T_carm0_from_carm1`` ``(4, 4)`` of a second C-arm view turned by ``angle_deg`` about the
    first view's image-row axis (optical ``y``; the patient's long axis in an AP view, i.e. a
    LAO/RAO turn) through the isocentre ``(0, 0, sod_mm)`` of the first view's optical frame.

    The second view's pose is ``T_ct_from_carm1 = T_ct_from_carm0 @ orbit_offset(angle)``; its
    source moves on the circle of radius ``sod_mm`` about the isocentre, which stays on both beams.
    """
    if not (np.isfinite(angle_deg) and np.isfinite(sod_mm) and sod_mm > 0):
        raise ValueError(
            f"orbit_offset: need a finite angle and sod_mm > 0, got {angle_deg}, {sod_mm}"
        )
    a = np.radians(float(angle_deg))
    R = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    iso = np.array([0.0, 0.0, float(sod_mm)])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = iso - R @ iso
    return T
