"""Benchmark degradations: the physics and content gap between benchmark X-rays and DRRs.

docs/ARCHITECTURE.md, Baselines and the physics gap: with matched physics every method saturates,
so the synthetic benchmark renders its X-rays with physics the registration's DRRs do not model.
The chain, per case, on the rendered (fine, ``2R × 2R``) detector; ``p`` are line integrals of
attenuation (dimensionless, as :class:`~sphere_reg_ros.core.drr.DrrRenderer` gives them: water
0.02/mm):

1. **Bone emphasis** ``p = p_soft + m · p_bone``: voxels above ``BONE_HU_THRESHOLD`` count ``m``
   times (``m`` ~ U[1.3, 2.2]); the registration's DRRs use ``m = 1``. Rendered in one pass as two
   channels, exactly equal to rendering ``hu_to_attenuation(hu, bone_multiplier=m)``.
2. **Metal instrument** (probability 0.5): a K-wire / screw, a capsule (cylinder with rounded
   ends) of radius U[0.8, 3] mm, length U[40, 120] mm, attenuation U[10, 40] × water (titanium to
   steel at 60-80 keV). Its centre lies on the ray through a detector point uniform in the central
   70 % of each side, U[±50 mm] in depth around the isocentre; its axis makes an angle U[±30°] with
   the detector plane. Fixed in CT world, it is consistent with the pose but absent from the CT.
   ``p += 0.02 · μ · chord``, the chord exact per pixel ray (``2√(r² − d²) / sin γ``, ``d`` the
   ray-axis distance, ``γ`` the ray-axis angle).
3. **Beam hardening**: ``p' = log(1 + b p) / b``, ``b`` ~ U[0.03, 0.15]: the measured
   log-attenuation grows sublinearly with the true one (dense paths look less dense).
4. **Heel effect** (not flat-field corrected): incident quanta ``N0 · (1 + h · ramp)``, ``ramp``
   linear from −1 to 1 across the detector along a random direction U[0, 2π), ``h`` ~ U[0.05, 0.25].
5. **Collimation** (probability 0.6): shutters on each of the four edges, inset U[0.02, 0.15] of
   the side; behind them only a fraction U[0.005, 0.03] of the primary passes.
6. **Scatter**: ``S = k · G_σ * primary`` (a low-pass copy of the primary intensity), scatter-to-
   primary ratio of a flat field ``k`` ~ U[0.1, 0.6], ``σ`` ~ U[20, 60] mm on the detector.
7. **Detector blur**: Gaussian PSF on the intensity, ``σ`` ~ U[1, 4] mm on the detector (the
   default 128² detector has 3 mm pixels).
8. **Quantum and electronic noise**: counts ``Poisson(N) + N(0, σ_e²)``, ``N0`` (unattenuated
   quanta per rendered pixel) log-uniform in [3e3, 3e5], ``σ_e`` ~ U[0, 5] counts; counts are
   clamped to ≥ 0.5 and converted back with ``p_out = log N0 − log counts`` (flat-field with the
   nominal ``N0``). The output stays a log-domain, line-integral-like float image.

These differ from the training augmentations (:mod:`sphere_reg_ros.core.augment`: additive
Gaussian noise, windowing, linear scale, gamma, ``a sin(bx + c)``, 3×3/5×5 smoothing, mean-filled
erasing): here the noise is signal-dependent Poisson in the intensity domain, the intensity curve
is logarithmic, the blur acts on intensities at twice the resolution, scatter and heel are
spatially varying, and collimation and metal are physical (low primary behind shutters, an
object consistent with the 3-D pose).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.evaluation.channel_renderer import ChannelRenderer  # re-exported

__all__ = [
    "DegradationConfig",
    "PARAM_NAMES",
    "check_fields",
    "ChannelRenderer",
    "draw_degradations",
    "apply_degradations",
    "metal_line_integral",
    "gaussian_blur_mm",
]

Range = tuple[float, float]

#: Names (and trailing shapes) of the per-case parameters, in drawing order.
PARAM_NAMES: dict[str, tuple[int, ...]] = {
    "bone_multiplier": (),
    "beam_hardening": (),
    "heel_strength": (),
    "heel_angle_rad": (),
    "scatter_fraction": (),
    "scatter_sigma_mm": (),
    "psf_sigma_mm": (),
    "photons": (),
    "electronic_noise": (),
    "collimation": (),
    "collimation_insets": (4,),
    "collimator_transmission": (),
    "metal": (),
    "metal_endpoints_world": (2, 3),
    "metal_radius_mm": (),
    "metal_mu": (),
}


@dataclass(frozen=True)
class DegradationConfig:
    """Parameter ranges of the degradations (see the module docstring); ranges are uniform
    ``(low, high)``, ``photons`` log-uniform; ``DegradationConfig.none()`` is the identity."""

    bone_multiplier: Range = (1.3, 2.2)
    beam_hardening: Range = (0.03, 0.15)
    heel_strength: Range = (0.05, 0.25)
    scatter_fraction: Range = (0.1, 0.6)
    scatter_sigma_mm: Range = (20.0, 60.0)
    psf_sigma_mm: Range = (1.0, 4.0)
    photons: Range = (3e3, 3e5)
    electronic_noise: Range = (0.0, 5.0)
    noise: bool = True
    collimation_probability: float = 0.6
    collimation_inset: Range = (0.02, 0.15)
    collimator_transmission: Range = (0.005, 0.03)
    metal_probability: float = 0.5
    metal_length_mm: Range = (40.0, 120.0)
    metal_radius_mm: Range = (0.8, 3.0)
    metal_mu: Range = (10.0, 40.0)
    metal_field: float = 0.7
    metal_depth_mm: float = 50.0
    metal_tilt_deg: float = 30.0

    def __post_init__(self) -> None:
        check_fields(self, probabilities=("collimation_probability", "metal_probability"))
        if self.bone_multiplier[0] <= 0 or self.photons[0] <= 0:
            raise ValueError("DegradationConfig: bone_multiplier and photons must be positive")
        if self.collimation_inset[1] >= 0.5 or self.collimator_transmission[1] > 1:
            raise ValueError(
                "DegradationConfig: collimation_inset must stay below 0.5, transmission <= 1"
            )
        if self.metal_field > 1:
            raise ValueError(f"DegradationConfig.metal_field must be <= 1, got {self.metal_field}")
        if self.metal_tilt_deg > 80:
            raise ValueError(
                f"DegradationConfig.metal_tilt_deg must be <= 80, got {self.metal_tilt_deg}"
            )

    @classmethod
    def none(cls) -> "DegradationConfig":
        """No degradation: the output equals the clean line integrals (matched physics)."""
        zero = (0.0, 0.0)
        return cls(
            bone_multiplier=(1.0, 1.0),
            beam_hardening=zero,
            heel_strength=zero,
            scatter_fraction=zero,
            psf_sigma_mm=zero,
            noise=False,
            collimation_probability=0.0,
            metal_probability=0.0,
        )

    def to_dict(self) -> dict:
        """JSON-ready dictionary (ranges as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "DegradationConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def check_fields(config, probabilities: tuple[str, ...] = ()) -> None:
    """Validate a degradation config dataclass: ``noise`` a bool, every tuple a range
    ``0 <= low <= high``, every other field finite and ``>= 0``, ``probabilities`` at most 1.
    Raises ValueError naming the class and the field."""
    name = type(config).__name__
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "noise":
            if not isinstance(value, bool):
                raise ValueError(f"{name}.noise must be a bool, got {value!r}")
        elif isinstance(value, tuple):
            if (
                len(value) != 2
                or not all(math.isfinite(v) and v >= 0 for v in value)
                or value[0] > value[1]
            ):
                raise ValueError(f"{name}.{f.name} must be a range 0 <= low <= high, got {value!r}")
        elif not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}.{f.name} must be finite and >= 0, got {value!r}")
    for field_name in probabilities:
        if getattr(config, field_name) > 1:
            raise ValueError(
                f"{name}.{field_name} must be a probability, got {getattr(config, field_name)}"
            )


