"""Trust: statuses that say what happened, the normalised cost, the covariance at the region of
interest, quality gates and the tracking policy, on real renders of a small CT."""

import math

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.geometry import make_pose, se3_exp, so3_exp
from sphere_reg_ros.core.lm import LevenbergMarquardt, LMConfig
from sphere_reg_ros.core.lm_steps import correlation_inflation
from sphere_reg_ros.core.registrar import RegistrarConfig
from sphere_reg_ros.core.residuals import IntensityResiduals
from sphere_reg_ros.core.result import RegistrationResult, Status, point_covariance, point_error
from sphere_reg_ros.core.trust import (
    GATE_REASONS,
    Tracker,
    TrustConfig,
    apply_gates,
    gate,
    rejection_key,
)
from sphere_reg_ros.core.views import ap_pose
from sphere_reg_ros.core.volume import bone_attenuation, hu_to_attenuation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOMETRY = CarmGeometry(sdd=1020.0, height=64, width=64, delx=6.0, dely=6.0)


# ----------------------------------------------------------------------------- statuses
def test_only_converged_is_publishable():
    assert [s for s in Status if s.publishable] == [Status.CONVERGED]
    assert (
        Status.NO_PROGRESS.usable
        and Status.MAX_ITERATIONS.usable
        and not Status.MAX_ITERATIONS.publishable
    )
    assert not Status.REJECTED.usable and not Status.DIVERGED.usable


def test_a_start_that_is_never_improved_is_no_progress(small_ct):
    """A step already below the tolerance, or no decrease found, before any accepted step."""
    ct = small_ct[0]
    g = CarmGeometry(sdd=1020.0, height=32, width=32, delx=12.0, dely=12.0)
    r = DrrRenderer(hu_to_attenuation(ct.data), ct.affine, g)
    true = ap_pose(ct.center_world)
    fixed = r(true.float())
    res = LevenbergMarquardt(
        IntensityResiduals(), LMConfig(step_tol_mm=50.0, step_tol_rad=1.0)
    ).solve([r], fixed, true)
    assert res.status[0] is Status.NO_PROGRESS and "no step lowered the cost" in res.message[0]
    assert torch.equal(res.pose[0], true[0])
    # the same start with ordinary tolerances, a few mm off: real progress, then converged
    init = se3_exp(torch.tensor([[3.0, -2.0, 2.0, 0.0, 0.01, 0.0]], dtype=torch.float64)) @ true
    res = LevenbergMarquardt(IntensityResiduals()).solve([r], fixed, init)
    assert res.status[0] is Status.CONVERGED, res.message


# ----------------------------------------------------------------------------- covariance
def test_point_error_is_the_first_order_increment_at_the_point():
    rng = np.random.default_rng(0)
    T = make_pose(
        so3_exp(torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)),
        torch.tensor([[10.0, -40.0, 900.0]], dtype=torch.float64),
    )[0].numpy()
    p = np.array([30.0, -20.0, 50.0])
    delta = np.concatenate([rng.normal(size=3) * 0.01, rng.normal(size=3) * 1e-5])
    est = se3_exp(torch.as_tensor(delta)[None])[0].numpy() @ T
    A = np.concatenate(
        [np.eye(3), -np.array([[0, -p[2], p[1]], [p[2], 0, -p[0]], [-p[1], p[0], 0]])], axis=1
    )
    np.testing.assert_allclose(point_error(est, T, p), A @ delta, atol=1e-7)
    cov = np.diag([1.0, 2.0, 3.0, 1e-4, 2e-4, 3e-4])
    np.testing.assert_allclose(point_covariance(cov, p), A @ cov @ A.T)
    np.testing.assert_allclose(point_covariance(cov, None), cov[:3, :3])


