"""Clinical-content augmentations of training "X-rays": collimator shutters and metal.

The seed's domain randomisation (``core.augment``) changes intensities only. Intraoperative
images also carry content the CT does not: collimator shutters (most C-arm shots are
collimated) and metal (K-wires, screws, instruments). A regressor trained without them fails on
collimated images (measured on the test file of ``sphere-reg make-benchmark``, 50 cases: median
mTRE 49 mm on its collimated cases against 9 mm on the others; with these augmentations 26 mm
and 6 mm), so training images get, before the domain randomisation, in the line-integral domain
of the DRRs:

* **collimation** (probability ``p_collimation`` per image): each of the four edges gets a
  shutter of depth U[0, 0.2] of the side; behind it the image rises by one offset
  U[1.5, 6] (line-integral units: a shutter passing 0.2 %-22 % of the beam), with a soft edge
  (Gaussian edge profile, σ ~ U[0.005, 0.06] × the image width: focal-spot penumbra, detector
  blur) and, near the edge, a scatter glow that lowers the offset by a factor
  ``1 - g·exp(-depth/λ)``, g ~ U[0, 0.7], λ ~ U[0.03, 0.2] × the image width (scatter from the
  open field filling the shadow); the anatomy in the shadow is washed out towards a blurred copy
  (weight U[0, 1], σ ~ U[0.03, 0.12] × the width: the shadow holds mostly scatter) and gets
  Gaussian noise of σ ~ U[0, 0.3] (few quanta pass the lead);
* **metal** (probability ``p_metal``): one or two straight rods, centre uniform in the central
  70 % of the image, direction U[0, π), length U[0.08, 0.6] × width, radius U[0.4, 2.5] px,
  peak value U[0.5, 4], with the chord profile of a cylinder ``v·√(1 − (d/r)²)``.

These are generic image-space models with ranges of our own; the benchmark's degradations
(``evaluation.degrade``: 3-D capsules consistent with the pose, shutters in the intensity
domain before scatter, blur and noise) are a separate implementation, not used in training.
All draws come from the given generator (per image), so a seed fixes the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ContentAugmentation", "random_collimation", "random_metal"]


def _u(generator: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _blur(images: Tensor, sigma_px: Tensor, mode: str = "replicate") -> Tensor:
    """Per-image separable Gaussian blur of ``(B, 1, H, W)``, ``sigma_px (B,)`` > 0 (at least
    1e-3 px), padded by ``F.pad``'s ``mode``: ``"replicate"`` or ``"reflect"`` (the kernel then
    cut to fit the image); either way a constant image stays constant."""
    b, _, h, w = images.shape
    radius = int(math.ceil(3 * float(sigma_px.max())))
    if mode == "reflect":
        radius = max(1, min(radius, h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=images.device)
    k = torch.exp(-0.5 * (t[None] / sigma_px.to(images.device)[:, None].clamp_min(1e-3)) ** 2)
    k = (k / k.sum(1, keepdim=True)).to(images.dtype)  # (B, 2r+1)
    x = images.reshape(1, b, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), k[:, None, None, :], groups=b)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), k[:, None, :, None], groups=b)
    return x.reshape(b, 1, h, w)


def random_collimation(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Collimator shutters on ``images (B, 1, H, W)`` with probability ``p`` each (module doc)."""
    b, _, h, w = images.shape
    on = torch.rand(b, generator=generator, dtype=torch.float64) < p
    insets = _u(generator, 4 * b, 0.0, 0.2).view(b, 4)  # top, bottom, left, right (fractions)
    offset = _u(generator, b, 1.5, 6.0)
    width = _u(generator, b, 0.005, 0.06) * w
    glow = _u(generator, b, 0.0, 0.7)
    reach = _u(generator, b, 0.03, 0.2) * w
    wash = torch.rand(b, generator=generator, dtype=torch.float64)
    wash_sigma = _u(generator, b, 0.03, 0.12) * w
    noise_std = _u(generator, b, 0.0, 0.3)
    z = torch.randn(images.shape, generator=generator, dtype=torch.float64)
    if not bool(on.any()):
        return images
    dev, dt = images.device, torch.float64
    r = torch.arange(h, dtype=dt, device=dev)[None, :, None]
    c = torch.arange(w, dtype=dt, device=dev)[None, None, :]
    ins = insets.to(dev)
    wd = width.to(dev)[:, None, None]
    # signed depth into each shutter (pixels; > 0 behind it)
    sides = [
        ins[:, 0, None, None] * h - 0.5 - r,
        r - (h - 0.5 - ins[:, 1, None, None] * h),
        ins[:, 2, None, None] * w - 0.5 - c,
        c - (w - 0.5 - ins[:, 3, None, None] * w),
    ]
    d = torch.stack(torch.broadcast_tensors(*sides), 0)  # (4, B, H, W)
    d = torch.where(ins.T[:, :, None, None] > 0, d, torch.full_like(d, -1e3))
    depth = d.amax(0)  # (B, H, W): how far behind the nearest shutter edge
    mask = (0.5 * (1 + torch.erf(depth / (math.sqrt(2.0) * wd))) * on.to(dev, dt)[:, None, None])[
        :, None
    ]
    # scatter from the open field fills the shutter's shadow near its edge
    fill = 1 - glow.to(dev)[:, None, None] * torch.exp(
        -depth.clamp_min(0.0) / reach.to(dev)[:, None, None]
    )
    x = images.to(dt)
    a = wash.to(dev)[:, None, None, None]
    shadow = (1 - a) * x + a * _blur(x, wash_sigma)  # scatter-dominated shadows lose the anatomy
    shadow = shadow + (offset.to(dev)[:, None, None] * fill)[:, None]
    shadow = shadow + noise_std.to(dev)[:, None, None, None] * z.to(dev)  # few quanta behind lead
    return (x + mask * (shadow - x)).to(images.dtype)


