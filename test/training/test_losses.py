"""Losses: regressor geodesics, the gradient-matching target, J-contraction = autograd through the renderer."""

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.geometry import make_pose, se3_exp, so3_exp
from sphere_reg_ros.core.models import SimilarityConfig, SimilarityNet
from sphere_reg_ros.core.sampling import PoseDistribution
from sphere_reg_ros.training.losses import (
    _centered_increment,
    centered_jacobian,
    geodesic_pose_gradient,
    gradient_matching_loss,
    pose_distance,
    regressor_loss,
    similarity_pose_gradient,
)

CENTER = np.array([5.0, -30.0, 12.0])
DIST = PoseDistribution()


def _poses(n, seed):
    return DIST.sample(n, CENTER, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["so4", "se3"])
def test_regressor_loss_is_zero_at_the_truth_and_positive_elsewhere(kind):
    T = _poses(4, 0)
    kw = dict(center=CENTER, sod_mm=DIST.sod_mm)
    assert float(regressor_loss(T, T.clone(), kind, **kw)) == pytest.approx(0.0, abs=1e-7)
    assert float(regressor_loss(T, _poses(4, 1), kind, **kw)) > 0.05
    Tp = T.clone().requires_grad_()
    regressor_loss(Tp, T, kind, **kw).backward()
    assert torch.isfinite(Tp.grad).all()


def test_regressor_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="T_pred"):
        regressor_loss(torch.eye(4), torch.eye(4)[None])
    with pytest.raises(ValueError, match="kind"):
        regressor_loss(torch.eye(4)[None], torch.eye(4)[None], "l2")


def test_so4_distance_in_the_isocentric_frame_is_nearly_bi_invariant():
    """Rotating the world about the isocentre (left) or the C-arm about its isocentre (right)
    changes the SO(4) distance only to O(|t|²/f²) (first order); se(3) is only left-invariant."""
    Ta, Tb = _poses(16, 2), _poses(16, 3)
    kw = dict(center=CENTER, sod_mm=DIST.sod_mm)
    R = so3_exp(torch.tensor([[0.3, -0.2, 0.25]], dtype=torch.float64))
    c = torch.as_tensor(CENTER)
    G = make_pose(R, c - R @ c)  # rotation about the isocentre, world frame
    iso = make_pose(
        torch.eye(3, dtype=torch.float64)[None],
        torch.tensor([[0.0, 0.0, DIST.sod_mm]], dtype=torch.float64),
    )
    H = (
        iso
        @ make_pose(R.transpose(1, 2), torch.zeros(1, 3, dtype=torch.float64))
        @ torch.linalg.inv(iso)
    )
    d = pose_distance(Ta, Tb, "so4", **kw)
    left = pose_distance(G @ Ta, G @ Tb, "so4", **kw)
    right = pose_distance(Ta @ H, Tb @ H, "so4", **kw)
    assert torch.allclose(left, d, rtol=1e-9)  # exactly left-invariant under isocentre rotations
    assert torch.allclose(right, d, rtol=0.1)  # right: to O(t²/f²), t <~ 70 mm, f = 100 mm
    se3 = pose_distance(Ta, Tb, "se3", **kw)
    assert torch.allclose(pose_distance(G @ Ta, G @ Tb, "se3", **kw), se3, rtol=1e-9)


def test_gradient_matching_loss_values():
    t = torch.tensor([[1.0, 2.0, 3.0, 0.1, -0.2, 0.3]])
    assert float(gradient_matching_loss(5 * t, t)) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert float(gradient_matching_loss(-t, t)) == pytest.approx(8.0)  # both parts opposite
    rot_only = torch.cat([t[:, :3] * 7, -t[:, 3:]], -1)  # translation aligned, rotation opposite
    assert float(gradient_matching_loss(rot_only, t)) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        gradient_matching_loss(t[:, :5], t[:, :5])


def test_geodesic_gradient_matches_finite_differences_and_points_away_from_the_truth():
    T_true = _poses(3, 4)
    T = torch.stack(
        [
            se3_exp(torch.tensor([3.0, -5.0, 8.0, 0.02, -0.05, 0.03], dtype=torch.float64)) @ t
            for t in T_true
        ]
    )
    kw = dict(center=CENTER, sod_mm=DIST.sod_mm)
    g = geodesic_pose_gradient(T, T_true, "so4", **kw)
    h = 1e-6
    for k in range(6):
        e = torch.zeros(3, 6, dtype=torch.float64)
        e[:, k] = h
        fd = (
            pose_distance(_centered_increment(e, CENTER, T) @ T, T_true, "so4", **kw)
            - pose_distance(_centered_increment(-e, CENTER, T) @ T, T_true, "so4", **kw)
        ) / (2 * h)
        assert torch.allclose(g[:, k], fd, rtol=1e-5, atol=1e-9)
    step = -1e-2 * g / g.norm(dim=-1, keepdim=True)  # a small step against the gradient gets closer
    closer = _centered_increment(step, CENTER, T) @ T
    assert (
        pose_distance(closer, T_true, "so4", **kw) < pose_distance(T, T_true, "so4", **kw)
    ).all()


