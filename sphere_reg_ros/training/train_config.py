"""The settings of a training run (:class:`TrainConfig`) and what :func:`.train.train` returns
(:class:`TrainResult`). Re-exported by :mod:`.train`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.regressor import PoseRegressor
from sphere_reg_ros.core.sampling import PoseDistribution
from sphere_reg_ros.core.similarity import SimilarityConfig, SimilarityNet
from sphere_reg_ros.core.views import default_geometry

__all__ = ["TrainConfig", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see the module docstring).

    Pose jitter (``jitter_*``), moving-pose spread (``moving_*``) and pools are described in
    :mod:`.dataset`. ``physics`` (default on): the training "X-rays" are simulated from
    two-channel DRRs by :mod:`.physics` (``physics_*``: probabilities of its optional effects);
    off: the older image-space ``p_collimation``, ``p_metal`` (clinical content, 0 = the seed's
    domain randomisation only) of :mod:`.content`. ``step_mm`` None: 1.5 × ``spacing_mm``
    (ray step of the training DRRs).
    Stopping: after ``max_steps`` steps or ``budget_s`` seconds (whichever comes first; at least
    one must be set).
    """

    resolution: int = 64
    seed: int = 0
    spacing_mm: float | None = 2.0
    step_mm: float | None = None
    backbone: str = "resnet18"
    channel_scale: float = 1.0
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    pose_distribution: PoseDistribution = field(default_factory=PoseDistribution)
    regressor_loss: str = "so4"
    length_mm: float = 100.0
    batch_size: int = 32
    sim_batch_size: int = 8
    lr: float = 1e-3
    sim_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    pool_size: int = 4096
    initial_pool: int = 192
    render_per_step: int = 1
    sim_pool_size: int = 512
    initial_sim_pool: int = 32
    sim_render_every: int = 4
    sim_every: int = 2
    jitter_tilt_deg: float = 1.5
    jitter_roll_deg: float = 4.0
    p_collimation: float = 0.5
    p_metal: float = 0.5
    physics: bool = True
    physics_metal: float = 0.5
    physics_collimation: float = 0.6
    moving_rot_deg: float = 6.0
    moving_trans_mm: float = 20.0
    n_val: int = 64
    n_val_sim: int = 16
    val_every_steps: int = 0
    val_every_s: float = 120.0
    max_steps: int | None = None
    budget_s: float | None = None
    device: str = "cpu"
    amp: bool = True
    train_regressor: bool = True
    train_similarity: bool = True

    def __post_init__(self) -> None:
        """Checks the settings (a flat list of checks, hence its length)."""
        if self.max_steps is None and self.budget_s is None:
            raise ValueError("set max_steps or budget_s (or both)")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")
        if self.resolution < 16 or self.resolution % self.similarity.downsample:
            raise ValueError(
                f"resolution must be >= 16 and divisible by {self.similarity.downsample}, "
                f"got {self.resolution}"
            )
        if self.regressor_loss not in ("so4", "se3"):
            raise ValueError(f"regressor_loss must be so4 or se3, got {self.regressor_loss!r}")
        for name in (
            "batch_size",
            "sim_batch_size",
            "pool_size",
            "initial_pool",
            "sim_pool_size",
            "initial_sim_pool",
            "n_val",
            "n_val_sim",
            "sim_render_every",
            "sim_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "sim_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if not (self.train_regressor or self.train_similarity):
            raise ValueError(
                "nothing to train: train_regressor and train_similarity are both False"
            )

    def geometry(self) -> CarmGeometry:
        """C-arm geometry at the training resolution (``views.default_geometry``)."""
        return default_geometry(self.resolution)

    def effective_step_mm(self) -> float | None:
        if self.step_mm is not None:
            return self.step_mm
        return 1.5 * self.spacing_mm if self.spacing_mm else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["similarity"] = self.similarity.to_dict()
        return d


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history``: one dict per validation (see ``ValidationSet``)."""

    regressor: PoseRegressor
    similarity: SimilarityNet
    history: list[dict]
    steps: int
    wall_time_s: float
    checkpoint: Path | None
    throughput: dict

    @property
    def initial(self) -> dict:
        return self.history[0]

    @property
    def final(self) -> dict:
        return self.history[-1]
