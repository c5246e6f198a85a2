"""Validation of a training run: the fixed held-out set of the ``val`` split
(:class:`ValidationSet`: the regressor's loss and mTRE on simulated X-rays and clean DRRs, the
similarity's gradient-matching loss and alignment) and the regressor's mTRE on any images
(:func:`evaluate_regressor`). Re-exported by :mod:`.train`."""

from __future__ import annotations

import numpy as np
import torch

from sphere_reg_ros.core.augment import DomainRandomization
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.regressor import PoseRegressor
from sphere_reg_ros.core.sampling import split_seed
from sphere_reg_ros.core.similarity import SimilarityNet

from .content import ContentAugmentation
from .dataset import SimilarityPool, TrainingScene
from .losses import (
    centered_jacobian,
    geodesic_pose_gradient,
    gradient_alignment,
    gradient_matching_loss,
    regressor_loss,
    similarity_pose_gradient,
)
from .physics import PhysicsRandomization

__all__ = ["ValidationSet", "evaluate_regressor"]


class ValidationSet:
    """Fixed held-out data (``val`` split): regressor images/poses and similarity items."""

    def __init__(
        self,
        scene: TrainingScene,
        n: int,
        n_sim: int,
        seed: int,
        sim_pool: SimilarityPool,
        kind: str,
        length_mm: float,
        content: ContentAugmentation | None = None,
        physics: PhysicsRandomization | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(split_seed("val", seed))
        self.scene, self.kind, self.length_mm = scene, kind, length_mm
        content = content or ContentAugmentation(0.0, 0.0)

        def xray(poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(clean DRRs, simulated X-rays), both (B, 1, H, W), of poses (B, 4, 4)."""
            if physics is None:
                clean = scene.render(poses)
                return clean, DomainRandomization()(content(clean, g), g)
            channels = scene.render(poses, channels=True)
            return channels[:, :1], DomainRandomization()(content(physics(channels, g), g), g)

        self.poses = scene.sample_poses(n, g)
        self.clean, self.images = xray(self.poses)
        true = scene.sample_poses(n_sim, g)
        self.sim_true = true
        self.sim_moving = sim_pool.moving_offsets(n_sim, g) @ true
        self.sim_fixed = xray(true)[1]
        self.sim_images, jac = scene.render_with_jacobian(self.sim_moving)
        self.sim_jacobian = centered_jacobian(jac, scene.center_world)
        self.sim_target = geodesic_pose_gradient(
            self.sim_moving,
            true,
            kind,
            center=scene.center_world,
            sod_mm=scene.pose_distribution.sod_mm,
            length_mm=length_mm,
        )
        self.landmarks = torch.as_tensor(scene.landmarks, dtype=torch.float64)

    def evaluate(self, regressor: PoseRegressor, similarity: SimilarityNet) -> dict:
        """Validation figures (floats): loss and mTRE of the regressor, similarity loss/alignment."""
        out: dict = {}
        was = regressor.training, similarity.training
        regressor.eval()
        similarity.eval()
        with torch.no_grad():
            for tag, images in (("", self.images), ("clean_", self.clean)):
                T = torch.cat(
                    [regressor(images[i : i + 32]).double() for i in range(0, len(images), 32)]
                )
                out[f"{tag}loss"] = float(
                    regressor_loss(
                        T.cpu(),
                        self.poses,
                        self.kind,
                        center=self.scene.center_world,
                        sod_mm=self.scene.pose_distribution.sod_mm,
                        length_mm=self.length_mm,
                    )
                )
                e = mtre(T.cpu(), self.poses, self.landmarks)
                out[f"{tag}mtre_median_mm"] = float(np.median(e.numpy()))
                out[f"{tag}mtre_mean_mm"] = float(e.mean())
        g, _ = similarity_pose_gradient(
            similarity, self.sim_images, self.sim_fixed, self.sim_jacobian, create_graph=False
        )
        out["sim_loss"] = float(gradient_matching_loss(g.detach(), self.sim_target))
        out["sim_cos_translation"], out["sim_cos_rotation"] = gradient_alignment(
            g.detach(), self.sim_target
        )
        regressor.train(was[0])
        similarity.train(was[1])
        return out


def evaluate_regressor(
    regressor: PoseRegressor,
    images: torch.Tensor,
    poses: torch.Tensor,
    landmarks: torch.Tensor | np.ndarray,
    batch: int = 32,
) -> torch.Tensor:
    """Per-case mTRE ``(N,)`` in mm of the regressor on images ``(N, 1, H, W)`` with true poses."""
    regressor.eval()
    dev = next(regressor.parameters()).device
    with torch.no_grad():
        T = torch.cat(
            [
                regressor(images[i : i + batch].to(dev)).double().cpu()
                for i in range(0, len(images), batch)
            ]
        )
    return mtre(T, poses.to(torch.float64).cpu(), torch.as_tensor(landmarks, dtype=torch.float64))