def random_metal(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """One or two metal rods on ``images (B, 1, H, W)`` with probability ``p`` each (module doc)."""
    b, _, h, w = images.shape
    on = torch.rand(b, generator=generator, dtype=torch.float64) < p
    two = torch.rand(b, generator=generator, dtype=torch.float64) < 0.5
    k = 2
    cx = _u(generator, b * k, 0.15, 0.85).view(b, k) * (w - 1)
    cy = _u(generator, b * k, 0.15, 0.85).view(b, k) * (h - 1)
    ang = _u(generator, b * k, 0.0, math.pi).view(b, k)
    length = _u(generator, b * k, 0.08, 0.6).view(b, k) * w
    radius = _u(generator, b * k, 0.4, 2.5).view(b, k)
    value = _u(generator, b * k, 0.5, 4.0).view(b, k)
    if not bool(on.any()):
        return images
    active = torch.stack([on, on & two], 1)  # (B, 2)
    dev, dt = images.device, torch.float64
    yy = torch.arange(h, dtype=dt, device=dev)[None, None, :, None]
    xx = torch.arange(w, dtype=dt, device=dev)[None, None, None, :]

    def e(t: Tensor) -> Tensor:
        return t.to(dev)[:, :, None, None]

    ux, uy = e(torch.cos(ang)), e(torch.sin(ang))
    rx, ry = xx - e(cx), yy - e(cy)
    along = (rx * ux + ry * uy).clamp(-e(length) / 2, e(length) / 2)
    dist2 = (rx - along * ux) ** 2 + (ry - along * uy) ** 2
    chord = e(value) * torch.sqrt((1 - dist2 / e(radius) ** 2).clamp_min(0.0))
    add = (chord * e(active.to(dt))).sum(1)  # (B, H, W)
    return images + add[:, None].to(images.dtype)


class ContentAugmentation:
    """``random_collimation`` then ``random_metal`` (probabilities per image; 0 disables)."""

    def __init__(self, p_collimation: float = 0.5, p_metal: float = 0.5) -> None:
        for name, v in (("p_collimation", p_collimation), ("p_metal", p_metal)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        self.p_collimation, self.p_metal = float(p_collimation), float(p_metal)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augmented ``(B, 1, H, W)`` (a new tensor when anything was added)."""
        if self.p_collimation > 0:
            images = random_collimation(images, generator, self.p_collimation)
        if self.p_metal > 0:
            images = random_metal(images, generator, self.p_metal)
        return images

    def __repr__(self) -> str:
        return f"ContentAugmentation(p_collimation={self.p_collimation}, p_metal={self.p_metal})"
