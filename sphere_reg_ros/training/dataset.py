"""Training data rendered on the fly from one CT: DRR pools, pose jitter by homography, landmarks.

Rendering is the CPU bottleneck (a 64² DRR of a 2 mm CT costs ~0.1 s, its pose Jacobian ~1 s),
while a training step consumes dozens of images. So images are rendered into pools that are
refreshed a few images per step and re-used with fresh randomness every time they are drawn:

* :class:`DrrPool` holds DRRs at poses from the :class:`PoseDistribution`, rendered with a
  margin around the detector. Drawing from it applies a random rotation ``Q`` of the C-arm about
  its X-ray source (``jitter_tilt_deg`` about x/y, ``jitter_roll_deg`` about the optical axis):
  the DRR of ``T·Q`` is *exactly* the DRR of ``T`` warped by the homography ``K Q K⁻¹`` (the rays
  are the same, only the pixel grid turns), computed with bilinear interpolation. Every draw is
  thus a new pose, then either a physics-based rendering of the "X-ray" from the DRR's two
  channels (:mod:`.physics`: whole and bone line integrals, with contrast, metal, beam hardening,
  heel, collimation, scatter, detector blur and photon noise) or the older image-space clinical
  content (:mod:`.content`: collimator shutters, metal rods), and a new domain randomisation
  (``core.augment``).
* :class:`SimilarityPool` holds, per item, a fixed image (with margin) at a true pose and a
  moving DRR at a pose near it, with the moving DRR's exact pose Jacobian. Moving poses are
  ``D·T_true`` with ``D = core.geometry.random_poses`` about the isocentre: rotation
  ``N(0, (u·moving_rot_deg)²)`` per world axis and translation ``N(0, (u·moving_trans_mm)²)``
  per world axis, with a scale ``u ~ U[min_scale, 1]`` per item, so that both the capture range
  of a regressor's error (default 6°, 20 mm: ~ the regressor's errors) and the fine range near
  the truth are covered. The fixed image is jittered and randomised at every draw (the
  gradient target follows the jittered truth), the moving DRR is used as rendered (the LM
  solver renders it clean).

All randomness comes from explicit ``torch.Generator``s: a seed fixes the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sphere_reg_ros.core.augment import DomainRandomization
from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.geometry import make_pose, random_poses, so3_exp
from sphere_reg_ros.core.sampling import PoseDistribution
from sphere_reg_ros.core.volume import Volume, bone_attenuation, hu_to_attenuation, resample
from sphere_reg_ros.evaluation.cases import default_landmarks

from .content import ContentAugmentation
from .physics import PhysicsRandomization

__all__ = [
    "TrainingScene",
    "DrrPool",
    "SimilarityPool",
    "jitter_rotations",
    "warp_to_pose",
    "margin_pixels",
]


# ----------------------------------------------------------------------------- pose jitter
def jitter_rotations(
    n: int, tilt_deg: float, roll_deg: float, generator: torch.Generator
) -> Tensor:
    """Rotations ``Q (n, 3, 3)`` float64 of the C-arm about its source (optical frame).

    Rotation vector uniform in ``±tilt`` about x and y and ``±roll`` about z (degrees).
    """
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1
    scale = torch.tensor([tilt_deg, tilt_deg, roll_deg], dtype=torch.float64) * (math.pi / 180)
    return so3_exp(u * scale)


def margin_pixels(geometry: CarmGeometry, tilt_deg: float, roll_deg: float) -> int:
    """Pixels to render beyond each detector edge so that every jitter stays inside the image."""
    if tilt_deg <= 0 and roll_deg <= 0:
        return 0
    # farthest detector corner from the principal point (mm), and its angle off the axis
    half = math.hypot(
        geometry.width * geometry.delx / 2 + abs(geometry.x0),
        geometry.height * geometry.dely / 2 + abs(geometry.y0),
    )
    edge = math.atan(half / geometry.sdd)
    tilt = math.radians(max(tilt_deg, 0.0)) * math.sqrt(2)  # about x and y together
    shift = geometry.sdd * (math.tan(min(edge + tilt, 1.5)) - math.tan(edge))
    roll = half * 2 * math.sin(math.radians(max(roll_deg, 0.0)) / 2)
    return int(math.ceil((shift + roll) / min(geometry.delx, geometry.dely))) + 1


def _with_margin(geometry: CarmGeometry, margin: int) -> CarmGeometry:
    return replace(geometry, height=geometry.height + 2 * margin, width=geometry.width + 2 * margin)


def warp_to_pose(big: Tensor, Q: Tensor, geometry: CarmGeometry, margin: int) -> Tensor:
    """Images ``(B, 1, H, W)`` of poses ``T·Q`` from DRRs ``big (B, 1, H+2m, W+2m)`` of poses ``T``.

    ``Q (B, 3, 3)``: rotations about the source (optical frame). A pixel ``(u, v)`` of the new
    image looks along ``d' = K⁻¹ (u, v, 1)``, which is ``Q d'`` in the old frame, found in the
    old (margin) image at ``K_m Q d'`` (``K_m``: principal point shifted by ``m``).
    """
    b = big.shape[0]
    H, W = geometry.height, geometry.width
    dev, dt = big.device, torch.float64
    v, u = torch.meshgrid(
        torch.arange(H, dtype=dt, device=dev), torch.arange(W, dtype=dt, device=dev), indexing="ij"
    )
    d = torch.stack(
        [(u - geometry.cx) / geometry.fx, (v - geometry.cy) / geometry.fy, torch.ones_like(u)], -1
    )
    d_old = d.reshape(1, -1, 3) @ Q.to(device=dev, dtype=dt).transpose(1, 2)  # (B, HW, 3)
    ub = geometry.fx * d_old[..., 0] / d_old[..., 2] + geometry.cx + margin
    vb = geometry.fy * d_old[..., 1] / d_old[..., 2] + geometry.cy + margin
    Wb, Hb = W + 2 * margin, H + 2 * margin
    grid = torch.stack([2 * ub / (Wb - 1) - 1, 2 * vb / (Hb - 1) - 1], -1).reshape(b, H, W, 2)
    return F.grid_sample(
        big, grid.to(big.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


def _rotation_pose(Q: Tensor) -> Tensor:
    return make_pose(Q, torch.zeros(Q.shape[0], 3, dtype=Q.dtype, device=Q.device))


# ----------------------------------------------------------------------------- scene
@dataclass
class TrainingScene:
    """A CT prepared for training: renderers at the training geometry, isocentre, landmarks.

    Use :meth:`build`. ``ct`` is the working (resampled) CT, ``source_ct`` the CT as given.
    """

    ct: Volume
    source_ct: Volume
    geometry: CarmGeometry
    pose_distribution: PoseDistribution
    renderer: DrrRenderer
    margin_renderer: DrrRenderer
    margin: int
    center_world: np.ndarray
    landmark_names: list[str]
    landmarks: np.ndarray
    device: torch.device
    bone_channel: bool = False

    @classmethod
    def build(
        cls,
        ct: Volume,
        geometry: CarmGeometry,
        pose_distribution: PoseDistribution | None = None,
        *,
        labels: Volume | None = None,
        structures: dict[int, str] | None = None,
        spacing_mm: float | None = 2.0,
        step_mm: float | None = None,
        jitter_tilt_deg: float = 2.0,
        jitter_roll_deg: float = 5.0,
        device: str | torch.device = "cpu",
        bone_channel: bool = False,
    ) -> "TrainingScene":
        """Resample ``ct`` to ``spacing_mm`` (None: as is) and set up the renderers.

        ``step_mm``: ray sampling step (default the working spacing). The isocentre is the
        working CT's grid centre. ``bone_channel``: the renderers also integrate the bone part
        of the attenuation (:meth:`render` with ``channels=True``; for :mod:`.physics`).
        """
        work = resample(ct, spacing_mm, order=1, antialias=True) if spacing_mm else ct
        mu = hu_to_attenuation(work.data)
        bone = bone_attenuation(work.data)[None] if bone_channel else None
        margin = margin_pixels(geometry, jitter_tilt_deg, jitter_roll_deg)
        dev = torch.device(device)
        renderer = DrrRenderer(mu, work.affine, geometry, step_mm=step_mm, channels=bone).to(dev)
        margin_renderer = DrrRenderer(
            mu, work.affine, _with_margin(geometry, margin), step_mm=step_mm, channels=bone
        ).to(dev)
        names, points = default_landmarks(ct, labels, structures)
        return cls(
            work,
            ct,
            geometry,
            pose_distribution or PoseDistribution(),
            renderer,
            margin_renderer,
            margin,
            work.center_world,
            names,
            points,
            dev,
            bone_channel,
        )

    def render(
        self, poses: Tensor, margin: bool = False, batch: int = 16, channels: bool = False
    ) -> Tensor:
        """DRRs ``(B, 1, H, W)`` (or with the margin) of poses ``(B, 4, 4)``, no autograd.

        ``channels`` (a scene built with ``bone_channel``): ``(B, 2, H, W)``, the whole and the
        bone line integrals."""
        if channels and not self.bone_channel:
            raise ValueError("this scene has no bone channel: build it with bone_channel=True")
        r = self.margin_renderer if margin else self.renderer
        f = r.render_channels if channels else r
        out = []
        with torch.no_grad():
            for i in range(0, len(poses), batch):
                out.append(f(poses[i : i + batch].to(device=self.device, dtype=torch.float32)))
        return torch.cat(out)

    def render_with_jacobian(self, poses: Tensor, batch: int = 4) -> tuple[Tensor, Tensor]:
        """DRRs ``(B, 1, H, W)`` and exact Jacobians ``(B, H·W, 6)`` (world left increments)."""
        imgs, jacs = [], []
        with torch.no_grad():
            for i in range(0, len(poses), batch):
                im, jac = self.renderer.render_with_jacobian(
                    poses[i : i + batch].to(device=self.device, dtype=torch.float32)
                )
                imgs.append(im)
                jacs.append(jac)
        return torch.cat(imgs), torch.cat(jacs)

    def sample_poses(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` poses ``(n, 4, 4)`` float64 from the pose distribution."""
        return self.pose_distribution.sample(n, self.center_world, generator)


