"""Domain randomisation of X-ray / DRR intensities (the seed paper's seven transforms).

The method and the seed paper: docs/ARCHITECTURE.md, Method.

Every function takes a batch ``images`` of shape ``(B, 1, H, W)`` (float, finite) and an explicit
``torch.Generator``; each image draws its own parameters, all draws come from that generator
(scalars in float64 on ``generator.device``, then moved to ``images.device``), so a seed fixes the
result. ``max`` is the per-image maximum ``images.amax((1, 2, 3))``. Functions return
``(out, params)``: ``out`` has the input's shape, dtype and device (the input is never modified in
place) and ``params`` maps names to per-image tensors of shape ``(B,)`` on ``images.device``.

Choices the seed leaves open (documented here, exposed as keyword arguments where sensible):

* smoothing: a Gaussian kernel of size k = 3 or 5 with OpenCV's default width
  ``sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8`` (0.8 px and 1.1 px), replicate padding (so a constant
  image stays constant);
* noise: ``x + mean + std * N(0, 1)`` per pixel with ``std = noise_std_fraction * |max|``,
  default 0.02;
* bound normalisation: ``clip((x - lower) / (upper - lower), 0, 1)`` (clipped, i.e. windowing);
  left unchanged where ``upper - lower <= 0`` (only possible when ``max <= 0``);
* gamma: odd extension ``sign(x) * m * (|x| / m) ** gamma`` with ``m = max |x|``, which equals
  ``m * (x / m) ** gamma`` on non-negative images and keeps negative values (from the noise) rather
  than clipping them; all-zero images are unchanged;
* erasing: the orientation (long side along rows or columns) is a fair coin; a rectangle that does
  not fit the image is redrawn (up to 10 draws, then clamped to the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SMOOTHING_KERNEL_SIZES = (3, 5)
NOISE_MEAN_RANGE = (-0.15, 0.1)  # fraction of max
LOWER_BOUND_RANGE = (-0.04, 0.02)  # fraction of max
UPPER_BOUND_RANGE = (0.9, 1.05)  # fraction of max
LINEAR_SCALE_RANGE = (0.9, 1.05)
GAMMA_RANGE = (0.7, 1.3)
SIN_AMPLITUDE_RANGE = (0.8, 1.1)  # a
SIN_FREQUENCY_RANGE = (0.8, 1.1)  # b
SIN_PHASE_RANGE = (-0.5, 0.4)  # c
ERASE_AREA_RANGE = (0.02, 0.4)  # fraction of H * W
ERASE_ASPECT_RANGE = (0.3, 1.0)  # short side / long side
ERASE_ATTEMPTS = 10

Params = dict[str, Tensor]


def _check(images: Tensor, generator: torch.Generator) -> None:
    """Raise for anything but a finite float ``(B, 1, H, W)`` batch and a ``torch.Generator``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(
            f"images must have shape (B, 1, H, W) with H, W >= 1, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images must be finite (no NaN or Inf)")


def _uniform(
    generator: torch.Generator, n: int, bounds: tuple[float, float], device: torch.device
) -> Tensor:
    """``(n,)`` float64 draws from ``U[bounds[0], bounds[1])`` on ``device``."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    return (bounds[0] + (bounds[1] - bounds[0]) * u).to(device)


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    """``(B,)`` values -> ``(B, 1, 1, 1)`` in the images' dtype, for broadcasting."""
    return values.to(images.dtype).view(-1, 1, 1, 1)


def _image_max(images: Tensor) -> Tensor:
    """Per-image maximum, ``(B,)`` float64."""
    return images.amax(dim=(1, 2, 3)).to(torch.float64)