def test_correlation_inflation_grows_with_smoother_residuals():
    gen = torch.Generator().manual_seed(0)
    white = torch.randn(2, 64 * 64, generator=gen, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(
        torch.randn(2, 1, 68, 68, generator=gen, dtype=torch.float64), 5, 1
    )
    f_white = correlation_inflation(white, None)
    f_smooth = correlation_inflation(smooth.flatten(1), None)
    assert torch.all(f_white < 1.2) and torch.all(f_smooth > 10)
    # zero-weight residuals do not count
    w = torch.ones_like(white)
    w[:, ::2] = 0
    assert torch.all(correlation_inflation(white, w) < 1.2)


def test_the_registrar_expresses_the_uncertainty_at_the_bone(registrar, ct8, case):
    bone = np.asarray(bone_attenuation(ct8.data)) > 0
    expected = (ct8.affine @ np.append(np.argwhere(bone).mean(axis=0), 1.0))[:3]
    np.testing.assert_allclose(registrar.roi_world, expected, atol=1e-6)
    image, true, init = case
    res = registrar.register(image, GEOMETRY, init)
    assert res.ok, res.message
    np.testing.assert_allclose(res.roi_mm, registrar.roi_world)
    C = res.roi_covariance
    assert C.shape == (3, 3) and np.all(np.linalg.eigvalsh(C) > 0)
    assert res.position_std_mm == pytest.approx(math.sqrt(np.linalg.eigvalsh(C).max()))
    with pytest.raises(ValueError, match="roi"):
        RegistrarConfig(roi="liver")
    assert RegistrarConfig(roi=[1, 2, 3]).roi == (1.0, 2.0, 3.0)


# ----------------------------------------------------------------------------- normalised cost
def test_normalised_cost_is_low_at_a_distinct_minimum_and_near_one_for_noise(registrar, case):
    image, true, _ = case
    rg = registrar.registration_geometry(GEOMETRY)
    fine = registrar.renderer(rg)
    from sphere_reg_ros.core.lm import resize_images

    fixed = resize_images(torch.from_numpy(image)[None, None], rg.height, rg.width)
    at_truth = registrar.solver.normalised_cost(fine, fixed, torch.from_numpy(true))
    noise = torch.from_numpy(
        np.random.default_rng(1).uniform(size=(1, 1, rg.height, rg.width)).astype(np.float32)
    )
    on_noise = registrar.solver.normalised_cost(fine, noise, torch.from_numpy(true))
    assert at_truth < 0.5 < 0.85 < on_noise < 1.2


@pytest.mark.parametrize("kind", ["uniform noise", "gaussian noise", "one changed pixel"])
def test_images_that_do_not_pin_the_pose_down_are_not_publishable(registrar, case, kind):
    _, _, init = case
    rng = np.random.default_rng(3)
    if kind == "uniform noise":
        image = rng.uniform(0, 3, size=(64, 64)).astype(np.float32)
    elif kind == "gaussian noise":
        image = rng.normal(1.0, 0.5, size=(64, 64)).astype(np.float32)
    else:
        image = np.full((64, 64), 2.0, dtype=np.float32)
        image[17, 40] = 2.5
    res = registrar.register(image, GEOMETRY, init)
    assert not res.ok, (res.status, res.message, res.normalised_cost)
    assert rejection_key(res) in GATE_REASONS


# ----------------------------------------------------------------------------- gates
def _result(**kw):
    base = dict(
        pose=np.eye(4),
        covariance=np.eye(6) * 0.01,
        cost=0.1,
        initial_cost=1.0,
        iterations=5,
        status=Status.CONVERGED,
        normalised_cost=0.4,
        roi_mm=np.zeros(3),
        consistency_mm=0.2,
    )
    return RegistrationResult(**{**base, **kw})


@pytest.mark.parametrize(
    "changes, key",
    [
        ({}, None),
        ({"status": Status.MAX_ITERATIONS}, "registration_failed"),
        ({"status": Status.NO_PROGRESS}, "registration_failed"),
        ({"normalised_cost": 0.99}, "rejected_cost"),
        ({"normalised_cost": math.nan}, "rejected_cost"),
        ({"covariance": np.eye(6) * 100.0}, "rejected_covariance"),
        ({"masked_fraction": 0.95}, "rejected_masked"),
        ({"consistency_mm": 30.0}, "rejected_inconsistent"),
    ],
)
def test_each_gate_rejects_with_its_key(changes, key):
    res = _result(**changes)
    failed = gate(res, TrustConfig())
    assert (failed and failed[0]) == key
    gated = apply_gates(res, TrustConfig())
    if key is None:
        assert gated.ok and rejection_key(gated) == ""
    elif key == "registration_failed":
        assert gated.status is res.status and rejection_key(gated) == key
    else:
        assert (
            gated.status is Status.REJECTED and rejection_key(gated) == key and key in gated.message
        )
        np.testing.assert_array_equal(gated.pose, res.pose)


def test_a_gate_set_to_zero_is_off():
    off = TrustConfig(
        max_normalised_cost=0, max_position_std_mm=0, max_masked_fraction=0, max_inconsistency_mm=0
    )
    res = _result(
        normalised_cost=5.0, covariance=np.eye(6) * 1e6, masked_fraction=0.99, consistency_mm=50.0
    )
    assert gate(res, off) is None
    with pytest.raises(ValueError, match="max_masked_fraction"):
        TrustConfig(max_masked_fraction=1.5)


# ----------------------------------------------------------------------------- tracking
def test_tracking_starts_from_the_last_published_pose_and_never_from_a_rejected_one(
    registrar, case
):
    image, true, init = case
    tracker = Tracker(cost_factor=3.0)
    first, how = tracker.register(registrar, image, GEOMETRY, init, "initial_pose")
    assert first.ok and how == "initial_pose" and tracker.active
    seed = tracker.pose.copy()
    second, how = tracker.register(registrar, image, GEOMETRY, init, "initial_pose")
    assert second.ok and how == "tracking", second.message
    noise = np.random.default_rng(4).uniform(0, 3, size=(64, 64)).astype(np.float32)
    bad, how = tracker.register(registrar, noise, GEOMETRY, init, "initial_pose")
    assert not bad.ok
    # the noise frame did not become the next start
    np.testing.assert_allclose(tracker.pose, second.pose)
    assert np.abs(tracker.pose - seed).max() < 0.5
    assert tracker.reset() and not tracker.active and not tracker.reset()
