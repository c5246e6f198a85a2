"""LM solver: convergence, the chained Jacobian, step acceptance, bad input, covariance."""

import math

import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.geometry import make_pose, se3_exp, so3_exp
from sphere_reg_ros.core.lm import (
    LevenbergMarquardt,
    LMConfig,
    damped_solve,
    gain_ratio,
    increment_matrix,
    residual_jacobian,
    robust_cost,
    update_lambda,
)
from sphere_reg_ros.core.metrics import mtre, translation_error_mm
from sphere_reg_ros.core.residuals import CombinedResiduals, IntensityResiduals
from sphere_reg_ros.core.result import Status
from sphere_reg_ros.core.views import ap_pose
from sphere_reg_ros.core.volume import hu_to_attenuation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene(small_ct):
    """Renderers at 32 and 48 px of the 4 mm CT, a true pose and its DRR as the fixed image."""
    ct = small_ct[0]
    mu = hu_to_attenuation(ct.data)
    g = CarmGeometry(sdd=1020.0, height=48, width=48, delx=8.0, dely=8.0)
    renderers = [DrrRenderer(mu, ct.affine, g.resized(24)), DrrRenderer(mu, ct.affine, g)]
    true = ap_pose(ct.center_world)
    fixed = renderers[-1](true.float())
    c = torch.as_tensor(ct.center_world)
    landmarks = c + torch.tensor(
        [[60.0, 0, 0], [0, 60, 0], [0, 0, 60], [-40, -40, -40]], dtype=torch.float64
    )
    return renderers, true, fixed, c, landmarks, (mu, ct.affine)


def _offset(true, c, rot_deg, trans):
    w = torch.tensor(rot_deg, dtype=torch.float64).deg2rad()[None]
    R = so3_exp(w)[0]
    return make_pose(R[None], (c - R @ c + torch.tensor(trans, dtype=torch.float64))[None]) @ true


@pytest.mark.parametrize("damping", ["marquardt", "levenberg"])
def test_converges_from_8mm_and_4deg(scene, damping):
    renderers, true, fixed, c, landmarks, _ = scene
    init = _offset(true, c, [3.0, -2.0, 2.0], [5.0, -4.0, 3.0])
    assert float(mtre(init, true, landmarks)) > 5.0
    res = LevenbergMarquardt(IntensityResiduals(), LMConfig(damping=damping)).solve(
        renderers, fixed, init
    )
    assert res.status[0] in (Status.CONVERGED, Status.MAX_ITERATIONS), res.message
    assert float(translation_error_mm(res.pose, true)) < 0.5
    assert float(mtre(res.pose, true, landmarks)) < 0.5
    assert int(res.iterations[0]) <= 20
    assert float(res.cost[0]) < 0.01 * float(res.initial_cost[0])
    # accepted steps never raise the cost within a scale; the history starts at iteration 0
    hist = res.history[0]
    assert hist[0]["iteration"] == 0 and len(hist) == int(res.iterations[0]) + 1
    for scale in {h["scale"] for h in hist}:
        costs = [h["cost"] for h in hist if h["scale"] == scale]
        assert all(b <= a + 1e-12 for a, b in zip(costs, costs[1:]))
    # covariance: symmetric positive definite, of the world increment (v mm, w rad)
    cov = res.covariance[0]
    torch.testing.assert_close(cov, cov.T)
    assert float(torch.linalg.eigvalsh(cov).min()) > 0


