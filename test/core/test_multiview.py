"""Several C-arm views of one pose (biplane): ``Registrar.register_views`` and the LM's stacked
views (``SolverView``), on the 8 mm example CT with 32 px registrations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sphere_reg_ros.core import models
from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.lm import SolverView
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
from sphere_reg_ros.core.result import Status, point_error
from sphere_reg_ros.core.views import orbit_offset

GEOMETRY = CarmGeometry(sdd=1020.0, height=64, width=64, delx=6.0, dely=6.0)
SIDE = CarmGeometry(sdd=1000.0, height=48, width=64, delx=6.0, dely=6.0, x0=3.0)
ORBIT = orbit_offset(90.0)


def _mtre(reg, pose, true):
    return float(np.linalg.norm(point_error(pose, true, reg.roi_world)))


def _depth_error(reg, pose, true):
    """The error at the region of interest along the first view's beam (mm)."""
    beam = reg.roi_world - true[:3, 3]
    return abs(float(point_error(pose, true, reg.roi_world) @ beam / np.linalg.norm(beam)))


@pytest.fixture(scope="module")
def biplane(registrar, case):
    """``(image of view 1, image of view 2, true pose, start pose)``; view 2 is turned by 90°
    and has another detector."""
    image, true, init = case
    return image, registrar.render(true @ ORBIT, SIDE), true, init


def test_orbit_offset_turns_the_source_about_the_isocentre():
    T = orbit_offset(90.0, sod_mm=650.0)
    np.testing.assert_allclose(T @ [0, 0, 650.0, 1], [0, 0, 650.0, 1], atol=1e-9)  # isocentre
    np.testing.assert_allclose(T @ [0, 0, 0, 1.0], [-650.0, 0, 650.0, 1], atol=1e-9)  # source
    np.testing.assert_allclose(T[:3, 1], [0, 1, 0], atol=1e-12)  # about the image rows' axis
    np.testing.assert_allclose(orbit_offset(30.0) @ orbit_offset(60.0), T, atol=1e-9)
    with pytest.raises(ValueError, match="sod_mm"):
        orbit_offset(30.0, sod_mm=0.0)


def test_one_view_is_exactly_the_single_view_registration(registrar, case):
    image, _, init = case
    one = registrar.register_views([image], [GEOMETRY], [np.eye(4)], init)
    ref = registrar.register(image, GEOMETRY, init)
    np.testing.assert_array_equal(one.pose, ref.pose)
    np.testing.assert_array_equal(one.covariance, ref.covariance)
    assert (one.status, one.iterations, one.cost) == (ref.status, ref.iterations, ref.cost)
    assert one.normalised_cost == ref.normalised_cost


def test_two_views_register_one_pose_and_pin_the_depth_down(registrar, biplane):
    a, b, true, init = biplane
    mono = registrar.register(a, GEOMETRY, init)
    bi = registrar.register_views([a, b], [GEOMETRY, SIDE], [np.eye(4), ORBIT], init)
    assert bi.status is Status.CONVERGED, bi.message
    assert _mtre(registrar, bi.pose, true) < 1.0, bi.message  # 32 px of an 8 mm CT
    assert math.isfinite(bi.normalised_cost) and bi.normalised_cost < 1.0
    assert math.isfinite(bi.consistency_mm) and bi.consistency_mm < 2.0
    # the second view sees the first view's depth: that direction's standard deviation shrinks
    beam = registrar.roi_world - true[:3, 3]
    beam /= np.linalg.norm(beam)

    def depth_sd(res):
        return math.sqrt(beam @ res.covariance[:3, :3] @ beam)

    assert depth_sd(bi) < 0.7 * depth_sd(mono), (depth_sd(bi), depth_sd(mono))
    assert _depth_error(registrar, bi.pose, true) < 1.0


def test_the_relative_poses_may_be_given_in_any_common_frame(registrar, biplane):
    a, b, _, init = biplane
    base = orbit_offset(-35.0) @ np.diag([1.0, 1.0, 1.0, 1.0])
    base[:3, 3] += [10.0, -5.0, 2.0]
    rel = registrar.register_views([a, b], [GEOMETRY, SIDE], [np.eye(4), ORBIT], init)
    common = registrar.register_views([a, b], [GEOMETRY, SIDE], [base, base @ ORBIT], init)
    np.testing.assert_allclose(common.pose, rel.pose, atol=1e-6)


