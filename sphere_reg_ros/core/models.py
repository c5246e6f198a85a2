"""The learned models in one place: the pose regressor and the similarity network.

Implemented in :mod:`.regressor` (timm CNN -> initial pose) and :mod:`.similarity`
(CNN-Transformer encoder, spherical / Euclidean / hyperbolic embedding, residuals for LM);
checkpoints are read and written by :mod:`sphere_reg_ros.core.checkpoint`.
"""

from .regressor import PoseRegressor, RegressorConfig, pose_to_params, to_isocentric
from .similarity import (
    EMBEDDINGS,
    SimilarityConfig,
    SimilarityNet,
    check_images,
    lorentz_distance,
    lorentz_exp,
    sphere_exp,
)

__all__ = [
    "PoseRegressor",
    "RegressorConfig",
    "pose_to_params",
    "to_isocentric",
    "EMBEDDINGS",
    "SimilarityConfig",
    "SimilarityNet",
    "check_images",
    "lorentz_distance",
    "lorentz_exp",
    "sphere_exp",
]
