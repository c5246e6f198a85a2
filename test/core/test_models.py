"""Learned models: similarity embeddings and residuals, jvp through the network, pose regressor."""

import math

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.models import (
    PoseRegressor,
    RegressorConfig,
    SimilarityConfig,
    SimilarityNet,
    lorentz_distance,
    lorentz_exp,
    pose_to_params,
    sphere_exp,
    to_isocentric,
)
from sphere_reg_ros.core.sampling import PoseDistribution

TINY = dict(channels=6, stem_widths=(4, 8, 8), model_dim=8, heads=2, depth=1)


def _net(embedding: str, dtype=torch.float64) -> SimilarityNet:
    torch.manual_seed(0)
    return SimilarityNet(SimilarityConfig(embedding=embedding, **TINY)).to(dtype)


def _images(b=2, size=16, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=g, dtype=dtype) * 3 + 1


# ----------------------------------------------------------------------------- embeddings
def test_sphere_exp_is_unit_norm_and_maps_zero_to_the_north_pole():
    phi = torch.randn(5, 7, 3, 3, dtype=torch.float64) * 2
    Phi = sphere_exp(phi)
    assert Phi.shape == (5, 8, 3, 3)
    assert torch.allclose(Phi.norm(dim=1), torch.ones(5, 3, 3, dtype=torch.float64), atol=1e-12)
    north = sphere_exp(torch.zeros(1, 4, 1, 1, dtype=torch.float64))[0, :, 0, 0]
    assert torch.equal(north, torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    # the seed's formula, away from zero
    n = phi.norm(dim=1, keepdim=True)
    assert torch.allclose(Phi, torch.cat([phi * torch.sin(n) / n, torch.cos(n)], 1), atol=1e-12)


@pytest.mark.parametrize("exp", [sphere_exp, lorentz_exp])
def test_exponential_maps_have_finite_exact_gradients_at_zero(exp):
    phi = torch.zeros(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    (jac,) = torch.autograd.functional.jacobian(exp, (phi,))
    jac = jac.reshape(4, 3)
    assert torch.isfinite(jac).all()
    assert torch.allclose(
        jac, torch.cat([torch.eye(3), torch.zeros(1, 3)]).double()
    )  # d EXP(0) = [I; 0]
    for x in (torch.zeros(2, 3, 2, 2), torch.full((2, 3, 2, 2), 3e-3), torch.randn(2, 3, 2, 2)):
        assert torch.autograd.gradcheck(exp, (x.double().requires_grad_(),))


def test_lorentz_points_lie_on_the_hyperboloid_and_distance_is_the_arccosh():
    x = lorentz_exp(torch.randn(4, 5, 2, 2, dtype=torch.float64))
    y = lorentz_exp(torch.randn(4, 5, 2, 2, dtype=torch.float64))
    minkowski = (x[:, :-1] ** 2).sum(1) - x[:, -1] ** 2
    assert torch.allclose(minkowski, -torch.ones_like(minkowski), atol=1e-9)
    inner = -(x[:, :-1] * y[:, :-1]).sum(1) + x[:, -1] * y[:, -1]
    assert torch.allclose(lorentz_distance(x, y), torch.acosh(inner), atol=1e-8)
    assert torch.equal(lorentz_distance(x, x), torch.zeros(4, 2, 2, dtype=torch.float64))
    xg = x.clone().requires_grad_()
    lorentz_distance(xg, x.clone()).sum().backward()
    assert torch.isfinite(xg.grad).all()


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("embedding,dim", [("spherical", 7), ("euclidean", 6), ("hyperbolic", 7)])
def test_shapes(embedding, dim):
    net = _net(embedding)
    e = net.embed(_images(3, 32))
    assert e.shape == (3, dim, 8, 8)
    r = net.residuals(e, net.embed(_images(1, 32, seed=2)))  # fixed broadcast over the batch
    assert r.shape == (3, dim * 64 if embedding != "hyperbolic" else 64)
    assert net.similarity(_images(3, 32), _images(3, 32, seed=3)).shape == (3,)


def test_spherical_residual_half_squared_norm_is_the_seeds_epsilon():
    net = _net("spherical")
    m, f = net.embed(_images(2, 16)), net.embed(_images(2, 16, seed=5))
    assert torch.allclose(m.norm(dim=1), torch.ones(2, 4, 4, dtype=torch.float64), atol=1e-12)
    eps = (1 - (m * f).sum(1)).sum((1, 2))  # Σ_ij (1 - Φ_mᵀ Φ_f)
    r = net.residuals(m, f)
    assert torch.allclose(0.5 * (r * r).sum(-1), eps, rtol=1e-12)
    assert torch.allclose(net.similarity(_images(2, 16), _images(2, 16, seed=5)), eps, rtol=1e-12)


def test_euclidean_and_hyperbolic_residuals():
    net = _net("euclidean")
    a, b = _images(2, 16), _images(2, 16, seed=4)
    assert torch.allclose(
        net.residuals(net.embed(a), net.embed(b)), (net.features(a) - net.features(b)).flatten(1)
    )
    hyp = _net("hyperbolic")
    ea, eb = hyp.embed(a), hyp.embed(b)
    assert torch.allclose(hyp.residuals(ea, eb), lorentz_distance(ea, eb).flatten(1))
    for n in (net, hyp, _net("spherical")):
        assert torch.allclose(n.similarity(a, a), torch.zeros(2, dtype=torch.float64), atol=1e-20)


def test_intensity_scale_and_offset_do_not_matter():
    net = _net("spherical")
    a = _images(2, 16)
    assert torch.allclose(
        net.embed(a), net.embed(7.5 * a - 3.0), atol=1e-5
    )  # up to the 1e-6 guard of std


@pytest.mark.parametrize("embedding", ["spherical", "euclidean", "hyperbolic"])
def test_jvp_through_embed_and_residuals_matches_central_differences(embedding):
    net = _net(embedding)
    moving, fixed = _images(2, 16), _images(2, 16, seed=9)
    fixed_e = net.embed(fixed)
    tangent = torch.randn(
        moving.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )

    def residuals(img):
        return net.residuals(net.embed(img), fixed_e)

    r, jr = torch.func.jvp(residuals, (moving,), (tangent,))
    h = 1e-6
    with torch.no_grad():
        fd = (residuals(moving + h * tangent) - residuals(moving - h * tangent)) / (2 * h)
        assert torch.allclose(r, residuals(moving))
    assert torch.allclose(jr, fd, rtol=1e-6, atol=1e-7 * float(fd.abs().max()))


def test_similarity_gradient_passes_gradcheck():
    net = _net("spherical")
    fixed = _images(1, 8, seed=2)
    moving = _images(1, 8).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: net.similarity(m, fixed), (moving,))


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(2, 3, 16, 16), r"\(B, 1, H, W\)"),
        (torch.zeros(16, 16), r"\(B, 1, H, W\)"),
        (torch.zeros(1, 1, 18, 16), "divisible"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.int64), "floating"),
        (torch.full((1, 1, 16, 16), float("nan")), "256 NaN"),
    ],
)
def test_similarity_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        _net("spherical").float().embed(bad)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="embedding"):
        SimilarityConfig(embedding="cosine")
    with pytest.raises(ValueError, match="heads"):
        SimilarityConfig(model_dim=10, heads=3)
    with pytest.raises(ValueError, match="backbone"):
        PoseRegressor(RegressorConfig(backbone="no_such_net_xyz"))


