"""Small scenes for the training tests: the example CT at 8 mm, 16² and 32² images."""

from __future__ import annotations

import pytest

from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.training.dataset import TrainingScene


@pytest.fixture(scope="session")
def tiny_scene(small_ct) -> TrainingScene:
    """16x16 images (24 mm pixels) of the example CT resampled to 8 mm; jitter margin included."""
    ct, labels, structures = small_ct
    return TrainingScene.build(
        ct, default_geometry(16), labels=labels, structures=structures, spacing_mm=8.0
    )


@pytest.fixture(scope="session")
def tiny_bone_scene(small_ct) -> TrainingScene:
    """``tiny_scene`` with a bone channel (two-channel DRRs, for the physics randomisation)."""
    ct, labels, structures = small_ct
    return TrainingScene.build(
        ct,
        default_geometry(16),
        labels=labels,
        structures=structures,
        spacing_mm=8.0,
        bone_channel=True,
    )
