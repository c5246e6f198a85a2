"""A simulated C-arm: X-rays of a CT along a pose trajectory, with realistic degradations.

Used by the ``carm_simulator`` ROS node and the one-command demo. The trajectory is a C-arm
sweep around the patient's long axis (LAO/RAO rotation about the CT's superior axis through the
isocentre) plus a slow patient motion (a breathing-like translation of the CT under the C-arm):

    T(t) = Trans(m(t)) · G(R_z(a(t)), c) · T_ap,     a(t) = A sin(2π t / P),
    m(t) = (M_x sin(2π t / Q), M_y sin(2π t / Q + 1), M_z sin(2π t / Q + 2)).

Images are log-domain line integrals (as the benchmark's), degraded by
:mod:`~sphere_reg_ros.evaluation.degrade` with one of the presets of :data:`DEGRADATION_PRESETS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.carm import CarmGeometry
from ..core.geometry import make_pose, so3_exp
from ..core.views import ap_pose
from ..core.volume import Volume, bone_attenuation, hu_to_attenuation
from .degrade import ChannelRenderer, DegradationConfig, apply_degradations, draw_degradations
from .degrade_harsh import HarshConfig, apply_harsh, draw_harsh, mineral_fraction

#: ``none``: matched physics; ``mild``: a clinical-looking image with bone contrast, scatter,
#: blur and quantum noise but no instruments; ``benchmark``: the synthetic benchmark's ranges.
DEGRADATION_PRESETS = {
    "none": DegradationConfig.none(),
    "mild": DegradationConfig(
        bone_multiplier=(1.1, 1.4),
        beam_hardening=(0.02, 0.06),
        heel_strength=(0.05, 0.1),
        scatter_fraction=(0.05, 0.2),
        psf_sigma_mm=(0.5, 1.5),
        photons=(5e4, 2e5),
        electronic_noise=(0.0, 2.0),
        collimation_probability=0.0,
        metal_probability=0.0,
    ),
    "benchmark": DegradationConfig(),
    "harsh": HarshConfig(),
}
#: Initial mTRE range (mm) of ``make-benchmark --degradation harsh`` (median 22.5 mm).
HARSH_INITIAL_MTRE_MM = (10.0, 35.0)


@dataclass(frozen=True)
class Trajectory:
    """C-arm sweep and patient motion (see the module docstring). Angles in degrees, mm, s."""

    sweep_deg: float = 10.0
    sweep_period_s: float = 40.0
    motion_mm: tuple[float, float, float] = (2.0, 1.0, 3.0)
    motion_period_s: float = 25.0
    sod_mm: float = 650.0

    def __post_init__(self) -> None:
        values = [
            self.sweep_deg,
            self.sweep_period_s,
            self.motion_period_s,
            self.sod_mm,
            *self.motion_mm,
        ]
        if len(self.motion_mm) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"Trajectory: every value must be finite (motion_mm has 3 values), got {self}"
            )
        if self.sweep_period_s <= 0 or self.motion_period_s <= 0 or self.sod_mm <= 0:
            raise ValueError("Trajectory: periods and sod_mm must be positive")

    def pose(self, t: float, center_world: np.ndarray) -> np.ndarray:
        """``T_ct_from_carm`` ``(4, 4)`` at time ``t`` (s)."""
        c = torch.as_tensor(np.asarray(center_world, dtype=np.float64))
        angle = math.radians(self.sweep_deg) * math.sin(2 * math.pi * t / self.sweep_period_s)
        R = so3_exp(torch.tensor([[0.0, 0.0, angle]], dtype=torch.float64))[0]
        G = make_pose(R, c - R @ c)
        phase = 2 * math.pi * t / self.motion_period_s
        shift = torch.tensor(
            [m * math.sin(phase + k) for k, m in enumerate(self.motion_mm)], dtype=torch.float64
        )
        # the patient moves by +shift: in CT coordinates the C-arm moves by -shift
        motion = make_pose(torch.eye(3, dtype=torch.float64), -shift)
        return (motion @ G @ ap_pose(center_world, self.sod_mm)[0]).numpy()


class XraySimulator:
    """Degraded X-rays of ``ct`` for given poses on ``geometry``.

    Args:
        ct: the CT (HU), already at the spacing to render from.
        geometry: detector of the published images.
        degradation: a preset name of :data:`DEGRADATION_PRESETS` or a config.
        seed: seeds the per-frame degradation draws (frame ``i`` uses ``seed * 100003 + i``).
    """

    def __init__(
        self,
        ct: Volume,
        geometry: CarmGeometry,
        degradation: str | DegradationConfig | HarshConfig = "mild",
        seed: int = 0,
    ) -> None:
        if isinstance(degradation, str):
            if degradation not in DEGRADATION_PRESETS:
                raise ValueError(
                    f"degradation must be one of {sorted(DEGRADATION_PRESETS)}, got {degradation!r}"
                )
            degradation = DEGRADATION_PRESETS[degradation]
        self.ct, self.geometry, self.degradation, self.seed = ct, geometry, degradation, int(seed)
        mu = hu_to_attenuation(ct.data)
        if isinstance(degradation, HarshConfig):
            channels = np.stack([mu, mu * mineral_fraction(ct.data)])
            self._draw, self._apply = draw_harsh, apply_harsh
        else:
            bone = bone_attenuation(ct.data)
            channels = np.stack([mu - bone, bone])
            self._draw, self._apply = draw_degradations, apply_degradations
        self.renderer = ChannelRenderer(channels, ct.affine, geometry)

    def render(self, pose: np.ndarray, frame: int = 0) -> np.ndarray:
        """The degraded image ``(H, W)`` float32 of pose ``(4, 4)`` for frame number ``frame``."""
        pose = np.asarray(pose, dtype=np.float64)
        generator = torch.Generator().manual_seed(self.seed * 100003 + int(frame))
        params = self._draw(self.degradation, generator, pose, self.geometry, self.ct.center_world)
        p_a, p_b = self.renderer(torch.as_tensor(pose)[None])
        image = self._apply(
            p_a,
            p_b,
            params,
            self.geometry,
            pose,
            generator,
            self.renderer.scale,
            noise=self.degradation.noise,
        )
        return image.numpy().astype(np.float32)
