"""DRR rendering over diffdrr, with the exact pose Jacobian ``∂DRR/∂δ`` in one pass.

The renderer integrates the CT's linear attenuation along each X-ray with the rectangle rule on
samples spaced evenly along the ray (diffdrr's ``Trilinear`` renderer). The samples cover a
fixed window of the ray, ``alpha ∈ [alpha_min, alpha_max]`` (fraction of the source-to-pixel
distance), chosen from the volume's bounding sphere so that it contains the whole volume for
the pose it was computed at. Holding that window fixed makes the DRR a smooth function of the
pose and its derivative exact.

Jacobian: for a left-multiplied increment ``T <- exp(δ) T`` with ``δ = (v, w)`` every sample
point moves as ``p <- p + v + w × p`` in CT world coordinates, so with ``g = ∇μ(p)`` (world mm)

    ∂I/∂v = c Σ_k g_k,        ∂I/∂w = c Σ_k p_k × g_k,        c = scale · |ray| · Δalpha,

where ``∇μ`` is the analytic gradient of the trilinear interpolant (piecewise linear, computed
from the same eight voxels as the value). Forward-mode AD does not work through diffdrr's
``grid_sampler_3d`` (docs/ARCHITECTURE.md, Environment facts); this route needs no AD at all.

On a CPU, :meth:`DrrRenderer.render_with_jacobian`, :meth:`DrrRenderer.render_channels` and
``forward`` without autograd take on each ray only the window's samples inside the CT's support
box (the dropped ones are exactly zero, so the sums and the Jacobian are the full window's), and
sample with :class:`~.drr_sampling.SliceAtlas` (2-D ``grid_sample`` on the tiled slices); on a
GPU they use the eight-voxel gather below on every sample (docs/SPEED.md).

Poses are ``T_ct_from_carm`` in the C-arm optical frame (``sphere_reg_ros.core``). diffdrr's
camera frame has x and y flipped (with ``reverse_x_axis=True``): ``E = T · diag(-1, -1, 1, 1)``.

(A little over 400 lines: the CPU and GPU paths of the renderer share its window, sample grid
and Jacobian formula, and are kept side by side so that they stay the same computation.)
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
from diffdrr.drr import DRR
from diffdrr.pose import RigidTransform
from torchio import ScalarImage, Subject

from .carm import CarmGeometry
from .drr_sampling import SliceAtlas, box_runs
from .drr_volume import RenderError, bounding_sphere, checked_volumes, support_box
from .trilinear import _trilinear_padded, trilinear_with_gradient

__all__ = [
    "DrrRenderer",
    "RenderError",
    "MU_WATER_PER_MM",
    "OPTICAL_TO_DIFFDRR",
    "trilinear_with_gradient",
]

#: Optical frame -> diffdrr camera frame (a rotation by π about z; its own inverse).
OPTICAL_TO_DIFFDRR = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))

#: Attenuation of water per mm at ~60 keV; scales water-relative μ to line integrals.
MU_WATER_PER_MM = 0.02


def _check_pose(pose: torch.Tensor) -> torch.Tensor:
    if not isinstance(pose, torch.Tensor) or pose.ndim != 3 or pose.shape[-2:] != (4, 4):
        shape = tuple(pose.shape) if isinstance(pose, torch.Tensor) else type(pose).__name__
        raise RenderError(f"pose must be a (B, 4, 4) tensor, got {shape}")
    if not torch.isfinite(pose).all():
        raise RenderError("pose contains NaN or inf")
    return pose


class DrrRenderer(torch.nn.Module):
    """Batched DRRs and their exact pose Jacobian for one CT and one C-arm geometry.

    Args:
        mu: ``(X, Y, Z)`` water-relative linear attenuation (≥ 0), e.g. from
            ``volume.hu_to_attenuation``.
        affine: ``(4, 4)`` voxel index → CT world (RAS, mm).
        geometry: C-arm intrinsics; images are ``(B, 1, height, width)``.
        step_mm: spacing of samples along the central ray (default: the smallest voxel spacing).
        scale: multiplies the integral (default ``MU_WATER_PER_MM``), giving line integrals
            of attenuation (dimensionless, ~0–6 for a human torso).
        channels: ``(C, X, Y, Z)`` extra attenuation channels on the same grid (e.g. the bone
            part of ``mu``, :func:`~.volume.bone_attenuation`), rendered beside ``mu`` by
            ``render_with_jacobian(..., channels=True)``: images ``(B, 1 + C, H, W)``.
    """

    def __init__(
        self,
        mu: torch.Tensor | np.ndarray,
        affine: np.ndarray,
        geometry: CarmGeometry,
        step_mm: float | None = None,
        scale: float = MU_WATER_PER_MM,
        channels: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        mu, channels = checked_volumes(mu, channels)
        if channels is not None:
            # (X, Y, Z, 1 + C), padded like the density (see _padded_density)
            stacked = torch.cat([mu[None], channels]).permute(1, 2, 3, 0)
            self.register_buffer(
                "_channels", torch.nn.functional.pad(stacked, (0, 0, 2, 2, 2, 2, 2, 2)).contiguous()
            )
        else:
            self.register_buffer("_channels", None)
        self.n_channels = 1 if channels is None else 1 + int(channels.shape[0])
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise RenderError(f"affine must be an invertible 4x4 matrix, got {affine.tolist()}")
        self.geometry = geometry
        self.scale = float(scale)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        self.step_mm = float(step_mm if step_mm is not None else spacing.min())
        if not self.step_mm > 0:
            raise RenderError(f"step_mm must be positive, got {step_mm}")

        image = ScalarImage(tensor=mu[None], affine=affine)
        subject = Subject(
            volume=image, density=image, mask=None, reorient=torch.eye(4), fiducials=None
        )
        self.drr = DRR(
            subject,
            sdd=geometry.sdd,
            height=geometry.height,
            width=geometry.width,
            delx=geometry.delx,
            dely=geometry.dely,
            x0=geometry.x0,
            y0=geometry.y0,
            reverse_x_axis=True,
            renderer="trilinear",
        )
        # Volume's bounding sphere in world coordinates (for the sampling window).
        center, self.radius = bounding_sphere(mu.shape, affine, spacing)
        self.register_buffer("_center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("_flip", OPTICAL_TO_DIFFDRR.float())
        self.register_buffer("_support", support_box(mu, channels))

    #: when a dict, the renderer adds the wall time (s) of its parts to it: ``drr.rays``,
    #: ``drr.sample``, ``drr.gradient`` (CPU), ``drr.jacobian`` (``benchmark-drr --profile``)
    timings: dict | None = None

    @contextlib.contextmanager
    def _stage(self, name: str):
        if self.timings is None:
            yield
            return
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # ------------------------------------------------------------------ geometry
    @property
    def dtype(self) -> torch.dtype:
        return self.drr.density.dtype

    @property
    def device(self) -> torch.device:
        return self.drr.density.device

    def rays(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ``(B, 1, 3)`` and pixel-centre ``(B, H·W, 3)`` points in CT world (mm)."""
        pose = _check_pose(pose).to(self.dtype)
        extrinsic = RigidTransform(pose @ self._flip.to(pose))
        return self.drr.detector(extrinsic, None)

    def window(self, pose: torch.Tensor) -> tuple[float, float]:
        """Sampling window ``(alpha_min, alpha_max)`` covering the volume for all poses given."""
        with torch.no_grad():
            source, target = self.rays(pose)
            dist = (source[:, 0] - self._center.to(source)).norm(dim=-1)
            length = (target - source).norm(dim=-1)
            lo = ((dist - self.radius) / length.max(dim=-1).values).min().item()
            hi = ((dist + self.radius) / length.min(dim=-1).values).max().item()
        return max(lo, 0.0), min(max(hi, 1e-6), 1.0)

    def n_samples(self, window: tuple[float, float]) -> int:
        """Samples per ray so that their spacing on the central ray is about ``step_mm``."""
        span_mm = (window[1] - window[0]) * self.geometry.sdd
        return max(2, int(math.ceil(span_mm / self.step_mm)) + 1)

    # ------------------------------------------------------------------ rendering
    def forward(
        self, pose: torch.Tensor, window: tuple[float, float] | None = None
    ) -> torch.Tensor:
        """DRRs ``(B, 1, H, W)`` for poses ``(B, 4, 4)`` (diffdrr's trilinear renderer).

        Differentiable by reverse-mode autograd with respect to ``pose``. On a CPU with autograd
        off, the same samples by the clipped sampler of :meth:`render_channels` (no graph needed;
        equal to diffdrr's to float rounding).
        """
        pose = _check_pose(pose).to(self.dtype)
        window = self.window(pose) if window is None else window
        if self.device.type == "cpu" and not torch.is_grad_enabled():
            source, target = self.rays(pose)
            n = self.n_samples(window)
            return self._clipped(source, target, window, n, False, jacobian=False)[0]
        extrinsic = RigidTransform(pose @ self._flip.to(pose))
        img = self.drr(
            extrinsic, n_points=self.n_samples(window), alphamin=window[0], alphamax=window[1]
        )
        return img * self.scale

    def render_channels(
        self, pose: torch.Tensor, window: tuple[float, float] | None = None
    ) -> torch.Tensor:
        """DRRs of ``mu`` and of each extra channel, ``(B, 1 + C, H, W)``, without the Jacobian
        (``F.grid_sample``; the same samples and trilinear weights as :meth:`render_with_jacobian`).
        Without extra channels: ``(B, 1, H, W)``."""
        pose = _check_pose(pose).to(self.dtype)
        window = self.window(pose) if window is None else window
        n = self.n_samples(window)
        if self.device.type == "cpu":
            with torch.no_grad():
                source, target = self.rays(pose)
                image, _ = self._clipped(
                    source, target, window, n, self._channels is not None, jacobian=False
                )
            return image
        volume = (
            self._channels if self._channels is not None else self._padded_density()[..., None]
        ).to(self.dtype)
        C = volume.shape[-1]
        grid_volume = volume.permute(3, 0, 1, 2)[None]  # (1, C, X + 4, Y + 4, Z + 4)
        dims = torch.tensor(grid_volume.shape[2:], dtype=self.dtype, device=self.device)
        affine_inv = self.drr._affine_inverse[0].to(self.dtype)
        lin, offset = affine_inv[:3, :3], affine_inv[:3, 3]
        alphas = (
            torch.linspace(0.0, 1.0, n, dtype=self.dtype, device=self.device)
            * (window[1] - window[0])
            + window[0]
        )
        step = (window[1] - window[0]) / (n - 1)
        H, W = self.geometry.height, self.geometry.width
        out = []
        with torch.no_grad():
            source, target = self.rays(pose)
            for b in range(len(pose)):  # one pose per call: batching them was no faster on a CPU
                direction = target[b] - source[b]  # (P, 3)
                s_vox = source[b] @ lin.T + offset + 2.0  # padded voxel coordinates
                vox = s_vox + alphas[None, :, None] * (direction @ lin.T)[:, None]  # (P, N, 3)
                grid = (2.0 * vox / (dims - 1) - 1.0).flip(
                    -1
                )  # grid_sample's (x, y, z) = (Z, Y, X)
                val = torch.nn.functional.grid_sample(
                    grid_volume,
                    grid[None, :, :, None],
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=True,
                )
                c = self.scale * step * direction.norm(dim=-1)  # (P,)
                out.append((val[0, :, :, :, 0].sum(-1) * c).view(C, H, W))
        return torch.stack(out)

    def render_with_jacobian(
        self,
        pose: torch.Tensor,
        window: tuple[float, float] | None = None,
        rows_per_chunk: int | None = None,
        channels: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DRRs and their exact Jacobian for a left-multiplied se(3) increment.

        Returns:
            image ``(B, 1, H, W)`` and Jacobian ``(B, H·W, 6)``, columns ``(v, w)``: mm⁻¹ and
            rad⁻¹ (image units per mm of translation / per rad of rotation, CT world frame).
            With ``channels`` (and channels given at construction): the DRR of ``mu`` and of
            each extra channel, ``(B, 1 + C, H, W)`` and ``(B, (1 + C)·H·W, 6)`` (channel-major).
        """
        pose = _check_pose(pose).to(self.dtype)
        window = self.window(pose) if window is None else window
        n = self.n_samples(window)
        with torch.no_grad(), self._stage("drr.rays"):
            source, target = self.rays(pose)
        H, W = self.geometry.height, self.geometry.width
        if channels and self._channels is None:
            raise RenderError("this renderer has no extra channels")
        if self.device.type == "cpu":
            return self._clipped(source, target, window, n, channels, jacobian=True)
        volume = self._channels.to(self.dtype) if channels else self._padded_density()
        C = volume.shape[-1] if channels else 1
        rows_per_chunk = rows_per_chunk or max(1, (1 << 19) // max(1, n * W * len(pose) * C))
        alphas = torch.linspace(0.0, 1.0, n, dtype=self.dtype, device=self.device)
        alphas = alphas * (window[1] - window[0]) + window[0]
        step = (window[1] - window[0]) / (n - 1)
        images, jacobians = [], []
        for start in range(0, H, rows_per_chunk):
            tgt = target[:, start * W : (start + rows_per_chunk) * W]
            img, jac = self._integrate(source, tgt, alphas, step, volume)
            images.append(img)
            jacobians.append(jac)
        B = len(pose)
        if not channels:
            return torch.cat(images, dim=1).view(B, 1, H, W), torch.cat(jacobians, dim=1)
        # chunks are (B, P, C) and (B, P, C, 6): channel-major layout
        image = torch.cat(images, dim=1).permute(0, 2, 1).reshape(B, C, H, W)
        return image, torch.cat(jacobians, dim=1).permute(0, 2, 1, 3).reshape(B, C * H * W, 6)

    def _atlas(self, channels: bool) -> SliceAtlas:
        """The :class:`SliceAtlas` of ``mu`` (C = 1), or of ``mu`` and the extra channels
        (cached per dtype and device)."""
        src = self._channels if channels else self.drr.density
        cache = self.__dict__.setdefault("_atlas_cache", {})
        hit = cache.get(channels)
        if hit is None or hit[0] is not src:
            vol = src[2:-2, 2:-2, 2:-2].permute(3, 0, 1, 2) if channels else src[None]
            cache[channels] = hit = (src, SliceAtlas(vol))
        return hit[1]

    def _clipped(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        window: tuple[float, float],
        n: int,
        channels: bool,
        jacobian: bool,
        samples_per_chunk: int = 1 << 21,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``(B, C, H, W)`` and, with ``jacobian``, Jacobians ``(B, C·H·W, 6)`` (as
        :meth:`render_with_jacobian`) from samples clipped to the CT's support (CPU).

        The samples are the window's, ``alpha_k = alpha_min + k·Δalpha`` for ``k < n``; each ray
        takes only the run of them inside the support box (:attr:`_support`: where the
        interpolant can be nonzero, plus a voxel). The samples it drops have value and gradient
        exactly zero, also for poses nearby, so the sums are the full window's: the DRR stays a
        smooth function of the pose and the Jacobian exact. Values and gradients come from
        :class:`~.drr_sampling.SliceAtlas` (the same trilinear interpolant); a chunk of rays is
        sampled up to its longest run, the rest of the shorter runs reading zero (chunks of about
        ``samples_per_chunk`` samples).
        """
        B, P = target.shape[:2]
        dtype, device = target.dtype, target.device
        atlas = self._atlas(channels)
        C = atlas.shape[0]
        with self._stage("drr.rays"):
            affine_inv = self.drr._affine_inverse[0].to(target)
            lin, offset = affine_inv[:3, :3], affine_inv[:3, 3]
            direction = (target - source).reshape(-1, 3)  # (R, 3), R = B·P rays
            src = source.expand(B, P, 3).reshape(-1, 3)
            s_vox = src @ lin.T + offset
            d_vox = direction @ lin.T
            step = (window[1] - window[0]) / (n - 1)
            k_first, count = box_runs(s_vox, d_vox, self._support, window[0], step, n)
            c = self.scale * step * direction.norm(dim=-1)  # (R,)
            k_first = k_first.to(dtype)
        R = B * P
        values = torch.zeros(C, R, dtype=dtype, device=device)
        grads = torch.zeros(C, R, 2, 3, dtype=dtype, device=device) if jacobian else None
        # few, large chunks: each tensor operation is a parallel region, and on a busy machine
        # every region waits for its slowest thread (64² in one chunk was ~3x faster than 4)
        rays_per_chunk = max(256, samples_per_chunk // max(1, int(count.max())))
        for a in range(0, R, rays_per_chunk):
            b = min(R, a + rays_per_chunk)
            m = int(count[a:b].max())
            if m == 0:
                continue
            with self._stage("drr.sample"):
                # alpha_k from k alone (not from the ray's run): the same points, to the last
                # bit, for every renderer that takes sample k
                k = k_first[a:b, None] + torch.arange(m, dtype=dtype, device=device)
                alpha = window[0] + k * step  # (r, m)
                outside = k >= (k_first + count)[a:b, None]
            value, grad = atlas.sample(
                s_vox[a:b], d_vox[a:b], alpha, outside, jacobian, stage=self._stage
            )
            values[:, a:b] = value.sum(-1)
            if jacobian:
                with self._stage("drr.jacobian"):
                    # Σ_k g_k and Σ_k alpha_k g_k per ray
                    weights = torch.stack([torch.ones_like(alpha), alpha], dim=1)  # (r, 2, m)
                    grads[:, a:b] = weights @ grad
        image = (values * c).view(C, B, P).transpose(0, 1)
        H, W = self.geometry.height, self.geometry.width
        if not jacobian:
            return image.reshape(B, C, H, W), None
        with self._stage("drr.jacobian"):
            sum_g = grads[:, :, 0] @ lin  # (C, R, 3) world gradients
            sum_ag = grads[:, :, 1] @ lin
            jw = torch.linalg.cross(src.expand_as(sum_g), sum_g, dim=-1) + torch.linalg.cross(
                direction.expand_as(sum_ag), sum_ag, dim=-1
            )
            jac = c[:, None] * torch.cat([sum_g, jw], dim=-1)  # (C, R, 6)
            jac = jac.view(C, B, P, 6).transpose(0, 1).reshape(B, C * P, 6)
        return image.reshape(B, C, H, W), jac

    def _integrate(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        alphas: torch.Tensor,
        step: float,
        volume: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Line integrals ``(B, P)`` and Jacobians ``(B, P, 6)`` for the rays to ``target``
        (``(B, P, C)`` and ``(B, P, C, 6)`` for a padded volume with channels ``(X, Y, Z, C)``).

        With ``p_k = s + alpha_k d``: ``Σ p_k × g_k = s × Σ g_k + d × Σ alpha_k g_k``, so only two
        weighted sums of the voxel-space gradient are needed per ray; the change to world
        coordinates (``g_world = A⁻ᵀ g_vox``) is linear and applied after summing.
        """
        affine_inv = self.drr._affine_inverse[0].to(source)
        lin, offset = affine_inv[:3, :3], affine_inv[:3, 3]
        direction = target - source  # (B, P, 3)
        s_vox = source @ lin.T + offset + 2.0  # padded voxel coordinates
        d_vox = direction @ lin.T
        with self._stage("drr.sample"):
            vox = (
                s_vox[:, :, None] + alphas[None, None, :, None] * d_vox[:, :, None]
            )  # (B, P, N, 3)
            value, grad_vox = _trilinear_padded(volume, vox)
        with self._stage("drr.jacobian"):
            return self._reduce(source, direction, lin, alphas, step, value, grad_vox, volume.ndim)

    def _reduce(self, source, direction, lin, alphas, step, value, grad_vox, ndim):
        c = self.scale * step * direction.norm(dim=-1)  # (B, P)
        if ndim == 4:  # channels: value (B, P, N, C), grad (B, P, N, C, 3)
            sum_g = grad_vox.sum(dim=2) @ lin  # (B, P, C, 3)
            sum_ag = torch.einsum("n,bpnkc->bpkc", alphas, grad_vox) @ lin
            src, direction, c = source[:, :, None], direction[:, :, None], c[..., None]
        else:
            sum_g = grad_vox.sum(dim=2) @ lin  # (B, P, 3) world gradient sums
            sum_ag = torch.einsum("n,bpnc->bpc", alphas, grad_vox) @ lin
            src = source
        image = c * value.sum(dim=2)
        jw = torch.linalg.cross(src.expand_as(sum_g), sum_g, dim=-1) + torch.linalg.cross(
            direction.expand_as(sum_ag), sum_ag, dim=-1
        )
        return image, c[..., None] * torch.cat([sum_g, jw], dim=-1)

    def _padded_density(self) -> torch.Tensor:
        """The attenuation volume padded with two zero voxels per side (cached per dtype/device)."""
        density = self.drr.density
        cache = getattr(self, "_padded_cache", None)
        if cache is None or cache[0] is not density or cache[1].dtype != density.dtype:
            padded = torch.nn.functional.pad(density, (2, 2, 2, 2, 2, 2)).contiguous()
            self._padded_cache = (density, padded)
        return self._padded_cache[1]