class _TinyNet(torch.nn.Module):
    """A small conv net with the residual-model interface (float64-capable)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(4, 3, 3, stride=2, padding=1),
        )

    def embed(self, x):
        z = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-6)
        e = self.conv(z)
        return e / torch.sqrt((e * e).sum(1, keepdim=True) + 1.0)

    def residuals(self, em, ef):
        return (em - ef).flatten(1)


@pytest.mark.parametrize(
    "model",
    [
        IntensityResiduals(gradients=True, levels=2, local_window=0.2),
        _TinyNet(),
        CombinedResiduals([_TinyNet(), IntensityResiduals(gradients=True)], [1.0, 3.0]),
    ],
    ids=["intensity", "tiny-net", "combined"],
)
def test_chained_jacobian_matches_finite_differences_float64(scene, model):
    _, true, _, c, _, (mu, affine) = scene
    r64 = DrrRenderer(
        mu, affine, CarmGeometry(sdd=1020.0, height=20, width=16, delx=19.2, dely=19.2, x0=5.0)
    ).double()
    model = model.double()
    pose = _offset(true, c, [2.0, 1.0, -1.5], [3.0, 2.0, -4.0])
    window = r64.window(pose)
    P = increment_matrix(c, 100.0)
    emb_f = model.embed(
        torch.rand(1, 1, 20, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    )
    img, jd = r64.render_with_jacobian(pose, window=window)
    r, J = residual_jacobian(model, img, emb_f, jd @ P)
    fd = torch.zeros_like(J)
    for k in range(6):  # the DRR is piecewise linear in the pose: small steps (1e-4 mm, 1e-6 rad)
        h = 1e-4
        s = torch.zeros(1, 6, dtype=torch.float64)
        s[0, k] = h
        rp = model.residuals(model.embed(r64(se3_exp(s @ P.T) @ pose, window=window)), emb_f)
        rm = model.residuals(model.embed(r64(se3_exp(-s @ P.T) @ pose, window=window)), emb_f)
        fd[..., k] = (rp - rm) / (2 * h)
    rel = float((J - fd).detach().norm() / fd.detach().norm())
    assert rel < 5e-4, f"relative Jacobian error {rel:.2e}"
    for k in range(6):
        assert float((J[..., k] - fd[..., k]).detach().norm() / fd[..., k].detach().norm()) < 2e-3


def test_damped_solve_and_gain_ratio_reject_a_bad_step():
    H = torch.diag(torch.tensor([4.0, 1.0, 2.0, 1.0, 3.0, 1.0], dtype=torch.float64))[None].repeat(
        2, 1, 1
    )
    g = torch.ones(2, 6, dtype=torch.float64)
    lam = torch.tensor([1e-3, 1e-3], dtype=torch.float64)
    D = torch.diagonal(H, dim1=-2, dim2=-1)
    s, ok = damped_solve(H, g, lam, D)
    assert ok.all()
    torch.testing.assert_close(
        (H + lam[:, None, None] * torch.diag_embed(D)) @ s[..., None], -g[..., None]
    )
    assert float((s * g).sum(-1).max()) < 0  # a descent direction: the cost decreases along +s
    cost = torch.tensor([5.0, 5.0], dtype=torch.float64)
    _, pred = gain_ratio(cost, cost, s, g, lam, D)
    assert float(pred.min()) > 0
    new_cost = cost - pred * torch.tensor(
        [0.9, -0.5], dtype=torch.float64
    )  # element 1: the step made things worse
    rho, _ = gain_ratio(cost, new_cost, s, g, lam, D)
    torch.testing.assert_close(rho, torch.tensor([0.9, -0.5], dtype=torch.float64))
    accepted = rho > 1e-3
    assert accepted.tolist() == [True, False]
    nu = torch.tensor([2.0, 2.0], dtype=torch.float64)
    new_lam, new_nu = update_lambda(lam, nu, rho, accepted, 1e-9, 1e9)
    assert float(new_lam[0]) < float(lam[0]) and float(new_lam[1]) == pytest.approx(
        2 * float(lam[1])
    )
    assert new_nu.tolist() == [2.0, 4.0]
    # non-finite trial cost: never accepted
    rho, _ = gain_ratio(cost, torch.tensor([math.nan, math.inf], dtype=torch.float64), s, g, lam, D)
    assert not (rho > 0).any()


def test_robust_cost_matches_least_squares_for_small_residuals():
    r = torch.tensor([[1e-4, -2e-4, 3e-4]], dtype=torch.float64)
    plain, w0 = robust_cost(r, None)
    cauchy, w = robust_cost(r, None, "cauchy", torch.tensor([1.0], dtype=torch.float64))
    assert w0 is None
    torch.testing.assert_close(cauchy, plain, rtol=1e-6, atol=0)
    big = robust_cost(
        torch.tensor([[100.0]], dtype=torch.float64), None, "cauchy", torch.tensor([1.0])
    )[1]
    assert float(big) < 1e-3  # outliers get (almost) no weight


class _MeanOnly:
    """Residuals that see only the image mean: the pose is not determined (rank-1 Jacobian)."""

    def embed(self, x):
        return x.mean((2, 3))

    def residuals(self, em, ef):
        return em - ef


def test_singular_normal_equations_give_a_status(scene):
    renderers, true, fixed, c, _, _ = scene
    init = _offset(true, c, [1.0, 0.0, 0.0], [2.0, 0.0, 0.0])
    res = LevenbergMarquardt(_MeanOnly()).solve(renderers[:1], fixed, init)
    assert res.status == [Status.SINGULAR]
    assert torch.isnan(res.covariance).all()
    torch.testing.assert_close(res.pose, init)


def test_bad_elements_get_invalid_input_and_the_rest_registers(scene):
    renderers, true, fixed, c, landmarks, _ = scene
    init = _offset(true, c, [1.0, 1.0, 0.0], [2.0, -2.0, 1.0]).repeat(3, 1, 1)
    fixed3 = fixed.repeat(3, 1, 1, 1).clone()
    fixed3[1, 0, 3, 3] = float("nan")
    init[2, 0, 0] = float("nan")
    res = LevenbergMarquardt(IntensityResiduals(), LMConfig(max_iterations=10)).solve(
        renderers, fixed3, init
    )
    assert res.status[1] == Status.INVALID_INPUT and "NaN" in res.message[1]
    assert res.status[2] == Status.INVALID_INPUT and "pose" in res.message[2]
    assert res.status[0].usable
    assert float(mtre(res.pose[:1], true, landmarks)) < 0.5


def test_runaway_is_divergence(scene):
    renderers, true, fixed, c, _, _ = scene
    init = _offset(true, c, [2.0, 1.0, 0.0], [6.0, -4.0, 2.0])
    res = LevenbergMarquardt(IntensityResiduals(), LMConfig(max_translation_mm=0.5)).solve(
        renderers[:1], fixed, init
    )
    assert res.status == [Status.DIVERGED]
    assert "initial pose" in res.message[0]


def test_unrolled_solve_is_differentiable(scene):
    renderers, true, _, c, _, _ = scene
    fixed = renderers[0](true.float()).detach().requires_grad_(True)
    init = _offset(true, c, [1.0, -1.0, 0.5], [2.0, 1.0, -2.0])
    res = LevenbergMarquardt(IntensityResiduals(), LMConfig(unrolled=True, max_iterations=3)).solve(
        renderers[:1], fixed, init
    )
    assert res.pose.requires_grad
    res.pose[:, :3, 3].sum().backward()
    assert (
        fixed.grad is not None
        and torch.isfinite(fixed.grad).all()
        and float(fixed.grad.abs().sum()) > 0
    )


def test_step_scale_follows_the_cost_along_the_step_and_carries_over_to_tracking(scene):
    """κ ends where the parabola through the cost along the last step put it, and a
    registration that starts where one ended (tracking) starts with that κ; another start
    pose starts at 1."""
    renderers, true, fixed, c, landmarks, _ = scene
    lm = LevenbergMarquardt(IntensityResiduals(), LMConfig())
    init = _offset(true, c, [1.0, -1.0, 0.5], [2.0, -1.5, 1.0])
    first = lm.solve(renderers[-1:], fixed, init)
    expected = 1.0  # replay the rule on the trials of the history
    for h in first.history[0][1:]:
        if h["accepted"]:
            fit = expected / (2.0 - min(h["rho"], 1.5))
            expected = min(max(fit, expected / 2), expected * 2)
        else:
            expected = expected / 2
        expected = min(max(expected, 1.0), lm.config.max_step_scale)
    assert len(first.history[0]) > 2
    assert float(lm._start_kappa(renderers[-1], first.pose)[0]) == pytest.approx(expected, rel=1e-9)
    # no registration ended at the initial pose: it starts plain
    assert float(lm._start_kappa(renderers[-1], init)[0]) == 1.0
    # the next frame, slightly moved, starts with the κ the last one ended with and converges
    moved = _offset(true, c, [0.05, 0.0, 0.0], [0.3, 0.0, 0.0])
    fixed2 = renderers[-1](moved.float())
    second = lm.solve(renderers[-1:], fixed2, first.pose)
    assert second.status[0] in (Status.CONVERGED, Status.MAX_ITERATIONS)
    assert float(mtre(second.pose, moved, landmarks)) < 0.5
    # a different renderer (another scale) does not share it
    assert float(lm._start_kappa(renderers[0], second.pose)[0]) == 1.0


@pytest.mark.parametrize("kind", ["cauchy", "huber", "geman-mcclure", "tukey"])
def test_robust_kernels_irls_weights_are_the_kernel_derivative(kind):
    """IRLS weight w(r) = ρ'(r)/r (checked by finite differences in float64), ρ ≈ ½r² near 0."""
    r = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)[None] + 1e-3
    s = torch.tensor([1.3], dtype=torch.float64)
    h = 1e-6
    up, _ = robust_cost(r + h, None, kind, s)
    cost, w = robust_cost(r, None, kind, s)
    per = [
        robust_cost(r[:, i : i + 1] + d, None, kind, s)[0]
        for i in range(r.shape[1])
        for d in (h, -h)
    ]
    deriv = torch.stack([(per[2 * i] - per[2 * i + 1]) / (2 * h) for i in range(r.shape[1])], dim=1)
    torch.testing.assert_close(w * r, deriv, rtol=1e-5, atol=1e-8)
    small = torch.tensor([[1e-4]], dtype=torch.float64)
    assert float(robust_cost(small, None, kind, s)[0]) == pytest.approx(0.5e-8, rel=1e-4)
    if kind in ("geman-mcclure", "tukey"):  # redescending: far outliers lose (almost) all weight
        assert (
            float(robust_cost(torch.tensor([[50.0]], dtype=torch.float64), None, kind, s)[1]) < 1e-6
        )