# ----------------------------------------------------------------------------- regressor
CENTER = np.array([10.0, -20.0, 5.0])


@pytest.fixture(scope="module")
def regressor():
    torch.manual_seed(0)
    return PoseRegressor(RegressorConfig("resnet10t", 32, 32), CENTER, PoseDistribution()).eval()


def test_untrained_regressor_predicts_the_reference_pose(regressor):
    T = regressor(torch.rand(3, 1, 32, 32))
    assert T.shape == (3, 4, 4) and T.dtype == torch.float32
    ref = PoseDistribution().reference(CENTER).float()
    assert torch.allclose(T, ref.expand(3, 4, 4), atol=1e-4)


def test_regressor_parameterisation_is_the_pose_distributions_and_inverts(regressor):
    dist = PoseDistribution()
    T = dist.sample(5, CENTER, torch.Generator().manual_seed(0))
    p = pose_to_params(T, CENTER, dist)
    assert p.abs().max() <= 1.0 + 1e-9  # O(1) outputs for the training range
    assert torch.allclose(regressor.params_to_pose(p), T, atol=1e-9)
    rot = torch.tensor([[0.1, -0.2, 0.05]], dtype=torch.float64)
    shift = torch.tensor([[3.0, -4.0, 20.0]], dtype=torch.float64)
    direct = dist.compose(CENTER, rot, shift)
    p = torch.cat([rot / math.radians(dist.rot_deg), shift / torch.tensor([30.0, 30.0, 60.0])], -1)
    assert torch.allclose(regressor.params_to_pose(p), direct, atol=1e-12)


def test_isocentric_frame_holds_the_carm_shift():
    dist = PoseDistribution()
    rot = torch.tensor([[0.2, -0.1, 0.15]], dtype=torch.float64)
    shift = torch.tensor([[12.0, -7.0, 40.0]], dtype=torch.float64)
    P = to_isocentric(dist.compose(CENTER, rot, shift), CENTER, dist.sod_mm)
    assert torch.allclose(P[0, :3, 3].norm(), shift.norm(), atol=1e-9)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(1, 1, 64, 64), "32x32"),
        (torch.zeros(1, 2, 32, 32), r"\(B, 1, H, W\)"),
        (torch.full((2, 1, 32, 32), float("inf")), "NaN or infinite"),
    ],
)
def test_regressor_rejects_bad_images(regressor, bad, match):
    with pytest.raises(ValueError, match=match):
        regressor(bad)


def test_regressor_gradients_reach_the_backbone(regressor):
    reg = PoseRegressor(RegressorConfig("resnet10t", 32, 32), CENTER, PoseDistribution())
    with torch.no_grad():
        reg.head.weight.normal_(std=1e-3)
    reg(torch.rand(2, 1, 32, 32))[:, :3, 3].sum().backward()
    assert reg.backbone.conv1[0].weight.grad.abs().sum() > 0
