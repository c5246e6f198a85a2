"""Checks and geometry of the volumes a :class:`~.drr.DrrRenderer` integrates: the attenuation
and its extra channels, their bounding sphere (for the sampling window) and the box outside
which their trilinear interpolant is exactly zero (for the CPU path's clipped rays)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RenderError", "bounding_sphere", "checked_volumes", "support_box"]


class RenderError(ValueError):
    """Bad input to the renderer (pose shape, non-finite values, ...)."""


def checked_volumes(
    mu: torch.Tensor | np.ndarray, channels: torch.Tensor | np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``mu (X, Y, Z)`` and ``channels (C, X, Y, Z)`` (or None) as finite float32 tensors.

    Raises:
        RenderError: not 3-D, a channel stack of another shape, or NaN / inf values.
    """
    mu = torch.as_tensor(np.asarray(mu) if not isinstance(mu, torch.Tensor) else mu).float()
    if mu.ndim != 3:
        raise RenderError(f"attenuation volume must be 3-D, got shape {tuple(mu.shape)}")
    if not torch.isfinite(mu).all():
        raise RenderError("attenuation volume contains NaN or inf")
    if channels is None:
        return mu, None
    channels = torch.as_tensor(
        np.asarray(channels) if not isinstance(channels, torch.Tensor) else channels
    ).float()
    if channels.ndim != 4 or channels.shape[1:] != mu.shape or not torch.isfinite(channels).all():
        raise RenderError(
            f"channels must be finite (C, {', '.join(map(str, mu.shape))}), "
            f"got shape {tuple(channels.shape)}"
        )
    return mu, channels


def bounding_sphere(
    shape: tuple[int, int, int], affine: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, float]:
    """Centre (world mm, ``(3,)``) and radius (mm) of a sphere around every voxel centre of a
    volume of ``shape`` with voxel-to-world ``affine``, grown by the largest voxel ``spacing``."""
    dims = np.array(shape, dtype=np.float64)
    corners = (
        np.array(
            [
                [i, j, k, 1.0]
                for i in (0, dims[0] - 1)
                for j in (0, dims[1] - 1)
                for k in (0, dims[2] - 1)
            ]
        )
        @ affine.T
    )
    center = corners[:, :3].mean(axis=0)
    return center, float(np.linalg.norm(corners[:, :3] - center, axis=1).max() + spacing.max())


def support_box(mu: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
    """Box ``(2, 3)`` float64 (voxel indices: low and high corner) outside which the trilinear
    interpolant of every channel is exactly zero, with one voxel to spare: the nonzero voxels'
    bounding box grown by two voxels (one for the interpolant's ramp to zero, one so that no kept
    sample is near a face where that ramp has its kink)."""
    occupied = mu != 0
    if channels is not None:
        occupied = occupied | (channels != 0).any(dim=0)
    lo, hi = [], []
    for axis in range(3):
        along = occupied.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()
        lo.append(float(along.min()) - 2.0 if len(along) else 0.0)
        hi.append(float(along.max()) + 2.0 if len(along) else -1.0)
    return torch.tensor([lo, hi], dtype=torch.float64)
