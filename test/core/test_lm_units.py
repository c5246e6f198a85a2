"""The LM solver's units on their own: damped solve, step acceptance, stopping rules, covariance."""

import math

import pytest
import torch

from sphere_reg_ros.core.geometry import make_pose, so3_exp
from sphere_reg_ros.core.lm_config import LMConfig
from sphere_reg_ros.core.lm_damping import (
    damped_solve,
    gain_ratio,
    initial_damping,
    update_damping,
    update_step_scale,
)
from sphere_reg_ros.core.lm_steps import displacement, increment_matrix, pose_covariance
from sphere_reg_ros.core.lm_stopping import (
    Tolerances,
    final_status,
    input_status,
    small_steps,
    start_status,
    step_status,
)
from sphere_reg_ros.core.result import Status

f64 = torch.float64


def test_damped_solve_of_a_diagonal_system_is_the_damped_newton_step():
    h = torch.tensor([[4.0, 1.0, 2.0, 1.0, 3.0, 0.5]], dtype=f64)
    g = torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0, -1.0]], dtype=f64)
    lam = torch.tensor([0.5], dtype=f64)
    D = torch.tensor([[2.0, 1.0, 1.0, 4.0, 1.0, 1.0]], dtype=f64)
    s, ok = damped_solve(torch.diag_embed(h), g, lam, D)
    assert ok.tolist() == [True]
    torch.testing.assert_close(s, -g / (h + lam[:, None] * D), rtol=1e-14, atol=0)


def test_damped_solve_reports_an_indefinite_system_and_returns_no_step():
    H = torch.stack([torch.eye(6, dtype=f64), -torch.eye(6, dtype=f64)])
    g = torch.ones(2, 6, dtype=f64)
    s, ok = damped_solve(H, g, torch.full((2,), 1e-3, dtype=f64), torch.ones(2, 6, dtype=f64))
    assert ok.tolist() == [True, False]
    assert float(s[1].abs().max()) == 0.0
    torch.testing.assert_close(s[0], -g[0] / 1.001)


def test_initial_damping_marquardt_and_levenberg():
    diag = torch.tensor([[4.0, 1.0, 2.0, 8.0, 3.0, 6.0]], dtype=f64)
    D, lam, unit = initial_damping(diag, LMConfig(lambda_init=1e-3))
    torch.testing.assert_close(D, diag)
    assert lam.tolist() == [1e-3] and unit.tolist() == [1.0]
    D, lam, unit = initial_damping(diag, LMConfig(damping="levenberg", lambda_init=1e-3))
    assert D.tolist() == [[1.0] * 6]
    assert lam.tolist() == [pytest.approx(8e-3)] and unit.tolist() == [pytest.approx(4.0)]
    # Marquardt's λ starts within its bounds
    _, lam, _ = initial_damping(diag, LMConfig(lambda_init=1e-3, lambda_min=1e-2))
    assert lam.tolist() == [1e-2]


def test_gain_ratio_divides_by_the_step_scale():
    s = torch.tensor([[1.0, 0, 0, 0, 0, 0]], dtype=f64)
    g = torch.tensor([[-2.0, 0, 0, 0, 0, 0]], dtype=f64)
    lam, D = torch.tensor([0.0], dtype=f64), torch.ones(1, 6, dtype=f64)
    cost, new = torch.tensor([10.0], dtype=f64), torch.tensor([7.0], dtype=f64)
    rho, pred = gain_ratio(cost, new, s, g, lam, D)
    assert pred.tolist() == [1.0] and rho.tolist() == [3.0]
    rho, pred = gain_ratio(cost, new, s, g, lam, D, torch.tensor([2.0], dtype=f64))
    assert pred.tolist() == [1.0] and rho.tolist() == [1.5]


def test_update_damping_lowers_lambda_on_acceptance_and_floors_it_on_rejection():
    cfg = LMConfig(lambda_min=1e-9, lambda_max=1e9, lambda_reject=0.1)
    lam = torch.tensor([1e-6, 1e-6, 1.0], dtype=f64)
    nu = torch.full((3,), 2.0, dtype=f64)
    rho = torch.tensor([1.0, -1.0, -1.0], dtype=f64)
    acc = torch.tensor([True, False, False])
    unit = torch.tensor([1.0, 5.0, 1.0], dtype=f64)
    new_lam, new_nu = update_damping(lam, nu, rho, acc, unit, cfg)
    # ρ = 1: λ / 3; rejected: λ·ν, but at least 0.1 of the unit
    torch.testing.assert_close(new_lam, torch.tensor([1e-6 / 3, 0.5, 2.0], dtype=f64))
    assert new_nu.tolist() == [2.0, 4.0, 4.0]


@pytest.mark.parametrize(
    "kappa, rho, accepted, expected",
    [
        (4.0, 1.0, True, 4.0),  # the model was right: κ stays
        (4.0, 1.5, True, 8.0),  # too pessimistic: κ / (2 − 1.5), at most doubled
        (4.0, 1.9, True, 8.0),  # ρ clipped at 1.5
        (4.0, 0.5, True, 4.0 / 1.5),
        (4.0, -0.5, True, 2.0),  # at most halved
        (4.0, 0.5, False, 2.0),  # a rejection halves it
        (1.0, 0.2, False, 1.0),  # never below 1
        (12.0, 1.5, True, 16.0),  # never above max_step_scale
    ],
)
def test_update_step_scale_on_given_gain_ratios(kappa, rho, accepted, expected):
    k = update_step_scale(
        torch.tensor([kappa], dtype=f64),
        torch.tensor([rho], dtype=f64),
        torch.tensor([accepted]),
        16.0,
    )
    assert float(k[0]) == pytest.approx(expected, rel=1e-12)


