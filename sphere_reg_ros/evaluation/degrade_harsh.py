"""A second degradation family, ``harsh``: physics written apart from :mod:`.degrade`.

Registration settings are chosen on the first family (:mod:`.degrade`, ``--degradation
benchmark``); this one checks that what was chosen is robust to physics it was not tuned on. Every
effect has its own functional form here, not a re-parameterisation of the first family's:

1. **Bone contrast** as a smooth function of HU: ``p = p_μ + g · p_min``, ``p_min`` the line
   integral of ``μ · s(HU)`` with the mineral fraction ``s = clamp((HU − 100) / 900, 0, 1)``
   (a ramp, not a threshold), ``g`` ~ U[0.3, 1.5].
2. **Foreign objects**: 0–3 screws (capsules 15–45 mm long, radius 1.5–3.5 mm, 30–60 × water),
   anywhere in the central 80 % of the field, any orientation; and with probability 0.5 a curved
   lead (ECG cable: a 9-point random walk of thin capsules, radius 0.4–1 mm, 15–30 × water)
   crossing the field.
3. **Detector response** (in place of beam hardening's logarithm): a saturating exponential,
   ``p' = (1 − exp(−c p)) / c``, ``c`` ~ U[0.04, 0.2].
4. **Field non-uniformity**: radial vignetting ``1 − v r²`` (``r`` relative to the half
   diagonal, ``v`` ~ U[0.1, 0.35]) times an exponential heel ``exp(h · x_θ)`` along a random
   direction (``h`` ~ U[0.1, 0.4]).
5. **Collimation**: with probability 0.6 a rectangular collimator rotated by U[−45°, 45°] with
   its own inset per side (U[0.05, 0.2] of the side), with probability 0.4 a circular iris of
   radius U[0.75, 1.0] of the half side; soft edges (penumbra U[2, 8] mm, a logistic profile),
   transmission U[0.01, 0.08].
6. **Scatter** with an exponential kernel ``exp(−r / λ)`` (λ ~ U[30, 100] mm), scatter-to-primary
   ratio of a flat field U[0.3, 1.2] (heavier than the first family's Gaussian).
7. **Blur and veiling glare**: PSF = ``(1 − γ) G(σ) + γ G(σ_g)``, ``σ`` ~ U[0.5, 2] mm,
   ``γ`` ~ U[0.05, 0.25], ``σ_g`` ~ U[6, 20] mm.
8. **Noise and detector**: a fixed-pattern gain ``1 + ε`` per pixel (``ε`` ~ N(0, s²),
   ``s`` ~ U[0, 0.03]), Poisson counts with ``N0`` log-uniform in [1e3, 1e5], electronic noise
   U[0, 8] counts, and saturation: log-domain values below the ``q``-quantile (``q`` ~ U[0, 0.05])
   are clipped to it (direct exposure at the detector's ceiling).

Every parameter is drawn for every case in :data:`HARSH_PARAM_NAMES` order (fixed shapes, unused
objects included), then the noise, from the case's generator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sphere_reg_ros.core.carm import CarmGeometry

from .degrade import check_fields, gaussian_blur_mm, metal_line_integral

__all__ = [
    "HarshConfig",
    "HARSH_PARAM_NAMES",
    "MAX_SCREWS",
    "LEAD_POINTS",
    "mineral_fraction",
    "draw_harsh",
    "apply_harsh",
]

Range = tuple[float, float]

MAX_SCREWS = 3
LEAD_POINTS = 9

#: Names and trailing shapes of the per-case parameters, in drawing order.
HARSH_PARAM_NAMES: dict[str, tuple[int, ...]] = {
    "bone_gain": (),
    "response": (),
    "vignetting": (),
    "heel": (),
    "heel_angle_rad": (),
    "collimator": (),
    "collimator_angle_rad": (),
    "collimator_insets": (4,),
    "iris": (),
    "iris_radius": (),
    "penumbra_mm": (),
    "collimator_transmission": (),
    "scatter_fraction": (),
    "scatter_length_mm": (),
    "psf_sigma_mm": (),
    "glare_fraction": (),
    "glare_sigma_mm": (),
    "gain_variation": (),
    "photons": (),
    "electronic_noise": (),
    "saturation_quantile": (),
    "screws": (),
    "screw_endpoints_world": (MAX_SCREWS, 2, 3),
    "screw_radius_mm": (MAX_SCREWS,),
    "screw_mu": (MAX_SCREWS,),
    "lead": (),
    "lead_points_world": (LEAD_POINTS, 3),
    "lead_radius_mm": (),
    "lead_mu": (),
}


@dataclass(frozen=True)
class HarshConfig:
    """Parameter ranges of the ``harsh`` family (see the module docstring); uniform ``(low,
    high)`` ranges, ``photons`` log-uniform."""

    bone_gain: Range = (0.3, 1.5)
    response: Range = (0.04, 0.2)
    vignetting: Range = (0.1, 0.35)
    heel: Range = (0.1, 0.4)
    collimator_probability: float = 0.6
    collimator_angle_deg: float = 45.0
    collimator_inset: Range = (0.05, 0.2)
    iris_probability: float = 0.4
    iris_radius: Range = (0.75, 1.0)
    penumbra_mm: Range = (2.0, 8.0)
    collimator_transmission: Range = (0.01, 0.08)
    scatter_fraction: Range = (0.3, 1.2)
    scatter_length_mm: Range = (30.0, 100.0)
    psf_sigma_mm: Range = (0.5, 2.0)
    glare_fraction: Range = (0.05, 0.25)
    glare_sigma_mm: Range = (6.0, 20.0)
    gain_variation: Range = (0.0, 0.03)
    photons: Range = (1e3, 1e5)
    electronic_noise: Range = (0.0, 8.0)
    saturation_quantile: Range = (0.0, 0.05)
    screw_length_mm: Range = (15.0, 45.0)
    screw_radius_mm: Range = (1.5, 3.5)
    screw_mu: Range = (30.0, 60.0)
    lead_probability: float = 0.5
    lead_radius_mm: Range = (0.4, 1.0)
    lead_mu: Range = (15.0, 30.0)
    object_depth_mm: float = 60.0
    noise: bool = True

    def __post_init__(self) -> None:
        check_fields(
            self, probabilities=("collimator_probability", "iris_probability", "lead_probability")
        )
        if self.response[0] <= 0 or self.photons[0] <= 0 or self.scatter_length_mm[0] <= 0:
            raise ValueError(
                "HarshConfig: response, photons and scatter_length_mm must be positive"
            )
        if (
            self.collimator_inset[1] >= 0.5
            or self.collimator_transmission[1] > 1
            or self.saturation_quantile[1] >= 0.5
        ):
            raise ValueError(
                "HarshConfig: collimator_inset and saturation_quantile must stay below 0.5, "
                "transmission <= 1"
            )

    def to_dict(self) -> dict:
        return {
            "family": "harsh",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
        }

    @classmethod
    def from_dict(cls, values: dict) -> "HarshConfig":
        values = {k: v for k, v in values.items() if k != "family"}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def mineral_fraction(hu: np.ndarray) -> np.ndarray:
    """Bone-mineral fraction of each voxel, a ramp from 100 HU (0) to 1000 HU (1): float32."""
    return np.clip((np.asarray(hu, dtype=np.float32) - 100.0) / 900.0, 0.0, 1.0).astype(np.float32)


def _u(gen: torch.Generator, bounds: Range) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * float(
        torch.rand((), generator=gen, dtype=torch.float64)
    )


def _point_in_field(gen, pose, geometry, iso_depth, field, depth_mm) -> np.ndarray:
    """A world point on the ray through a detector point uniform in the central ``field`` of each
    side, within ``depth_mm`` of the isocentre's depth."""
    lo, hi = 0.5 - 0.5 * field, 0.5 + 0.5 * field
    u = _u(gen, (lo, hi)) * (geometry.width - 1)
    v = _u(gen, (lo, hi)) * (geometry.height - 1)
    depth = iso_depth + _u(gen, (-depth_mm, depth_mm))
    carm = np.array([(u - geometry.cx) / geometry.fx, (v - geometry.cy) / geometry.fy, 1.0]) * depth
    return pose[:3, :3] @ carm + pose[:3, 3]