# ----------------------------------------------------------------------------- pools
def _draw_jittered(
    pool, images: Tensor, poses: Tensor, n: int, generator: torch.Generator, augment: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` random items of a pool's ``images``/``poses``: warped by a small random rotation
    about the source (the poses follow), then with clinical content and domain randomisation
    (``augment``). Pools with ``physics`` hold two-channel DRRs: the "X-ray" is simulated from
    them, or (``augment=False``) is the plain DRR, channel 0. Returns ``(indices, images,
    poses)``."""
    idx = torch.randint(pool.size, (n,), generator=generator)
    Q = jitter_rotations(n, pool.tilt, pool.roll, generator)
    out = warp_to_pose(images[idx], Q, pool.scene.geometry, pool.scene.margin)
    if augment:
        if pool.physics is not None:
            out = pool.physics(out, generator)
        out = pool.augmentation(pool.content(out, generator), generator)
    return idx, out[:, :1], poses[idx] @ _rotation_pose(Q)


def _channels(scene: TrainingScene, physics: PhysicsRandomization | None) -> int:
    """Channels a pool stores: 2 (whole, bone) for physics, else 1; checks the scene has them."""
    if physics is None:
        return 1
    if not scene.bone_channel:
        raise ValueError("physics needs a scene built with bone_channel=True")
    return 2


class DrrPool:
    """Ring buffer of DRRs (with margin) and their poses; draws apply jitter + augmentation."""

    def __init__(
        self,
        scene: TrainingScene,
        capacity: int,
        jitter_tilt_deg: float = 2.0,
        jitter_roll_deg: float = 5.0,
        augmentation: DomainRandomization | None = None,
        content: ContentAugmentation | None = None,
        physics: PhysicsRandomization | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.scene, self.capacity = scene, capacity
        self.tilt, self.roll = jitter_tilt_deg, jitter_roll_deg
        self.augmentation = augmentation or DomainRandomization()
        self.content = content or ContentAugmentation(0.0, 0.0)
        self.physics = physics
        g = scene.margin_renderer.geometry
        c = _channels(scene, physics)
        self.images = torch.zeros(capacity, c, g.height, g.width, device=scene.device)
        self.poses = torch.zeros(capacity, 4, 4, dtype=torch.float64)
        self.size = 0
        self._next = 0
        self.rendered = 0

    def add(self, n: int, generator: torch.Generator) -> None:
        """Render ``n`` new DRRs at sampled poses, replacing the oldest when full."""
        poses = self.scene.sample_poses(n, generator)
        images = self.scene.render(poses, margin=True, channels=self.physics is not None)
        for k in range(n):
            self.images[self._next] = images[k]
            self.poses[self._next] = poses[k]
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
        self.rendered += n

    def draw(
        self, n: int, generator: torch.Generator, augment: bool = True
    ) -> tuple[Tensor, Tensor]:
        """``(images (n, 1, H, W), poses (n, 4, 4) float64)``: jittered, with clinical content
        (``content``) and domain-randomised (``augment=False``: jittered only)."""
        if self.size == 0:
            raise RuntimeError("the DRR pool is empty: add() first")
        _, images, poses = _draw_jittered(self, self.images, self.poses, n, generator, augment)
        return images, poses


class SimilarityPool:
    """Ring buffer of (fixed image with margin, true pose, moving DRR, moving pose, Jacobian)."""

    def __init__(
        self,
        scene: TrainingScene,
        capacity: int,
        moving_rot_deg: float = 6.0,
        moving_trans_mm: float = 20.0,
        min_scale: float = 0.1,
        jitter_tilt_deg: float = 2.0,
        jitter_roll_deg: float = 5.0,
        augmentation: DomainRandomization | None = None,
        content: ContentAugmentation | None = None,
        physics: PhysicsRandomization | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.scene, self.capacity = scene, capacity
        self.content = content or ContentAugmentation(0.0, 0.0)
        self.physics = physics
        self.moving_rot_deg, self.moving_trans_mm, self.min_scale = (
            moving_rot_deg,
            moving_trans_mm,
            min_scale,
        )
        self.tilt, self.roll = jitter_tilt_deg, jitter_roll_deg
        self.augmentation = augmentation or DomainRandomization()
        g, gm = scene.geometry, scene.margin_renderer.geometry
        c = _channels(scene, physics)
        self.fixed = torch.zeros(capacity, c, gm.height, gm.width, device=scene.device)
        self.moving = torch.zeros(capacity, 1, g.height, g.width, device=scene.device)
        self.jacobian = torch.zeros(capacity, g.height * g.width, 6, device=scene.device)
        self.true_poses = torch.zeros(capacity, 4, 4, dtype=torch.float64)
        self.moving_poses = torch.zeros(capacity, 4, 4, dtype=torch.float64)
        self.size = 0
        self._next = 0

    def moving_offsets(self, n: int, generator: torch.Generator) -> Tensor:
        """Left perturbations ``D (n, 4, 4)`` float64 about the isocentre (see module docstring)."""
        u = self.min_scale + (1 - self.min_scale) * torch.rand(
            n, generator=generator, dtype=torch.float64
        )
        out = [
            random_poses(
                1,
                float(self.moving_rot_deg * s),
                float(self.moving_trans_mm * s),
                generator,
                center=self.scene.center_world,
                dtype=torch.float64,
            )
            for s in u
        ]
        return torch.cat(out) if out else torch.zeros(0, 4, 4, dtype=torch.float64)

    def add(self, n: int, generator: torch.Generator) -> None:
        """Render ``n`` new items (true pose, its DRR with margin, a moving pose, DRR, Jacobian)."""
        true = self.scene.sample_poses(n, generator)
        moving = self.moving_offsets(n, generator) @ true
        fixed = self.scene.render(true, margin=True, channels=self.physics is not None)
        images, jac = self.scene.render_with_jacobian(moving)
        for k in range(n):
            i = self._next
            self.fixed[i], self.moving[i], self.jacobian[i] = fixed[k], images[k], jac[k]
            self.true_poses[i], self.moving_poses[i] = true[k], moving[k]
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def draw(
        self, n: int, generator: torch.Generator, augment: bool = True
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(fixed, true_poses, moving, moving_poses, jacobian)`` for ``n`` random items.

        The fixed images are jittered (``true_poses`` follow) and domain-randomised.
        """
        if self.size == 0:
            raise RuntimeError("the similarity pool is empty: add() first")
        idx, fixed, true = _draw_jittered(self, self.fixed, self.true_poses, n, generator, augment)
        return fixed, true, self.moving[idx], self.moving_poses[idx], self.jacobian[idx]