def _step(cfg, tol, **kw):
    args = dict(
        runaway=False,
        solved=True,
        accepted=True,
        step_mm=1.0,
        step_rad=1e-2,
        moved_mm=1.0,
        moved_rad=0.01,
        old_cost=10.0,
        new_cost=5.0,
        rejections=0,
        lam=1e-3,
        tol=tol,
        config=cfg,
    )
    args.update(kw)
    return step_status(**args)


def test_stopping_rules_after_a_trial_in_priority_order():
    cfg = LMConfig(max_rejections=3, lambda_max=1e3)
    tol = Tolerances.for_scale(cfg, final=True)
    assert _step(cfg, tol) is None  # a good step: go on
    st, msg = _step(cfg, tol, runaway=True, moved_mm=400.0, moved_rad=0.2, step_mm=0.0)
    assert st is Status.DIVERGED and "400 mm" in msg  # divergence wins over a small step
    assert _step(cfg, tol, solved=False, accepted=False, lam=1e3)[0] is Status.SINGULAR
    assert _step(cfg, tol, step_mm=0.001, step_rad=1e-6) == (
        Status.CONVERGED,
        "step below tolerance",
    )
    assert _step(cfg, tol, step_mm=0.001, step_rad=1e-2) is None  # both must be small
    st, msg = _step(cfg, tol, new_cost=10.0 * (1 - 0.5 * cfg.cost_tol))
    assert st is Status.CONVERGED and "relative cost decrease" in msg
    assert _step(cfg, tol, accepted=False, rejections=2) is None
    st, msg = _step(cfg, tol, accepted=False, rejections=3)
    assert st is Status.CONVERGED and "no further decrease" in msg
    assert _step(cfg, tol, accepted=False, lam=1e3)[0] is Status.CONVERGED


def test_tolerances_are_looser_on_a_coarse_scale_and_small_steps_need_both():
    cfg = LMConfig(step_tol_mm=0.02, step_tol_rad=1e-4, cost_tol=1e-4, coarse_tol_factor=10.0)
    assert Tolerances.for_scale(cfg, final=True) == Tolerances(0.02, 1e-4, 1e-4)
    coarse = Tolerances.for_scale(cfg, final=False)
    assert coarse == Tolerances(0.2, 1e-3, 1e-3)
    ok = torch.tensor([True, True, True, False])
    mm = torch.tensor([0.1, 0.1, 0.3, 0.0], dtype=f64)
    rad = torch.tensor([1e-4, 2e-3, 1e-4, 0.0], dtype=f64)
    assert small_steps(ok, mm, rad, coarse).tolist() == [True, False, False, False]


def test_start_input_and_final_statuses():
    assert input_status(True, True) is None
    assert input_status(False, False)[1] == "image contains NaN or inf"
    assert "rigid transform" in input_status(True, False)[1]
    assert start_status(True, False, first=True, height=32)[0] is Status.INVALID_INPUT
    assert start_status(True, False, first=False, height=32) == (
        Status.DIVERGED,
        "non-finite cost at the start of scale 32 px",
    )
    assert start_status(False, True, first=True, height=32)[0] is Status.SINGULAR
    assert start_status(False, False, first=True, height=32) is None
    start = [{"iteration": 0, "accepted": True}]
    stepped = start + [{"iteration": 1, "accepted": True}]
    conv = (Status.CONVERGED, "step below tolerance")
    assert final_status(None, "", start)[0] is Status.MAX_ITERATIONS
    assert final_status(*conv, stepped) == conv
    st, msg = final_status(*conv, start + [{"iteration": 1, "accepted": False}])
    assert st is Status.NO_PROGRESS and msg == "no step lowered the cost (step below tolerance)"
    assert final_status(Status.DIVERGED, "x", start) == (Status.DIVERGED, "x")


def test_pose_covariance_maps_the_scaled_increments_to_the_world():
    H = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0, 1.0, 1.0], dtype=f64))
    # cost 50 over 106 residuals: σ² = 2·50/100 = 1; inflation 2, scale 3: Σ_s = 6 H⁻¹
    P = torch.eye(6, dtype=f64)
    torch.testing.assert_close(pose_covariance(H, 50.0, 106.0, 2.0, P, 3.0), 6 * torch.inverse(H))
    P = increment_matrix(torch.tensor([10.0, 0.0, 0.0]), 100.0)
    cov = pose_covariance(H, 50.0, 106.0, 2.0, P, 3.0)
    torch.testing.assert_close(cov, P @ (6 * torch.inverse(H)) @ P.T)
    torch.testing.assert_close(cov, cov.T)


def test_displacement_of_a_rotation_about_the_centre_moves_it_by_nothing():
    c = torch.tensor([10.0, -20.0, 30.0], dtype=f64)
    R = so3_exp(torch.tensor([[0.0, 0.0, 0.1]], dtype=f64))
    turn = make_pose(R, (c - R[0] @ c)[None])
    shift = make_pose(torch.eye(3, dtype=f64)[None], torch.tensor([[3.0, 4.0, 0.0]], dtype=f64))
    pose0 = torch.eye(4, dtype=f64)[None]
    mm, rad = displacement(torch.cat([turn, shift]), pose0.repeat(2, 1, 1), c)
    torch.testing.assert_close(mm, torch.tensor([0.0, 5.0], dtype=f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(rad, torch.tensor([0.1, 0.0], dtype=f64))
    assert math.isclose(float(rad[0]), 0.1, rel_tol=1e-12)
