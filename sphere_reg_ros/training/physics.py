"""Physics-based domain randomisation of training X-rays, rendered from two-channel DRRs.

The seed's augmentations (:mod:`sphere_reg_ros.core.augment`) change intensities of a DRR; real
C-arm images differ from DRRs by the physics of their formation. This module simulates that
physics per training image with random parameters, from the two line integrals a
:class:`~sphere_reg_ros.core.drr.DrrRenderer` with a bone channel gives (``p_all`` of the whole
attenuation and ``p_bone`` of the voxels above the bone threshold, both optical depths: line
integrals of attenuation, water 0.02 / mm, as the renderer gives them):

1. **Tissue mix** (:func:`mix_tissues`): ``p = s · (p_all + (m − 1) · p_bone)``, bone contrast
   ``m`` ~ U[0.6, 3.0], effective-energy scale ``s`` ~ U[0.8, 1.25].
2. **Metal** (:func:`add_metal`): up to three objects the CT does not contain, each of one kind:
   a straight or bent wire, a screw (short and thick), a bead (a sphere's chord profile) or a
   plate (a rounded rectangle); optical depth U[1, 8] at their thickest.
3. **Beam hardening** (:func:`harden_beam`): a power-law compression of the optical depth,
   ``p' = p₀ ((1 + p / p₀)^(1 − a) − 1) / (1 − a)`` with ``a`` ~ U[0, 0.5], ``p₀`` ~ U[1, 4]:
   monotone, ``p' ≤ p``, the identity for ``a = 0``.
4. **Incident field** (:func:`incident_field`): an anode heel (an exponential ramp of strength
   U[−0.4, 0.4] along a random direction) and a vignetting falloff ``(1 + (r / f)²)^(−2)``
   (``r`` from a random centre, ``f`` U[1.5, 6] image widths): not flat-field corrected.
5. **Collimation** (:func:`collimate`): shutters block the primary beam outside an open field that
   is a rotated rectangle (each side inset with probability 0.6, by U[0, 0.3] of the width, the
   whole field turned by U[±20°]) or a circle (iris, radius U[0.3, 0.7] of the width); a soft
   penumbra and a leakage U[0.001, 0.08] of the primary.
6. **Scatter** (:func:`add_scatter`): a low-pass copy of the collimated primary, a mixture of a
   narrow and a wide kernel (σ U[0.03, 0.1] and U[0.15, 0.5] of the width), scatter-to-primary
   ratio U[0, 1]; it fills the shutters' shadows too, as in a real C-arm.
7. **Detector** (:func:`detector_response`): a point-spread function of a Gaussian core (σ U[0.2,
   1.5] px) and a long glare tail (fraction U[0, 0.15], σ U[3, 8] px).
8. **Counts** (:func:`count_photons`): Poisson counts with ``N₀`` log-uniform in [1e3, 1e6] per
   pixel, electronic noise σ U[0, 8] counts, saturation of the brightest pixels (probability 0.3,
   clip at a quantile U[0.7, 0.99]), and the log transform back to an optical depth.
9. **Truncation** (:func:`truncate`): with probability 0.2 a border band (U[0.03, 0.2] of the
   width) of one side carries no image (the detector's dead zone, a cropped export).

Then the seven transforms of the seed (``core.augment.DomainRandomization``) act on top, as before.

The benchmark's degradations (``evaluation.degrade``) are a held-out test of this module: they are
written separately, with other functional forms (a logarithmic beam hardening, a linear heel
ramp, a single Gaussian scatter kernel, metal as 3-D capsules consistent with the pose) and
narrower ranges; this module must not import from it.

Every function takes a batch ``(B, 1, H, W)`` (or ``(B, 2, H, W)`` for :func:`mix_tissues`) and a
``torch.Generator``; each image draws its own parameters from that generator (on the CPU, in
float64), so a seed fixes the result. Images are computed in float64 and returned in the input's
dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from .content import _blur, _u

__all__ = [
    "PhysicsConfig",
    "PhysicsRandomization",
    "add_metal",
    "add_scatter",
    "collimate",
    "count_photons",
    "detector_response",
    "harden_beam",
    "incident_field",
    "mix_tissues",
    "truncate",
]


def _coin(g: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def _e(t: Tensor, like: Tensor) -> Tensor:
    """Per-image values ``(B,)`` as ``(B, 1, 1, 1)`` on ``like``'s device, float64."""
    return t.to(device=like.device, dtype=torch.float64)[:, None, None, None]