def test_the_lm_sums_the_views_terms(registrar, biplane):
    """Two identical views (offset = the identity) double the cost and leave the solve's path."""
    a, _, _, init = biplane
    g = registrar.registration_geometry(GEOMETRY)
    renderers = [registrar.renderer(g)]
    fixed = torch.from_numpy(registrar.render(init, g).astype(np.float32))[None, None]
    start = torch.from_numpy(init)[None]
    one = registrar.solver.solve(renderers, fixed, start, center=registrar.center_world)
    twin = SolverView(renderers, fixed, torch.eye(4, dtype=torch.float64))
    two = registrar.solver.solve(
        renderers, fixed, start, center=registrar.center_world, views=[twin]
    )
    assert float(two.initial_cost[0]) == pytest.approx(2 * float(one.initial_cost[0]), rel=1e-9)
    with pytest.raises(ValueError, match="renderers"):
        registrar.solver.solve(
            renderers, fixed, start, views=[SolverView(renderers * 2, fixed, torch.eye(4))]
        )
    with pytest.raises(ValueError, match="rigid"):
        registrar.solver.solve(
            renderers, fixed, start, views=[SolverView(renderers, fixed, 2 * torch.eye(4))]
        )


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda v: v.update(images=[v["images"][0], v["images"][1] * np.nan]), "view 2: image"),
        (lambda v: v.update(geometries=[GEOMETRY]), "as many geometries"),
        (lambda v: v.update(offsets=[np.eye(4)]), "2 views need 2 relative"),
        (lambda v: v.update(offsets=[np.eye(4), 2 * ORBIT]), "view 2: relative C-arm pose"),
        (lambda v: v.update(geometries=[GEOMETRY, GEOMETRY]), "view 2: image is 48x64"),
        (lambda v: v.update(init_pose=np.zeros((4, 4))), "initial pose"),
    ],
)
def test_bad_views_give_invalid_input_naming_the_view(registrar, biplane, change, needle):
    a, b, _, init = biplane
    args = {
        "images": [a, b],
        "geometries": [GEOMETRY, SIDE],
        "offsets": [np.eye(4), ORBIT],
        "init_pose": init,
    }
    change(args)
    res = registrar.register_views(**args)
    assert res.status is Status.INVALID_INPUT and needle in res.message, res.message


def test_without_a_start_the_regressors_views_compete(ct8, biplane):
    a, b, _, _ = biplane
    torch.manual_seed(0)
    reg = Registrar(
        ct8,
        regressor=models.PoseRegressor(
            models.RegressorConfig("resnet10t", 32, 32), center_world=ct8.center_world
        ),
        config=RegistrarConfig(resolution=32, scales=(0.5, 1.0), max_iterations=3),
        spacing_mm=8.0,
    )
    res = reg.register_views([a, b], [GEOMETRY, SIDE], [np.eye(4), ORBIT])
    assert "the regressor's start of view" in res.message and "of 2" in res.message, res.message
    assert np.isfinite(res.pose).all()


def test_polish_registers_all_views_again(ct8, biplane):
    a, b, _, init = biplane
    torch.manual_seed(0)
    sim = models.SimilarityNet(
        models.SimilarityConfig(channels=4, stem_widths=(4, 8), model_dim=8, depth=1, heads=2)
    )
    cfg = RegistrarConfig(resolution=32, scales=(0.5, 1.0), max_iterations=6, polish=True)
    reg = Registrar(ct8, similarity=sim, config=cfg, spacing_mm=8.0)
    res = reg.register_views([a, b], [GEOMETRY, SIDE], [np.eye(4), ORBIT], init)
    assert "polished by the learning-free LM" in res.message, res.message
    free = reg._free.register_views([a, b], [GEOMETRY, SIDE], [np.eye(4), ORBIT], res.pose)
    assert free.status.usable
