"""Trilinear samples of a CT and their exact gradient on a CPU, from two bilinear samples each.

The trilinear interpolant of a volume ``V (X, Y, Z)`` at ``(x, y, z)`` is the linear blend, along
``x``, of the bilinear interpolants of the two slices ``x0 = ⌊x⌋`` and ``x0 + 1``:

    v = (1 − f) B_{x0}(y, z) + f B_{x0+1}(y, z),   f = x − x0,
    ∂v/∂x = B_{x0+1} − B_{x0},   ∂v/∂(y, z) = (1 − f) ∇B_{x0} + f ∇B_{x0+1}.

:class:`SliceAtlas` lays the slices out as tiles of one 2-D image (each tile framed by zero rows
and columns), so that both bilinear samples are one ``grid_sample`` in 2-D and the slice
gradients one ``grid_sampler_2d_backward``: PyTorch's 2-D kernels are vectorised on a CPU, its
3-D ones are scalar and use one thread per batch element. Values and gradients are those of the
3-D interpolant with zero padding (``grid_sample(..., align_corners=True)`` on ``V``) for points
in ``[-2, X + 1] × [-2, Y + 1] × [-2, Z + 1]`` (voxel indices, with a voxel to spare for
rounding); points farther out must not be passed (:func:`box_runs` keeps a renderer's samples
inside such a box).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["SliceAtlas", "box_runs"]

#: Zero voxels on each side of each slice's rows and columns and of the slice stack.
_PAD = 3


class SliceAtlas:
    """The slices ``V[x]`` of a volume ``(C, X, Y, Z)`` tiled into one image ``(1, C, H, W)``.

    Slice ``x`` (``-3 ≤ x < X + 3``, zero outside ``[0, X)``) is tile ``i = x + 3``, at tile row
    ``i // k`` and column ``i % k``; a tile is ``(Y + 6) × (Z + 6)`` with the slice's voxel
    ``(y, z)`` at ``(y + 3, z + 3)``, so bilinear samples of points less than three voxels
    outside the volume read only the tile's own zero frame.
    """

    def __init__(self, volume: torch.Tensor) -> None:
        C, X, Y, Z = volume.shape
        n_tiles = X + 2 * _PAD
        self.tile = (Y + 2 * _PAD, Z + 2 * _PAD)
        self.k = max(1, math.ceil(math.sqrt(n_tiles * self.tile[0] / self.tile[1])))  # ~square
        rows = math.ceil(n_tiles / self.k)
        slices = F.pad(volume, (_PAD,) * 6)
        slices = F.pad(slices, (0, 0, 0, 0, 0, rows * self.k - n_tiles))  # (C, rows·k, th, tw)
        th, tw = self.tile
        self.image = (
            slices.view(C, rows, self.k, th, tw).permute(0, 1, 3, 2, 4).reshape(1, C, rows * th, -1)
        ).contiguous()
        self.shape = volume.shape
        # per tile index: the normalised (col, row) of its voxel (0, 0), the last two entries
        # far outside the image (slices past the stack, and points flagged outside)
        _, _, H, W = self.image.shape
        self.scale = (2.0 / (W - 1), 2.0 / (H - 1))
        index = torch.arange(rows * self.k + 2, dtype=torch.float64)
        tile_row, tile_col = torch.div(index, self.k, rounding_mode="floor"), index % self.k
        offsets = torch.stack(
            [
                (tile_col * tw + _PAD) * self.scale[0] - 1.0,
                (tile_row * th + _PAD) * self.scale[1] - 1.0,
            ],
            dim=-1,
        )
        self.n_tiles = n_tiles
        offsets[n_tiles:] = -8.0
        self.offsets = offsets.to(volume.device)

    def sample(
        self,
        start: torch.Tensor,
        direction: torch.Tensor,
        alpha: torch.Tensor,
        outside: torch.Tensor,
        gradient: bool = False,
        stage: Callable[[str], contextlib.AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Values ``(C, R, M)`` at the points ``start + alpha · direction`` (voxel coordinates;
        ``start``, ``direction`` ``(R, 3)``, ``alpha`` ``(R, M)``) and, with ``gradient``,
        their gradients ``(C, R, M, 3)`` (per voxel index); points flagged in ``outside``
        ``(R, M)`` read 0. ``stage(name)``, if given, wraps the values' (``"drr.sample"``) and the
        gradients' (``"drr.gradient"``) work (timers)."""
        stage = stage or (lambda name: contextlib.nullcontext())
        with stage("drr.sample"):
            value, grid, b0, b1, f = self._values(start, direction, alpha, outside)
        if not gradient:
            return value, None
        with stage("drr.gradient"):
            return value, self._gradients(grid, b0, b1, f, alpha.shape)

    def _values(
        self,
        start: torch.Tensor,
        direction: torch.Tensor,
        alpha: torch.Tensor,
        outside: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        R, M = alpha.shape
        dtype = alpha.dtype
        x = torch.addcmul(start[:, None, 0], alpha, direction[:, None, 0])
        x0 = torch.floor(x)
        f = x - x0
        i0 = (x0 + _PAD).clamp_(0, self.n_tiles).long().masked_fill_(outside, self.n_tiles)
        i0 = i0.view(-1)
        scale = torch.tensor(self.scale, dtype=dtype, device=alpha.device)
        zy = torch.addcmul(  # normalised (col, row) offsets within the tile, (R·M, 2)
            (start[:, None, [2, 1]] * scale), alpha[..., None], direction[:, None, [2, 1]] * scale
        ).view(-1, 2)
        offsets = self.offsets.to(dtype)
        grid = torch.stack([offsets[i0] + zy, offsets[i0 + 1] + zy])[None]  # (1, 2, R·M, 2)
        image = self.image.to(dtype)
        both = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        b0, b1 = both[0, :, 0], both[0, :, 1]  # (C, R·M)
        f = f.view(-1)
        return torch.lerp(b0, b1, f).view(-1, R, M), grid, b0, b1, f

    def _gradients(
        self, grid: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor, f: torch.Tensor, shape
    ) -> torch.Tensor:
        image = self.image.to(grid.dtype)
        scale = torch.tensor(self.scale, dtype=grid.dtype, device=grid.device)
        blend = torch.stack([1.0 - f, f])[None, None]  # (1, 1, 2, R·M): the two slices' weights
        grads = []
        for c in range(image.shape[1]):
            g = torch.ops.aten.grid_sampler_2d_backward(
                blend, image[:, c : c + 1], grid, 0, 0, True, [False, True]
            )[1]  # (1, 2, R·M, 2): (col, row) derivatives of each slice, weighted
            gzy = (g[0, 0] + g[0, 1]) * scale
            grads.append(torch.stack([b1[c] - b0[c], gzy[:, 1], gzy[:, 0]], dim=-1))
        return torch.stack(grads).view(-1, *shape, 3)


def box_runs(
    s_vox: torch.Tensor,
    d_vox: torch.Tensor,
    box: torch.Tensor,
    alpha_min: float,
    step: float,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For rays ``s + alpha d`` ``(R, 3)`` (voxel coordinates) and the samples
    ``alpha_k = alpha_min + k·step``, ``k < n``: the first ``k`` inside ``box`` ``(2, 3)`` (low
    and high corner) and how many consecutive samples lie inside it, ``(R,)`` each (long; count
    0 for a miss). Slab test in float64."""
    s, d = s_vox.double(), d_vox.double()
    lo, hi = box[0].to(s), box[1].to(s)
    with torch.no_grad():
        t1, t2 = (lo - s) / d, (hi - s) / d
        flat = d == 0  # parallel to a slab: all of the ray or none of it inside
        inside = (s >= lo) & (s <= hi)
        inf = torch.tensor(math.inf, dtype=s.dtype, device=s.device)
        enter = torch.where(flat, torch.where(inside, -inf, inf), torch.minimum(t1, t2))
        leave = torch.where(flat, torch.where(inside, inf, -inf), torch.maximum(t1, t2))
        enter, leave = enter.amax(dim=-1), leave.amin(dim=-1)
        first = torch.ceil((enter - alpha_min) / step).clamp(0, n)
        last = torch.floor((leave - alpha_min) / step).clamp(-1, n - 1)
        count = (last - first + 1).clamp_min(0)
    return first.long(), count.long()