def _uniform(gen: torch.Generator, bounds: Range) -> float:
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    return bounds[0] + (bounds[1] - bounds[0]) * u


def draw_degradations(
    config: DegradationConfig,
    generator: torch.Generator,
    pose: np.ndarray,
    geometry: CarmGeometry,
    isocenter_world: np.ndarray,
) -> dict[str, np.ndarray]:
    """Draw one case's parameters (every parameter is always drawn, in ``PARAM_NAMES`` order).

    Args:
        pose: ``(4, 4)`` true ``T_ct_from_carm``; ``geometry`` the detector; ``isocenter_world``
            ``(3,)`` mm (these place the metal instrument).
    Returns:
        ``{name: array}`` with the shapes of ``PARAM_NAMES`` (bools for ``collimation``, ``metal``).
    """
    c = config
    pose = np.asarray(pose, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    out["bone_multiplier"] = _uniform(generator, c.bone_multiplier)
    out["beam_hardening"] = _uniform(generator, c.beam_hardening)
    out["heel_strength"] = _uniform(generator, c.heel_strength)
    out["heel_angle_rad"] = _uniform(generator, (0.0, 2.0 * math.pi))
    out["scatter_fraction"] = _uniform(generator, c.scatter_fraction)
    out["scatter_sigma_mm"] = _uniform(generator, c.scatter_sigma_mm)
    out["psf_sigma_mm"] = _uniform(generator, c.psf_sigma_mm)
    log_n = _uniform(generator, (math.log(c.photons[0]), math.log(c.photons[1])))
    out["photons"] = math.exp(log_n)
    out["electronic_noise"] = _uniform(generator, c.electronic_noise)
    out["collimation"] = _uniform(generator, (0.0, 1.0)) < c.collimation_probability
    out["collimation_insets"] = np.array(
        [_uniform(generator, c.collimation_inset) for _ in range(4)]
    )
    out["collimator_transmission"] = _uniform(generator, c.collimator_transmission)
    out["metal"] = _uniform(generator, (0.0, 1.0)) < c.metal_probability
    margin = (0.5 - 0.5 * c.metal_field, 0.5 + 0.5 * c.metal_field)
    u = _uniform(generator, margin) * (geometry.width - 1)
    v = _uniform(generator, margin) * (geometry.height - 1)
    iso_carm = np.linalg.solve(pose, np.append(np.asarray(isocenter_world, dtype=np.float64), 1.0))[
        :3
    ]
    depth = iso_carm[2] + _uniform(generator, (-c.metal_depth_mm, c.metal_depth_mm))
    center_carm = (
        np.array([(u - geometry.cx) / geometry.fx, (v - geometry.cy) / geometry.fy, 1.0]) * depth
    )
    center = pose[:3, :3] @ center_carm + pose[:3, 3]
    phi = _uniform(generator, (0.0, math.pi))
    psi = math.radians(_uniform(generator, (-c.metal_tilt_deg, c.metal_tilt_deg)))
    axis = pose[:3, :3] @ np.array(
        [math.cos(psi) * math.cos(phi), math.cos(psi) * math.sin(phi), math.sin(psi)]
    )
    half = 0.5 * _uniform(generator, c.metal_length_mm)
    out["metal_endpoints_world"] = np.stack([center - half * axis, center + half * axis])
    out["metal_radius_mm"] = _uniform(generator, c.metal_radius_mm)
    out["metal_mu"] = _uniform(generator, c.metal_mu)
    return {k: np.asarray(v) for k, v in out.items()}


def gaussian_blur_mm(image: torch.Tensor, sigma_mm: float, geometry: CarmGeometry) -> torch.Tensor:
    """Separable Gaussian blur of ``image (H, W)``, ``sigma_mm`` on the detector; replicate edges."""
    if sigma_mm <= 0:
        return image
    x = image[None, None]
    for axis, spacing in ((3, geometry.delx), (2, geometry.dely)):
        sigma = sigma_mm / spacing
        radius = max(1, int(math.ceil(3.0 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=image.dtype)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        if axis == 3:
            x = F.conv2d(
                F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1)
            )
        else:
            x = F.conv2d(
                F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1)
            )
    return x[0, 0]


def metal_line_integral(
    geometry: CarmGeometry,
    pose: np.ndarray,
    endpoints_world: np.ndarray,
    radius_mm: float,
    mu_rel: float,
    scale: float,
    supersample: int = 3,
) -> torch.Tensor:
    """Line integrals ``(H, W)`` float64 of a capsule (the metal instrument), pixel-averaged.

    ``endpoints_world`` ``(2, 3)`` are the axis ends in CT world mm, ``pose`` the ``(4, 4)``
    ``T_ct_from_carm``; ``mu_rel`` is relative to water and ``scale`` the attenuation of water
    per mm. The chord of a ray at distance ``d`` from the axis and angle ``γ`` to it is
    ``2√(r² − d²) / sin γ`` (``sin γ`` clamped at 0.2); the distance is to the axis segment, so
    the ends are rounded. Each pixel averages ``supersample²`` rays over its area (no aliasing of
    wires thinner than a pixel).
    """
    T_inv = np.linalg.inv(np.asarray(pose, dtype=np.float64))
    ends = np.asarray(endpoints_world, dtype=np.float64) @ T_inv[:3, :3].T + T_inv[:3, 3]
    a = torch.as_tensor(ends[0])
    e = torch.as_tensor(ends[1] - ends[0])
    k = max(1, int(supersample))
    sub = (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5
    rows = (torch.arange(geometry.height, dtype=torch.float64)[:, None] + sub).reshape(-1)
    cols = (torch.arange(geometry.width, dtype=torch.float64)[:, None] + sub).reshape(-1)
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    d = torch.stack(
        [(u - geometry.cx) / geometry.fx, (v - geometry.cy) / geometry.fy, torch.ones_like(u)],
        dim=-1,
    )
    d = d / d.norm(dim=-1, keepdim=True)  # unit ray directions from the source (origin)
    ee, de, da, ea = float(e @ e), d @ e, d @ a, float(e @ a)
    denom = (ee - de**2).clamp(min=1e-12)
    s = ((de * da - ea) / denom).clamp(0.0, 1.0)  # closest point on the axis segment
    q = a + s[..., None] * e
    t = (d * q).sum(-1).clamp(min=0.0)
    dist = (q - t[..., None] * d).norm(dim=-1)
    sin_gamma = (1.0 - de**2 / max(ee, 1e-12)).clamp(min=0.04).sqrt()
    chord = 2.0 * (radius_mm**2 - dist**2).clamp(min=0.0).sqrt() / sin_gamma
    chord = chord.view(geometry.height, k, geometry.width, k).mean(dim=(1, 3))
    return scale * mu_rel * chord


def apply_degradations(
    p_soft: torch.Tensor,
    p_bone: torch.Tensor,
    params: dict[str, np.ndarray],
    geometry: CarmGeometry,
    pose: np.ndarray,
    generator: torch.Generator,
    scale: float,
    noise: bool = True,
) -> torch.Tensor:
    """Degrade one case: line integrals ``p_soft``, ``p_bone`` ``(H, W)`` -> image ``(H, W)`` float32.

    ``geometry`` is the rendered detector, ``pose`` the true ``(4, 4)`` pose, ``scale`` the
    attenuation of water per mm; noise draws come from ``generator`` (after the parameters).
    """
    P = {k: float(v) if np.ndim(v) == 0 else v for k, v in params.items()}
    p = p_soft.double() + P["bone_multiplier"] * p_bone.double()
    if P["metal"]:
        p = p + metal_line_integral(
            geometry, pose, P["metal_endpoints_world"], P["metal_radius_mm"], P["metal_mu"], scale
        )
    b = P["beam_hardening"]
    p = torch.log1p(b * p) / b if b > 0 else p
    H, W = p.shape
    y = torch.linspace(-1.0, 1.0, H, dtype=torch.float64)[:, None]
    x = torch.linspace(-1.0, 1.0, W, dtype=torch.float64)[None, :]
    ramp = x * math.cos(P["heel_angle_rad"]) + y * math.sin(P["heel_angle_rad"])
    n0 = P["photons"]
    primary = n0 * (1.0 + P["heel_strength"] * ramp) * torch.exp(-p)
    if P["collimation"]:
        top, bottom, left, right = (float(f) for f in P["collimation_insets"])
        rr = torch.arange(H)[:, None]
        cc = torch.arange(W)[None, :]
        inside = (
            (rr >= round(top * H))
            & (rr < H - round(bottom * H))
            & (cc >= round(left * W))
            & (cc < W - round(right * W))
        )
        tau = P["collimator_transmission"]
        primary = primary * torch.where(inside, 1.0, tau)
    total = primary + P["scatter_fraction"] * gaussian_blur_mm(
        primary, P["scatter_sigma_mm"], geometry
    )
    total = gaussian_blur_mm(total, P["psf_sigma_mm"], geometry)
    if noise:
        counts = torch.poisson(total, generator=generator)
        counts = counts + P["electronic_noise"] * torch.randn(
            total.shape, generator=generator, dtype=torch.float64
        )
        return (math.log(n0) - torch.log(counts.clamp(min=0.5))).float()
    return (math.log(n0) - torch.log(total.clamp(min=1e-300))).float()