def _unit(gen) -> np.ndarray:
    d = torch.randn(3, generator=gen, dtype=torch.float64).numpy()
    return d / max(float(np.linalg.norm(d)), 1e-9)


def draw_harsh(
    config: HarshConfig,
    generator: torch.Generator,
    pose: np.ndarray,
    geometry: CarmGeometry,
    isocenter_world: np.ndarray,
) -> dict[str, np.ndarray]:
    """One case's parameters (all of :data:`HARSH_PARAM_NAMES`, always drawn, in order)."""
    c, g = config, generator
    pose = np.asarray(pose, dtype=np.float64)
    iso_depth = float(
        np.linalg.solve(pose, np.append(np.asarray(isocenter_world, dtype=np.float64), 1.0))[2]
    )
    out: dict[str, object] = {}
    out["bone_gain"] = _u(g, c.bone_gain)
    out["response"] = _u(g, c.response)
    out["vignetting"] = _u(g, c.vignetting)
    out["heel"] = _u(g, c.heel)
    out["heel_angle_rad"] = _u(g, (0.0, 2.0 * math.pi))
    out["collimator"] = _u(g, (0.0, 1.0)) < c.collimator_probability
    out["collimator_angle_rad"] = math.radians(
        _u(g, (-c.collimator_angle_deg, c.collimator_angle_deg))
    )
    out["collimator_insets"] = np.array([_u(g, c.collimator_inset) for _ in range(4)])
    out["iris"] = _u(g, (0.0, 1.0)) < c.iris_probability
    out["iris_radius"] = _u(g, c.iris_radius)
    out["penumbra_mm"] = _u(g, c.penumbra_mm)
    out["collimator_transmission"] = _u(g, c.collimator_transmission)
    out["scatter_fraction"] = _u(g, c.scatter_fraction)
    out["scatter_length_mm"] = _u(g, c.scatter_length_mm)
    out["psf_sigma_mm"] = _u(g, c.psf_sigma_mm)
    out["glare_fraction"] = _u(g, c.glare_fraction)
    out["glare_sigma_mm"] = _u(g, c.glare_sigma_mm)
    out["gain_variation"] = _u(g, c.gain_variation)
    out["photons"] = math.exp(_u(g, (math.log(c.photons[0]), math.log(c.photons[1]))))
    out["electronic_noise"] = _u(g, c.electronic_noise)
    out["saturation_quantile"] = _u(g, c.saturation_quantile)
    _draw_screws(c, g, pose, geometry, iso_depth, out)
    _draw_lead(c, g, pose, geometry, iso_depth, out)
    return {k: np.asarray(v) for k, v in out.items()}