def _grid(images: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``(1, 1, H, 1)`` rows and ``(1, 1, 1, W)`` columns, in widths,
    centred on the image (so a 64² and a 128² image see the same shapes)."""
    h, w = images.shape[-2:]
    dev = images.device
    r = (torch.arange(h, dtype=torch.float64, device=dev) - (h - 1) / 2) / w
    c = (torch.arange(w, dtype=torch.float64, device=dev) - (w - 1) / 2) / w
    return r[None, None, :, None], c[None, None, None, :]


def _check(images: Tensor, channels: int = 1) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != channels:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape (B, {channels}, H, W), got {shape}")
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite")


def _low_pass(x: Tensor, sigma_frac: Tensor) -> Tensor:
    """A wide Gaussian blur (σ = ``sigma_frac`` of the width) computed on a 4× smaller copy."""
    b, _, h, w = x.shape
    f = 4 if min(h, w) >= 32 else 1
    small = F.avg_pool2d(x, f) if f > 1 else x
    out = _blur(small, sigma_frac * small.shape[-1], mode="reflect")
    if f > 1:
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out


# ----------------------------------------------------------------------------- the chain
def mix_tissues(
    channels: Tensor, g: torch.Generator, bone=(0.6, 3.0), scale=(0.8, 1.25)
) -> tuple[Tensor, dict]:
    """Optical depth ``(B, 1, H, W)`` from ``channels (B, 2, H, W)`` = (whole, bone) DRRs:
    ``s · (p_all + (m − 1) p_bone)`` (module doc, step 1)."""
    _check(channels, 2)
    b = channels.shape[0]
    m, s = _u(g, b, *bone), _u(g, b, *scale)
    x = channels.to(torch.float64)
    p = x[:, :1] + (_e(m, x) - 1) * x[:, 1:2]
    return (_e(s, x) * p).clamp_min(0.0), {"bone": m, "scale": s}


def harden_beam(p: Tensor, g: torch.Generator, a=(0.0, 0.5), p0=(1.0, 4.0)) -> tuple[Tensor, dict]:
    """Power-law compression of the optical depth ``p (B, 1, H, W)`` ≥ 0 (module doc, step 3)."""
    _check(p)
    b = p.shape[0]
    av, p0v = _u(g, b, *a), _u(g, b, *p0)
    A, P0 = _e(av, p), _e(p0v, p)
    x = p.to(torch.float64).clamp_min(0.0)
    ex = 1 - A
    out = torch.where(A.abs() < 1e-9, x, P0 * ((1 + x / P0) ** ex - 1) / ex)
    return out, {"a": av, "p0": p0v}


def add_metal(
    p: Tensor, g: torch.Generator, prob: float = 0.5, depth=(1.0, 8.0), max_objects: int = 3
) -> tuple[Tensor, dict]:
    """Metal objects added to the optical depth ``p (B, 1, H, W)`` (module doc, step 2)."""
    _check(p)
    b = p.shape[0]
    k = max_objects
    on = _coin(g, b, prob)
    count = torch.randint(1, k + 1, (b,), generator=g)
    kind = torch.randint(0, 4, (b, k), generator=g)  # 0 wire, 1 screw, 2 bead, 3 plate
    cx, cy = _u(g, b * k, -0.4, 0.4).view(b, k), _u(g, b * k, -0.4, 0.4).view(b, k)
    ang = _u(g, b * k, 0.0, math.pi).view(b, k)
    wire_len, wire_r = _u(g, b * k, 0.2, 0.9).view(b, k), _u(g, b * k, 0.004, 0.015).view(b, k)
    bend = _u(g, b * k, -0.6, 0.6).view(b, k) * _coin(g, b * k, 0.5).view(b, k)
    screw_len, screw_r = _u(g, b * k, 0.08, 0.3).view(b, k), _u(g, b * k, 0.015, 0.04).view(b, k)
    bead_r = _u(g, b * k, 0.01, 0.05).view(b, k)
    plate_l, plate_w = _u(g, b * k, 0.1, 0.4).view(b, k), _u(g, b * k, 0.03, 0.08).view(b, k)
    strength = _u(g, b * k, *depth).view(b, k)
    x = p.to(torch.float64)
    if not bool(on.any()):
        return x, {"on": on, "count": count * on}
    r, c = _grid(x)
    add = torch.zeros_like(x)
    for j in range(k):
        active = on & (count > j)
        if not bool(active.any()):
            continue
        ux, uy = torch.cos(ang[:, j]), torch.sin(ang[:, j])
        dx, dy = c - _e(cx[:, j], x), r - _e(cy[:, j], x)
        along = dx * _e(ux, x) + dy * _e(uy, x)
        across = -dx * _e(uy, x) + dy * _e(ux, x)
        across = across - _e(bend[:, j], x) * along**2  # a bent wire: a parabola
        kd = kind[:, j]
        half = torch.where(kd == 1, screw_len[:, j], wire_len[:, j]) / 2
        half = torch.where(kd == 3, plate_l[:, j] / 2, half)
        rad = torch.where(kd == 1, screw_r[:, j], wire_r[:, j])
        rad = torch.where(kd == 3, plate_w[:, j] / 2, rad)
        rad = torch.where(kd == 2, bead_r[:, j], rad)
        half = torch.where(kd == 2, torch.zeros_like(half), half)
        # distance to a segment of half-length `half` (0 for a bead: a sphere's disc)
        ax = along.abs() - _e(half, x)
        dist = torch.sqrt(ax.clamp_min(0.0) ** 2 + across**2)
        R = _e(rad, x)
        chord = torch.sqrt((1 - (dist / R) ** 2).clamp_min(0.0))  # a cylinder's / sphere's chord
        flat = (dist < R).to(torch.float64)  # a plate: uniform thickness
        profile = torch.where(_e(kd.to(torch.float64), x) == 3, flat, chord)
        add = add + profile * _e(strength[:, j] * active.to(torch.float64), x)
    return x + add, {"on": on, "count": count * on}


def incident_field(
    images: Tensor, g: torch.Generator, heel=(-0.4, 0.4), falloff=(1.5, 6.0)
) -> tuple[Tensor, dict]:
    """Relative incident intensity ``(B, 1, H, W)`` (heel ramp × vignetting; module doc, step 4);
    ``images`` gives the shape only."""
    b = images.shape[0]
    h, theta = _u(g, b, *heel), _u(g, b, 0.0, 2 * math.pi)
    f = _u(g, b, *falloff)
    ox, oy = _u(g, b, -0.2, 0.2), _u(g, b, -0.2, 0.2)
    r, c = _grid(images)
    like = images.to(torch.float64)
    ramp = c * _e(torch.cos(theta), like) + r * _e(torch.sin(theta), like)
    rho2 = ((c - _e(ox, like)) ** 2 + (r - _e(oy, like)) ** 2) / _e(f, like) ** 2
    field = torch.exp(2 * _e(h, like) * ramp) * (1 + rho2) ** -2
    return field.expand_as(like).contiguous(), {"heel": h, "direction": theta, "falloff": f}


def collimate(
    primary: Tensor, g: torch.Generator, prob: float = 0.6, circle_prob: float = 0.3
) -> tuple[Tensor, dict]:
    """Shutters on the primary intensity ``(B, 1, H, W)`` (module doc, step 5). Returns the
    collimated primary and ``params["open"]`` ``(B, 1, H, W)``: 1 in the open field, 0 behind."""
    _check(primary)
    b = primary.shape[0]
    on = _coin(g, b, prob)
    circle = _coin(g, b, circle_prob)
    sides = _coin(g, 4 * b, 0.6).view(b, 4)
    insets = _u(g, 4 * b, 0.0, 0.3).view(b, 4) * sides
    turn = _u(g, b, -math.radians(20), math.radians(20))
    radius = _u(g, b, 0.3, 0.7)
    cx, cy = _u(g, b, -0.1, 0.1), _u(g, b, -0.1, 0.1)
    penumbra = _u(g, b, 0.002, 0.02)
    leak = torch.exp(_u(g, b, math.log(0.001), math.log(0.08)))
    x = primary.to(torch.float64)
    r, c = _grid(x)
    h_half = 0.5 * primary.shape[-2] / primary.shape[-1]
    ct, st = _e(torch.cos(turn), x), _e(torch.sin(turn), x)
    u, v = c * ct + r * st, -c * st + r * ct  # the shutters' own axes
    ins = insets.to(x.device)
    # signed distance into the open field (widths; > 0 inside)
    rect = torch.minimum(
        torch.minimum(
            v + h_half - ins[:, 0, None, None, None], h_half - ins[:, 1, None, None, None] - v
        ),
        torch.minimum(u + 0.5 - ins[:, 2, None, None, None], 0.5 - ins[:, 3, None, None, None] - u),
    )
    disc = _e(radius, x) - torch.sqrt((c - _e(cx, x)) ** 2 + (r - _e(cy, x)) ** 2)
    inside = torch.where(_e(circle.to(torch.float64), x) > 0, disc, rect)
    opening = 0.5 * (1 + torch.erf(inside / (math.sqrt(2.0) * _e(penumbra, x))))
    opening = torch.where(_e(on.to(torch.float64), x) > 0, opening, torch.ones_like(opening))
    transmission = _e(leak, x) + (1 - _e(leak, x)) * opening
    return x * transmission, {"on": on, "circle": circle & on, "open": opening}


def add_scatter(
    primary: Tensor, g: torch.Generator, spr=(0.0, 1.0), narrow=(0.03, 0.1), wide=(0.15, 0.5)
) -> tuple[Tensor, dict]:
    """Primary plus scatter ``k · (w G_narrow + (1 − w) G_wide) * primary`` (module doc, step 6),
    ``k`` the scatter-to-primary ratio of a flat field."""
    _check(primary)
    b = primary.shape[0]
    k, w = _u(g, b, *spr), _u(g, b, 0.2, 0.8)
    s1, s2 = _u(g, b, *narrow), _u(g, b, *wide)
    x = primary.to(torch.float64)
    scatter = _e(w, x) * _low_pass(x, s1) + (1 - _e(w, x)) * _low_pass(x, s2)
    return x + _e(k, x) * scatter, {"spr": k}


def detector_response(
    intensity: Tensor, g: torch.Generator, core=(0.2, 1.5), glare=(0.0, 0.15), tail=(3.0, 8.0)
) -> tuple[Tensor, dict]:
    """The detector's PSF (Gaussian core plus a glare tail) on the intensity (module doc, step 7)."""
    _check(intensity)
    b = intensity.shape[0]
    s_core, frac, s_tail = _u(g, b, *core), _u(g, b, *glare), _u(g, b, *tail)
    x = intensity.to(torch.float64)
    sharp = _blur(x, s_core, mode="reflect")
    wide = _blur(x, s_tail, mode="reflect")
    return (1 - _e(frac, x)) * sharp + _e(frac, x) * wide, {"core_px": s_core, "glare": frac}


def count_photons(
    intensity: Tensor,
    g: torch.Generator,
    n0=(1e3, 1e6),
    electronic=(0.0, 8.0),
    saturation_prob: float = 0.3,
) -> tuple[Tensor, dict]:
    """Optical depths from the relative intensity ``(B, 1, H, W)`` through Poisson
    and electronic noise and saturation (module doc, step 8)."""
    _check(intensity)
    b = intensity.shape[0]
    n0v = torch.exp(_u(g, b, math.log(n0[0]), math.log(n0[1])))
    sigma_e = _u(g, b, *electronic)
    sat_on, sat_q = _coin(g, b, saturation_prob), _u(g, b, 0.7, 0.99)
    x = intensity.to(torch.float64).clamp_min(0.0)
    expected = x * _e(n0v, x)
    # torch.poisson draws on the CPU with the generator; the rate is moved there and back
    counts = torch.poisson(expected.cpu(), generator=g).to(x.device)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device)
    counts = counts + _e(sigma_e, x) * noise
    level = torch.quantile(counts.flatten(1), sat_q.to(x.device), dim=1).diagonal()
    ceiling = torch.where(sat_on.to(x.device), level, torch.full_like(level, float("inf")))
    counts = torch.minimum(counts, ceiling[:, None, None, None]).clamp_min(0.5)
    p = torch.log(_e(n0v, x)) - torch.log(counts)
    return p, {"n0": n0v, "electronic": sigma_e, "saturated": sat_on}