def test_centered_jacobian_is_the_jacobian_of_rotations_about_the_isocentre(tiny_scene):
    r64 = tiny_scene.renderer.double()
    try:
        T = tiny_scene.sample_poses(1, torch.Generator().manual_seed(0))
        window = r64.window(T)  # fixed sampling window: the DRR is smooth in the pose
        _, J = r64.render_with_jacobian(T, window)
        Jc = centered_jacobian(J, tiny_scene.center_world)
        # steps far below a voxel avoid the trilinear interpolant's kinks (as test_drr)
        h = torch.tensor(
            [[0.0, 0.0, 0.0, 2e-7, -1e-7, 1.5e-7]], dtype=torch.float64
        )  # a pure rotation
        plus, _ = r64.render_with_jacobian(
            _centered_increment(h, tiny_scene.center_world, T) @ T, window
        )
        minus, _ = r64.render_with_jacobian(
            _centered_increment(-h, tiny_scene.center_world, T) @ T, window
        )
        fd = ((plus - minus) / 2).flatten()
        assert float((Jc[0] @ h[0] - fd).norm() / fd.norm()) < 1e-3
        assert (
            float((J[0] @ h[0] - fd).norm() / fd.norm()) > 0.5
        )  # the world-frame Jacobian differs
    finally:
        tiny_scene.renderer.float()


def _tiny_net():
    torch.manual_seed(0)
    return SimilarityNet(SimilarityConfig(channels=4, stem_widths=(4, 8, 8), model_dim=8, heads=2))


def test_jacobian_contraction_equals_autograd_through_the_renderer(tiny_scene):
    """∂ε/∂δ = J_DRRᵀ ∇_DRR ε, and so are its gradients with respect to the weights."""
    scene = tiny_scene
    g = torch.Generator().manual_seed(1)
    T_true = scene.sample_poses(2, g)
    T = (
        se3_exp(torch.tensor([[4.0, -3.0, 6.0, 0.03, 0.02, -0.04]], dtype=torch.float64)) @ T_true
    ).float()
    fixed = scene.render(T_true)
    net = _tiny_net()
    moving, J = scene.renderer.render_with_jacobian(T)
    g_contract, _ = similarity_pose_gradient(net, moving, fixed, J, create_graph=True)
    delta = torch.zeros(2, 6, requires_grad=True)
    eps = net.similarity(scene.renderer(se3_exp(delta) @ T), fixed)
    (g_auto,) = torch.autograd.grad(eps.sum(), delta, create_graph=True)
    assert torch.allclose(
        g_contract, g_auto, rtol=1e-3, atol=1e-4 * float(g_auto.detach().abs().max())
    )
    target = geodesic_pose_gradient(T, T_true, "so4", center=scene.center_world, sod_mm=DIST.sod_mm)
    w = net.head.weight
    (d_contract,) = torch.autograd.grad(gradient_matching_loss(g_contract, target), w)
    (d_auto,) = torch.autograd.grad(gradient_matching_loss(g_auto, target), w)
    assert torch.allclose(d_contract, d_auto, rtol=1e-3, atol=1e-3 * float(d_auto.abs().max()))


class _SSD:
    """An intensity similarity: ½|m - f|² (or its negative, a similarity that points the wrong way)."""

    def __init__(self, sign):
        self.sign = sign

    def similarity(self, moving, fixed):
        return self.sign * 0.5 * ((moving - fixed) ** 2).flatten(1).sum(-1)


def test_gradient_matching_loss_is_lower_for_a_similarity_whose_gradient_aligns(tiny_scene):
    scene = tiny_scene
    g = torch.Generator().manual_seed(2)
    T_true = scene.sample_poses(8, g)
    offsets = torch.stack(
        [
            se3_exp(torch.tensor([5.0, -4.0, 3.0, 0.02, -0.03, 0.02], dtype=torch.float64) * s)
            for s in torch.linspace(0.5, 1.5, 8)
        ]
    )
    T = offsets @ T_true
    moving, J = scene.render_with_jacobian(T)
    Jc = centered_jacobian(J, scene.center_world)
    fixed = scene.render(T_true)
    target = geodesic_pose_gradient(T, T_true, "so4", center=scene.center_world, sod_mm=DIST.sod_mm)
    good = gradient_matching_loss(
        similarity_pose_gradient(_SSD(1.0), moving, fixed, Jc, False)[0], target
    )
    bad = gradient_matching_loss(
        similarity_pose_gradient(_SSD(-1.0), moving, fixed, Jc, False)[0], target
    )
    assert float(good) < 3.0 < float(bad)