def random_smoothing(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Params]:
    """Gaussian smoothing with a k x k kernel, k in {3, 5} with probability 1/2 each.

    Returns params ``kernel_size`` (B,) int64 and ``sigma`` (B,) float64 (pixels).
    """
    _check(images, generator)
    b, _, h, w = images.shape
    choice = torch.rand(b, generator=generator, dtype=torch.float64, device=generator.device) < 0.5
    k = torch.where(choice, 3, 5).to(images.device)
    sigma = 0.3 * ((k.to(torch.float64) - 1.0) / 2.0 - 1.0) + 0.8
    if b == 0:
        return images.clone(), {"kernel_size": k, "sigma": sigma}
    offsets = torch.arange(-2, 3, dtype=torch.float64, device=images.device)
    g = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2) * (offsets.abs() <= (k[:, None] // 2))
    g = g / g.sum(dim=1, keepdim=True)  # (B, 5); the 3 x 3 kernels are zero-padded to 5 x 5
    weight = (g[:, :, None] * g[:, None, :]).to(images.dtype).unsqueeze(1)  # (B, 1, 5, 5)
    padded = F.pad(images.reshape(1, b, h, w), (2, 2, 2, 2), mode="replicate")
    out = F.conv2d(padded, weight, groups=b).reshape(b, 1, h, w)
    return out, {"kernel_size": k, "sigma": sigma}


def random_noise(
    images: Tensor, generator: torch.Generator, noise_std_fraction: float = 0.02
) -> tuple[Tensor, Params]:
    """Additive Gaussian noise ``N(mean, std^2)``, mean ~ U[-0.15 max, 0.1 max], std = fraction * |max|.

    Returns params ``max``, ``mean_fraction``, ``mean`` and ``std`` (all (B,) float64).
    """
    _check(images, generator)
    if not math.isfinite(noise_std_fraction) or noise_std_fraction < 0:
        raise ValueError(f"noise_std_fraction must be finite and >= 0, got {noise_std_fraction}")
    m = _image_max(images)
    fraction = _uniform(generator, images.shape[0], NOISE_MEAN_RANGE, images.device)
    mean, std = fraction * m, noise_std_fraction * m.abs()
    z = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=generator.device)
    out = images + _per_image(mean, images) + _per_image(std, images) * z.to(images.device)
    return out, {"max": m, "mean_fraction": fraction, "mean": mean, "std": std}


def random_bound_normalization(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Params]:
    """Window ``[lower, upper]`` -> ``[0, 1]``, clipped; lower ~ U[-0.04, 0.02] max, upper ~ U[0.9, 1.05] max.

    Images with ``upper <= lower`` (``max <= 0``) are returned unchanged.
    Returns params ``max``, ``lower_fraction``, ``upper_fraction``, ``lower``, ``upper`` ((B,) float64).
    """
    _check(images, generator)
    b = images.shape[0]
    m = _image_max(images)
    lower_fraction = _uniform(generator, b, LOWER_BOUND_RANGE, images.device)
    upper_fraction = _uniform(generator, b, UPPER_BOUND_RANGE, images.device)
    lower, upper = lower_fraction * m, upper_fraction * m
    width = _per_image(upper - lower, images)
    valid = width > 0
    scaled = (images - _per_image(lower, images)) / torch.where(
        valid, width, torch.ones_like(width)
    )
    out = torch.where(valid, scaled.clamp(0.0, 1.0), images)
    params = {"max": m, "lower_fraction": lower_fraction, "upper_fraction": upper_fraction}
    return out, {**params, "lower": lower, "upper": upper}


def random_linear_scaling(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Params]:
    """``factor * x`` with factor ~ U[0.9, 1.05]. Returns params ``factor`` (B,) float64."""
    _check(images, generator)
    factor = _uniform(generator, images.shape[0], LINEAR_SCALE_RANGE, images.device)
    return images * _per_image(factor, images), {"factor": factor}


def random_gamma(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Params]:
    """Gamma correction ``sign(x) m (|x| / m)^gamma``, ``m = max |x|``, gamma ~ U[0.7, 1.3].

    Returns params ``gamma`` (B,) float64.
    """
    _check(images, generator)
    gamma = _uniform(generator, images.shape[0], GAMMA_RANGE, images.device)
    m = images.abs().amax(dim=(1, 2, 3), keepdim=True)
    m_safe = torch.where(m > 0, m, torch.ones_like(m))
    out = (
        torch.sign(images) * m * (images.abs() / m_safe).clamp(max=1.0) ** _per_image(gamma, images)
    )
    return out, {"gamma": gamma}


def random_nonlinear_scaling(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Params]:
    """``a sin(b x + c)`` with a, b ~ U[0.8, 1.1] and c ~ U[-0.5, 0.4]. Returns params ``a``, ``b``, ``c``."""
    _check(images, generator)
    b = images.shape[0]
    a_ = _uniform(generator, b, SIN_AMPLITUDE_RANGE, images.device)
    b_ = _uniform(generator, b, SIN_FREQUENCY_RANGE, images.device)
    c_ = _uniform(generator, b, SIN_PHASE_RANGE, images.device)
    out = _per_image(a_, images) * torch.sin(
        _per_image(b_, images) * images + _per_image(c_, images)
    )
    return out, {"a": a_, "b": b_, "c": c_}


def random_erasing(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Params]:
    """Fill one axis-aligned rectangle per image with the whole image's mean intensity.

    Area ~ U[0.02, 0.4] * H * W, aspect (short / long side) ~ U[0.3, 1], the long side along rows
    (``vertical``) or columns with probability 1/2; sides are rounded to whole pixels (>= 1); a
    rectangle that does not fit is redrawn (up to ``ERASE_ATTEMPTS`` times, then clamped).
    Returns params ``area_fraction``, ``aspect``, ``fill`` ((B,) float64), ``vertical`` (bool) and
    ``top``, ``left``, ``height``, ``width`` ((B,) int64, pixels).
    """
    _check(images, generator)
    b, _, h, w = images.shape
    n = b * ERASE_ATTEMPTS
    area = _uniform(generator, n, ERASE_AREA_RANGE, images.device).view(b, ERASE_ATTEMPTS)
    aspect = _uniform(generator, n, ERASE_ASPECT_RANGE, images.device).view(b, ERASE_ATTEMPTS)
    coin = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    vertical = (coin < 0.5).to(images.device).view(b, ERASE_ATTEMPTS)
    pixels = area * (h * w)
    short, long = torch.sqrt(pixels * aspect), torch.sqrt(pixels / aspect)
    rows = torch.round(torch.where(vertical, long, short)).clamp(min=1).long()
    cols = torch.round(torch.where(vertical, short, long)).clamp(min=1).long()
    fits = (rows <= h) & (cols <= w)
    first = torch.where(fits.any(dim=1), fits.long().argmax(dim=1), 0)[
        :, None
    ]  # first fitting draw

    def pick(t: Tensor) -> Tensor:  # (B, ATTEMPTS) -> (B,), the chosen draw
        return t.gather(1, first).squeeze(1)

    rows, cols = pick(rows).clamp(max=h), pick(cols).clamp(max=w)
    position = torch.rand((b, 2), generator=generator, dtype=torch.float64, device=generator.device)
    position = position.to(images.device)
    top = torch.floor(position[:, 0] * (h - rows + 1)).long().clamp(max=h - rows)
    left = torch.floor(position[:, 1] * (w - cols + 1)).long().clamp(max=w - cols)
    r = torch.arange(h, device=images.device)[None, :]
    c = torch.arange(w, device=images.device)[None, :]
    in_rows = (r >= top[:, None]) & (r < (top + rows)[:, None])  # (B, H)
    in_cols = (c >= left[:, None]) & (c < (left + cols)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    fill = images.mean(dim=(1, 2, 3), keepdim=True)
    out = torch.where(mask, fill, images)
    params = {"area_fraction": pick(area), "aspect": pick(aspect), "vertical": pick(vertical)}
    params.update(top=top, left=left, height=rows, width=cols, fill=fill.view(-1).to(torch.float64))
    return out, params


TRANSFORMS: dict[str, Callable[[Tensor, torch.Generator], tuple[Tensor, Params]]] = {
    "smoothing": random_smoothing,
    "noise": random_noise,
    "bound_normalization": random_bound_normalization,
    "linear_scaling": random_linear_scaling,
    "gamma": random_gamma,
    "nonlinear_scaling": random_nonlinear_scaling,
    "erasing": random_erasing,
}
TRANSFORM_NAMES: tuple[str, ...] = tuple(TRANSFORMS)


@dataclass(frozen=True)
class AugmentationRecord:
    """What :class:`DomainRandomization` did to a batch.

    Attributes:
        applied: ``(B, 7)`` bool, column ``j`` for ``TRANSFORM_NAMES[j]``.
        params: per transform name, the transform's params for the images it was applied to, plus
            ``index`` ((n,) int64, the batch indices, ascending); every tensor has shape ``(n,)``.
    """

    applied: Tensor
    params: dict[str, Params]


class DomainRandomization:
    """The seed's domain randomisation: the seven transforms in ``TRANSFORM_NAMES`` order, each
    applied to each image independently with probability ``p``.

    ``aug(images, generator)`` returns the augmented ``(B, 1, H, W)`` batch;
    ``aug.apply(images, generator)`` also returns an :class:`AugmentationRecord`.
    """

    def __init__(self, p: float = 0.5) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __repr__(self) -> str:
        return f"DomainRandomization(p={self.p})"

    def apply(
        self, images: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, AugmentationRecord]:
        """Augment ``images`` (B, 1, H, W); returns the new batch and the record."""
        _check(images, generator)
        b = images.shape[0]
        draws = torch.rand(
            (b, len(TRANSFORMS)), generator=generator, dtype=torch.float64, device=generator.device
        )
        applied = (draws < self.p).to(images.device)
        out = images.clone()
        params: dict[str, Params] = {}
        for j, (name, transform) in enumerate(TRANSFORMS.items()):
            index = torch.nonzero(applied[:, j]).flatten()
            if index.numel() > 0:
                out[index], prm = transform(out[index], generator)
            else:
                prm = {}
            params[name] = {"index": index, **prm}
        return out, AugmentationRecord(applied=applied, params=params)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment ``images`` (B, 1, H, W) -> (B, 1, H, W)."""
        return self.apply(images, generator)[0]