def truncate(images: Tensor, g: torch.Generator, prob: float = 0.2, band=(0.03, 0.2)):
    """A border band of one side with no image (module doc, step 9): set to the image's minimum
    (no attenuation: a detector region with no object in front)."""
    _check(images)
    b, _, h, w = images.shape
    on, side = _coin(g, b, prob), torch.randint(0, 4, (b,), generator=g)
    width = _u(g, b, *band)
    x = images.to(torch.float64)
    if not bool(on.any()):
        return x, {"on": on}
    rows = torch.arange(h, device=x.device, dtype=torch.float64)[None, None, :, None]
    cols = torch.arange(w, device=x.device, dtype=torch.float64)[None, None, None, :]
    n = _e(width, x) * w
    sd = _e(side.to(torch.float64), x)
    cut = torch.where(sd == 0, rows < n, torch.where(sd == 1, rows >= h - n, cols < n))
    cut = torch.where(sd == 3, cols >= w - n, cut) & (_e(on.to(torch.float64), x) > 0)
    low = x.amin((1, 2, 3), keepdim=True)
    return torch.where(cut, low, x), {"on": on, "side": side}


# ----------------------------------------------------------------------------- composition
@dataclass(frozen=True)
class PhysicsConfig:
    """Probabilities of the optional effects (0 disables one); the ranges are the module's."""

    metal: float = 0.5
    collimation: float = 0.6
    saturation: float = 0.3
    truncation: float = 0.2

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise ValueError(f"PhysicsConfig.{f.name} must be a probability in [0, 1], got {v}")


class PhysicsRandomization:
    """The whole chain of the module doc: ``(B, 2, H, W)`` (whole, bone) DRRs →
    simulated X-rays ``(B, 1, H, W)``, optical depths (a log-domain image like a DRR)."""

    def __init__(self, config: PhysicsConfig | None = None) -> None:
        self.config = config or PhysicsConfig()

    def __repr__(self) -> str:
        return f"PhysicsRandomization({self.config})"

    def __call__(self, channels: Tensor, generator: torch.Generator) -> Tensor:
        cfg, g = self.config, generator
        p, _ = mix_tissues(channels, g)
        p, _ = add_metal(p, g, prob=cfg.metal)
        p, _ = harden_beam(p, g)
        field, _ = incident_field(p, g)
        primary, _ = collimate(field * torch.exp(-p), g, prob=cfg.collimation)
        intensity, _ = add_scatter(primary, g)
        intensity, _ = detector_response(intensity, g)
        out, _ = count_photons(intensity, g, saturation_prob=cfg.saturation)
        out, _ = truncate(out, g, prob=cfg.truncation)
        return out.to(channels.dtype)
