"""Pose regressor: a timm CNN on the X-ray that predicts ``T_ct_from_carm`` relative to the AP view.

The network predicts six numbers of order one, ``o = (o_r, o_t)``; the pose is
``PoseDistribution.compose(center, o_r · rot_scale, o_t · t_scale)`` (:mod:`.sampling`): a
rotation vector about the CT isocentre ``center`` (CT world axes, rad) and a shift of the C-arm
in its own frame (mm), applied to the reference AP pose. ``rot_scale`` is the distribution's
rotation range in rad and ``t_scale`` its in-plane / in-plane / depth ranges in mm, so the
training poses have ``|o| <= 1`` per component. The head starts at zero: an untrained regressor
predicts the reference pose.

The backbone is any timm model (``pretrained=False``: no downloads), built with ``in_chans=1``
and its classifier removed; images are standardised per image first, so the intensity scale of
an X-ray or a DRR does not matter.

:func:`to_isocentric` expresses poses in the frame used by the losses: ``Trans(-c) · T ·
Trans(0, 0, sod)`` maps the C-arm's isocentre frame (origin on the central ray at the
source-to-isocentre distance, axes of the optical frame) to CT world coordinates centred on
``c``. For the sampled poses its translation is the C-arm shift ``t_carm`` rotated into the
world (``|t| <= ~70 mm``) and its rotation the C-arm's orientation, so rotation and translation
errors there map to landmark errors near the isocentre directly (and the SO(4) embedding's
``t/(2f)`` stays small).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import timm
import torch
from torch import Tensor, nn

from .geometry import make_pose
from .sampling import PoseDistribution
from .similarity import check_images

__all__ = ["RegressorConfig", "PoseRegressor", "to_isocentric", "pose_to_params"]


def to_isocentric(T: Tensor, center_world, sod_mm: float) -> Tensor:
    """``Trans(-c) · T · Trans(0, 0, sod)`` of poses ``T (..., 4, 4)`` (mm); see the module docstring."""
    c = torch.as_tensor(
        np.asarray(center_world, dtype=np.float64), dtype=T.dtype, device=T.device
    ).reshape(3)
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    shift_world = make_pose(eye, -c)
    shift_carm = make_pose(
        eye, torch.tensor([0.0, 0.0, float(sod_mm)], dtype=T.dtype, device=T.device)
    )
    return shift_world @ T @ shift_carm


@dataclass(frozen=True)
class RegressorConfig:
    """Architecture of :class:`PoseRegressor`.

    Attributes:
        backbone: timm model name (e.g. ``resnet18``, ``resnet10t``, ``resnet34``).
        height, width: input image size in pixels (the training resolution); other sizes are
            refused, since the pose read from an image depends on its field of view per pixel.
        channel_scale: width multiplier for timm ResNets (``channels = scale · (64, 128, 256,
            512)``, ``stem_width = scale · 64``); 1.0 = the standard network. 0.5 makes a
            ResNet-18 ~6x cheaper on a CPU (2.8 M parameters instead of 11.2 M).
    """

    backbone: str = "resnet18"
    height: int = 64
    width: int = 64
    channel_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a timm model name, got {self.backbone!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 8:
                raise ValueError(f"{name} must be an integer >= 8, got {v!r}")
        if not (isinstance(self.channel_scale, (int, float)) and 0 < self.channel_scale <= 4):
            raise ValueError(f"channel_scale must be in (0, 4], got {self.channel_scale!r}")

    def backbone_kwargs(self) -> dict:
        """Extra ``timm.create_model`` arguments (ResNet widths when ``channel_scale != 1``)."""
        if self.channel_scale == 1.0:
            return {}
        s = self.channel_scale
        return {
            "channels": tuple(max(4, int(round(c * s))) for c in (64, 128, 256, 512)),
            "stem_width": max(4, int(round(64 * s))),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RegressorConfig":
        return cls(**values)


def _scales(dist: PoseDistribution) -> tuple[float, tuple[float, float, float]]:
    """Output scales: rotation range (rad) and shift ranges (mm); 1 where a range is 0."""
    rot = math.radians(dist.rot_deg) if dist.rot_deg > 0 else math.radians(1.0)
    t = tuple(v if v > 0 else 1.0 for v in (dist.inplane_mm, dist.inplane_mm, dist.depth_mm))
    return rot, t  # type: ignore[return-value]


def pose_to_params(T: Tensor, center_world, dist: PoseDistribution) -> Tensor:
    """Inverse of the regressor's parameterisation: ``(B, 6)`` scaled outputs of poses ``(B, 4, 4)``.

    ``T = G(R, c) T_ap Trans(t)`` gives ``R = R_T R_apᵀ`` and ``t = T_ap⁻¹ G⁻¹ T`` 's translation.
    """
    from .geometry import se3_inverse, so3_log

    T = T.to(torch.float64)
    ref = dist.reference(center_world).to(T.device)
    R = T[:, :3, :3] @ ref[0, :3, :3].T
    w = so3_log(R)
    c = torch.as_tensor(np.asarray(center_world, dtype=np.float64), device=T.device).reshape(3)
    G_inv = se3_inverse(make_pose(R, c - R @ c))
    shift = se3_inverse(ref) @ G_inv @ T
    rot, t = _scales(dist)
    return torch.cat(
        [w / rot, shift[:, :3, 3] / torch.tensor(t, dtype=T.dtype, device=T.device)], -1
    )


class PoseRegressor(nn.Module):
    """Image ``(B, 1, H, W)`` -> pose ``T_ct_from_carm (B, 4, 4)`` (mm), see the module docstring.

    Args:
        config: backbone and input size.
        center_world: ``(3,)`` CT isocentre (world RAS, mm) the pose distribution rotates about.
        pose_distribution: the training pose distribution (reference view and output scales).
    """

    def __init__(
        self,
        config: RegressorConfig | None = None,
        center_world=(0.0, 0.0, 0.0),
        pose_distribution: PoseDistribution | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or RegressorConfig()
        self.pose_distribution = pose_distribution or PoseDistribution()
        center = np.asarray(center_world, dtype=np.float64).reshape(-1)
        if center.shape != (3,) or not np.all(np.isfinite(center)):
            raise ValueError(f"center_world must be 3 finite numbers (mm), got {center_world!r}")
        self.center_world = center
        try:
            self.backbone = timm.create_model(
                config.backbone,
                pretrained=False,
                in_chans=1,
                num_classes=0,
                **config.backbone_kwargs(),
            )
        except Exception as exc:  # timm raises RuntimeError for unknown names
            raise ValueError(f"cannot build timm backbone {config.backbone!r}: {exc}") from exc
        self.head = nn.Linear(self.backbone.num_features, 6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        rot, t = _scales(self.pose_distribution)
        self.register_buffer(
            "_scale", torch.tensor([rot] * 3 + list(t), dtype=torch.float64), persistent=False
        )

    def params(self, images: Tensor) -> Tensor:
        """Raw outputs ``(B, 6)`` float32 (order one): scaled rotation vector and C-arm shift."""
        check_images(images, size=(self.config.height, self.config.width))
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True)
        x = (images - mean) / (std + 1e-6)
        return self.head(self.backbone(x)).float()

    def params_to_pose(self, params: Tensor) -> Tensor:
        """Poses ``(B, 4, 4)`` float64 of raw outputs ``(B, 6)`` (differentiable)."""
        p = params.to(torch.float64) * self._scale.to(params.device)
        T = self.pose_distribution.compose(self.center_world, p[:, :3].cpu(), p[:, 3:].cpu())
        return T.to(params.device)

    def forward(self, images: Tensor) -> Tensor:
        """Poses ``T_ct_from_carm (B, 4, 4)`` in the images' dtype (float32 for half inputs)."""
        T = self.params_to_pose(self.params(images))
        dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
        return T.to(dtype)