def _draw_screws(c: HarshConfig, g, pose, geometry, iso_depth: float, out: dict) -> None:
    """The screws' parameters into ``out`` (their number, then every one of ``MAX_SCREWS``)."""
    out["screws"] = min(MAX_SCREWS, int(_u(g, (0.0, MAX_SCREWS + 1))))
    ends, radii, mus = [], [], []
    for _ in range(MAX_SCREWS):
        centre = _point_in_field(g, pose, geometry, iso_depth, 0.8, c.object_depth_mm)
        half = 0.5 * _u(g, c.screw_length_mm) * _unit(g)
        ends.append(np.stack([centre - half, centre + half]))
        radii.append(_u(g, c.screw_radius_mm))
        mus.append(_u(g, c.screw_mu))
    out["screw_endpoints_world"] = np.stack(ends)
    out["screw_radius_mm"] = np.array(radii)
    out["screw_mu"] = np.array(mus)


def _draw_lead(c: HarshConfig, g, pose, geometry, iso_depth: float, out: dict) -> None:
    """The lead wire's parameters into ``out``: whether, its path, radius and attenuation."""
    out["lead"] = _u(g, (0.0, 1.0)) < c.lead_probability
    # a smooth random walk: steps of 25-40 mm whose direction turns by a random small rotation
    start = _point_in_field(g, pose, geometry, iso_depth, 0.9, c.object_depth_mm)
    direction = pose[:3, :3] @ np.array(
        [math.cos(_u(g, (0, 2 * math.pi))), math.sin(_u(g, (0, 2 * math.pi))), 0.0]
    )
    points = [start]
    for _ in range(LEAD_POINTS - 1):
        direction = direction + 0.5 * _unit(g)
        direction = direction / np.linalg.norm(direction)
        points.append(points[-1] + _u(g, (25.0, 40.0)) * direction)
    out["lead_points_world"] = np.stack(points)
    out["lead_radius_mm"] = _u(g, c.lead_radius_mm)
    out["lead_mu"] = _u(g, c.lead_mu)


