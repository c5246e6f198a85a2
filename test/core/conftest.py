"""Fixtures of the registrar tests (test_registrar, test_trust): the 8 mm example CT, a 32 px
registrar on it, and a rendered case with a start a few mm and degrees off, on the detector the
requesting module names ``GEOMETRY``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.geometry import so3_exp
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
from sphere_reg_ros.core.volume import resample


def _offset(T, c, rot_deg, trans):
    R = so3_exp(torch.tensor(rot_deg, dtype=torch.float64).deg2rad()[None])[0].numpy()
    D = np.eye(4)
    D[:3, :3], D[:3, 3] = R, c - R @ c + np.asarray(trans)
    return D @ T


@pytest.fixture(scope="session")
def offset_pose():
    """``offset_pose(T, c, rot_deg, trans)``: ``T`` rotated by ``rot_deg`` (xyz, degrees) about the
    point ``c`` and shifted by ``trans`` (mm), world frame."""
    return _offset


@pytest.fixture(scope="module")
def ct8(small_ct):
    return resample(small_ct[0], 8.0)


@pytest.fixture(scope="module")
def registrar(ct8):
    return Registrar(ct8, config=RegistrarConfig(resolution=32, scales=(0.5, 1.0)), spacing_mm=8.0)


@pytest.fixture(scope="module")
def case(registrar, request):
    """``(image, true pose, start pose)`` on the module's ``GEOMETRY``."""
    true = registrar.default_pose()
    image = registrar.render(true, request.module.GEOMETRY)
    init = _offset(true, registrar.center_world, [2.0, -2.0, 1.5], [4.0, 3.0, -3.0])
    return image, true, init
