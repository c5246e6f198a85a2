"""Fixtures shared by the benchmark tests of both degradation families."""

import pytest

from sphere_reg_ros.core.volume import resample


@pytest.fixture(scope="session")
def ct8(example_ct):
    """The example CT and its label map at 8 mm (45 x 45 x 42 voxels): ``(ct, labels, structures)``."""
    ct, labels, structures = example_ct
    return resample(ct, 8.0), resample(labels, 8.0, order=0), structures