def _soft_inside(distance_mm: torch.Tensor, penumbra_mm: float) -> torch.Tensor:
    """Logistic edge profile: 1 well inside (distance > 0), 0 well outside, 10–90 % over the penumbra."""
    return torch.sigmoid(distance_mm * (4.4 / max(penumbra_mm, 1e-3)))


def _exponential_scatter(
    primary: torch.Tensor, length_mm: float, geometry: CarmGeometry
) -> torch.Tensor:
    """``primary`` convolved with the normalised kernel ``exp(−r / λ)`` (FFT, edges reflected)."""
    H, W = primary.shape
    pad_h, pad_w = H // 2, W // 2
    x = F.pad(primary[None, None], (pad_w, pad_w, pad_h, pad_h), mode="reflect")[0, 0]
    h, w = x.shape
    yy = (torch.arange(h, dtype=torch.float64) - h // 2) * geometry.dely
    xx = (torch.arange(w, dtype=torch.float64) - w // 2) * geometry.delx
    kernel = torch.exp(-torch.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2) / length_mm)
    kernel = torch.fft.ifftshift(kernel / kernel.sum())
    out = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(kernel), s=(h, w))
    return out[pad_h : pad_h + H, pad_w : pad_w + W]


def apply_harsh(
    p_mu: torch.Tensor,
    p_mineral: torch.Tensor,
    params: dict[str, np.ndarray],
    geometry: CarmGeometry,
    pose: np.ndarray,
    generator: torch.Generator,
    scale: float,
    noise: bool = True,
) -> torch.Tensor:
    """Degrade one case: line integrals of ``μ`` and of ``μ · s(HU)`` ``(H, W)`` → image ``(H, W)``
    float32 (log domain). ``geometry`` is the rendered detector, ``scale`` the attenuation of
    water per mm; noise draws come from ``generator`` (after the parameters)."""
    P = {k: float(v) if np.ndim(v) == 0 else v for k, v in params.items()}
    p = _with_metal(p_mu.double() + P["bone_gain"] * p_mineral.double(), P, geometry, pose, scale)
    c = P["response"]
    p = -torch.expm1(-c * p) / c
    H, W = p.shape
    ys = (torch.arange(H, dtype=torch.float64) - (H - 1) / 2)[:, None] * geometry.dely
    xs = (torch.arange(W, dtype=torch.float64) - (W - 1) / 2)[None, :] * geometry.delx
    half_h, half_w = H * geometry.dely / 2, W * geometry.delx / 2
    r2 = (xs**2 + ys**2) / (half_h**2 + half_w**2)
    along = (xs * math.cos(P["heel_angle_rad"]) + ys * math.sin(P["heel_angle_rad"])) / max(
        half_h, half_w
    )
    n0 = P["photons"]
    primary = n0 * (1.0 - P["vignetting"] * r2) * torch.exp(P["heel"] * along) * torch.exp(-p)
    if P["collimator"] or P["iris"]:
        inside = _collimated(P, xs, ys, half_h, half_w, primary)
        tau = P["collimator_transmission"]
        primary = primary * (tau + (1.0 - tau) * inside)
    total = primary + P["scatter_fraction"] * _exponential_scatter(
        primary, P["scatter_length_mm"], geometry
    )
    gf = P["glare_fraction"]
    total = (1.0 - gf) * gaussian_blur_mm(
        total, P["psf_sigma_mm"], geometry
    ) + gf * gaussian_blur_mm(total, P["glare_sigma_mm"], geometry)
    return _detected(total, P, n0, generator, noise)