def test_robust_spread_ignores_residuals_of_zero_weight():
    from sphere_reg_ros.core.lm_steps import robust_spread

    r = torch.tensor([[1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(robust_spread(r, w)) == pytest.approx(1.4826)
    assert float(robust_spread(r)) == pytest.approx(1.4826 * 0.0 + 1e-12, abs=1e-11)


@pytest.mark.parametrize("kind", ["geman-mcclure", "tukey"])
def test_planted_outliers_get_no_weight_and_do_not_move_the_minimum(scene, kind):
    """A bright block (an object the CT does not contain) in the fixed image: least squares is
    pulled away from the truth, a redescending kernel is not."""
    renderers, true, fixed, c, landmarks, _ = scene
    planted = fixed.clone()
    planted[..., 6:20, 30:40] += 4.0 * float(fixed.std())
    init = _offset(true, c, [1.0, -1.0, 1.0], [2.0, -2.0, 1.0])
    robust = LevenbergMarquardt(IntensityResiduals(), LMConfig(robust=kind)).solve(
        renderers, planted, init
    )
    plain = LevenbergMarquardt(IntensityResiduals(), LMConfig()).solve(renderers, planted, init)
    assert robust.status[0].usable, robust.message
    e_robust, e_plain = (
        float(mtre(robust.pose, true, landmarks)),
        float(mtre(plain.pose, true, landmarks)),
    )
    assert e_robust < 1.0 and e_robust < 0.5 * e_plain, (e_robust, e_plain)


def test_masked_pixels_take_no_part(scene):
    """Whatever a mask covers may be anything: the solution with a mask over garbage equals the
    solution with the same mask over the clean image."""
    renderers, true, fixed, c, landmarks, _ = scene
    mask = torch.ones_like(fixed, dtype=torch.bool)
    mask[..., :, :8] = False
    mask[..., :6, :] = False
    garbage = torch.where(mask, fixed, 9.0 + torch.randn_like(fixed))
    init = _offset(true, c, [2.0, -1.0, 1.0], [3.0, -2.0, 2.0])
    for model in (IntensityResiduals(), IntensityResiduals(gradients=True, levels=2)):
        solver = LevenbergMarquardt(model, LMConfig(robust="cauchy"))
        a = solver.solve(renderers, garbage, init, mask=mask)
        b = LevenbergMarquardt(model, LMConfig(robust="cauchy")).solve(
            renderers, fixed, init, mask=mask
        )
        assert a.status[0].usable and float(mtre(a.pose, true, landmarks)) < 0.5
        torch.testing.assert_close(a.pose, b.pose, rtol=0, atol=1e-6)
        assert float(a.cost[0]) == pytest.approx(float(b.cost[0]), rel=1e-5)
    with pytest.raises(ValueError, match="mask"):
        LevenbergMarquardt(IntensityResiduals()).solve(renderers, fixed, init, mask=mask[..., :10])


def test_masked_jacobian_matches_finite_differences(scene):
    """The chained Jacobian under a mask, against central differences of the residuals (float64)."""
    renderers, true, fixed, c, landmarks, (mu, affine) = scene
    r64 = DrrRenderer(mu, affine, renderers[0].geometry).double()
    model = IntensityResiduals(gradients=True, local_window=0.2)
    pose = _offset(true, c, [1.0, 0.5, -1.0], [2.0, 1.0, -1.0])
    fx = r64(true.double())
    mask = torch.ones_like(fx, dtype=torch.bool)
    mask[..., :, -5:] = False
    emb_f = model.embed(fx, mask=mask)
    window = r64.window(pose)
    img, jac = r64.render_with_jacobian(pose, window=window)
    r, J = residual_jacobian(model, img, emb_f, jac, mask)
    fd = torch.zeros_like(J)
    for k in range(6):
        d = torch.zeros(1, 6, dtype=torch.float64)
        d[0, k] = 1e-5 if k < 3 else 1e-7  # far below a voxel: the interpolant's kinks stay out
        plus = model.residuals(model.embed(r64(se3_exp(d) @ pose, window=window), mask=mask), emb_f)
        minus = model.residuals(
            model.embed(r64(se3_exp(-d) @ pose, window=window), mask=mask), emb_f
        )
        fd[..., k] = (plus - minus) / (2 * d[0, k])
    for k in range(6):
        assert (J[..., k] - fd[..., k]).norm() / fd[..., k].norm() < 1e-3
    assert (r.reshape(-1) != 0).sum() < r.numel()  # masked residuals are exactly zero


@pytest.mark.parametrize(
    "fit", [{"materials": True}, {"materials": True, "curve_degree": 3}, {"curve_degree": 2}]
)
def test_jacobian_through_the_intensity_fit_matches_finite_differences(scene, fit):
    """The fit is redone at every evaluation, so the Jacobian includes how the fitted intensity
    model moves with the pose (variable projection); float64, two-channel DRRs, under a mask."""
    from sphere_reg_ros.core.volume import bone_attenuation

    renderers, true, _, c, _, (mu, affine) = scene
    ct_hu = (mu - 1.0) * 1000.0  # hu_to_attenuation inverted (mu > 0 voxels)
    r64 = DrrRenderer(
        mu, affine, renderers[0].geometry, channels=bone_attenuation(ct_hu)[None]
    ).double()
    model = IntensityResiduals(gradients=True, local_window=0.2, **fit)
    pose = _offset(true, c, [1.0, 0.5, -1.0], [2.0, 1.0, -1.0])
    fx = DrrRenderer(
        hu_to_attenuation(ct_hu, bone_multiplier=1.8), affine, renderers[0].geometry
    ).double()(true.double())
    mask = torch.ones_like(fx, dtype=torch.bool)
    mask[..., :, -5:] = False
    emb_f = model.embed(fx, mask=mask)
    window = r64.window(pose)
    img, jac = r64.render_with_jacobian(pose, window=window, channels=model.drr_channels > 1)
    r, J = residual_jacobian(model, img, emb_f, jac, mask)
    fd = torch.zeros_like(J)
    for k in range(6):
        d = torch.zeros(1, 6, dtype=torch.float64)
        d[0, k] = 1e-5 if k < 3 else 1e-7  # far below a voxel: the interpolant's kinks stay out
        plus, _ = r64.render_with_jacobian(
            se3_exp(d) @ pose, window=window, channels=model.drr_channels > 1
        )
        minus, _ = r64.render_with_jacobian(
            se3_exp(-d) @ pose, window=window, channels=model.drr_channels > 1
        )
        rp = model.residuals(model.embed(plus, mask=mask), emb_f)
        rm = model.residuals(model.embed(minus, mask=mask), emb_f)
        fd[..., k] = (rp - rm) / (2 * d[0, k])
    for k in range(6):
        assert (J[..., k] - fd[..., k]).norm() / fd[..., k].norm() < 1e-3


def test_bone_fit_removes_the_bias_of_a_different_bone_contrast(scene):
    """X-ray with bone twice as dense as the CT says and a smooth scatter ramp: started 3 mm /
    2° off, the LM with the bone fit lands closer to the truth than without it."""
    from sphere_reg_ros.core.volume import bone_attenuation

    renderers, true, _, c, landmarks, (mu, affine) = scene
    ct_hu = (mu - 1.0) * 1000.0
    geometry = renderers[-1].geometry
    fixed = DrrRenderer(hu_to_attenuation(ct_hu, bone_multiplier=2.0), affine, geometry)(
        true.float()
    )
    fixed = fixed + 0.3 * torch.linspace(0, 1, geometry.width)  # scatter-like ramp
    start = _offset(true, c, [2.0, -1.0, 1.5], [3.0, -2.0, 2.0])
    errors = {}
    for materials in (False, True):
        channels = bone_attenuation(ct_hu)[None] if materials else None
        rs = [DrrRenderer(mu, affine, r.geometry, channels=channels) for r in renderers]
        model = IntensityResiduals(gradients=True, local_window=0.2, materials=materials)
        out = LevenbergMarquardt(model, LMConfig()).solve(rs, fixed, start.float())
        assert out.status[0] is Status.CONVERGED
        errors[materials] = float(mtre(out.pose.double(), true, landmarks)[0])
    assert errors[True] < 0.5 * errors[False] and errors[True] < 0.3, errors