def _with_metal(
    p: torch.Tensor, P: dict, geometry: CarmGeometry, pose, scale: float
) -> torch.Tensor:
    """``p`` plus the line integrals of the case's screws and lead wire."""
    for k in range(int(P["screws"])):
        p = p + metal_line_integral(
            geometry,
            pose,
            P["screw_endpoints_world"][k],
            float(P["screw_radius_mm"][k]),
            float(P["screw_mu"][k]),
            scale,
        )
    if P["lead"]:
        pts = P["lead_points_world"]
        for k in range(len(pts) - 1):
            p = p + metal_line_integral(
                geometry, pose, pts[k : k + 2], P["lead_radius_mm"], P["lead_mu"], scale
            )
    return p


def _collimated(P: dict, xs, ys, half_h: float, half_w: float, primary) -> torch.Tensor:
    """The open field (1 inside, 0 behind the blades, soft edges) of the rotated collimator and
    the iris (detector coordinates ``xs``, ``ys`` in mm from the centre)."""
    inside = torch.ones_like(primary)
    if P["collimator"]:
        a = P["collimator_angle_rad"]
        u = xs * math.cos(a) + ys * math.sin(a)  # rotated detector axes, mm from the centre
        v = -xs * math.sin(a) + ys * math.cos(a)
        top, bottom, left, right = (float(f) for f in P["collimator_insets"])
        for dist, inset, half in (
            (v + half_h, top, half_h),
            (half_h - v, bottom, half_h),
            (u + half_w, left, half_w),
            (half_w - u, right, half_w),
        ):
            inside = inside * _soft_inside(dist - 2 * half * inset, P["penumbra_mm"])
    if P["iris"]:
        radius = P["iris_radius"] * min(half_h, half_w)
        inside = inside * _soft_inside(radius - torch.sqrt(xs**2 + ys**2), P["penumbra_mm"])
    return inside


def _detected(
    total: torch.Tensor, P: dict, n0: float, generator: torch.Generator, noise: bool
) -> torch.Tensor:
    """The detector's log-domain image of the intensity ``total``: gain variation, Poisson and
    electronic noise (when ``noise``), then saturation at the case's quantile."""
    if noise:
        gain = 1.0 + P["gain_variation"] * torch.randn(
            total.shape, generator=generator, dtype=torch.float64
        )
        counts = torch.poisson((total * gain).clamp(min=0.0), generator=generator)
        counts = counts + P["electronic_noise"] * torch.randn(
            total.shape, generator=generator, dtype=torch.float64
        )
        out = math.log(n0) - torch.log(counts.clamp(min=0.5))
    else:
        out = math.log(n0) - torch.log(total.clamp(min=1e-300))
    q = P["saturation_quantile"]
    if q > 0:
        out = out.clamp(min=float(torch.quantile(out.flatten(), q)))
    return out.float()
