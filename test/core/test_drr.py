"""DRR adapter: geometry conventions, agreement with diffdrr, the exact pose Jacobian."""

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.drr import DrrRenderer, RenderError, trilinear_with_gradient
from sphere_reg_ros.core.geometry import se3_exp
from sphere_reg_ros.core.views import ap_pose


def _blob_volume(point_world, shape=(40, 44, 36), spacing=(3.0, 2.5, 3.5)):
    """A Gaussian blob at ``point_world`` in an anisotropic volume with an offset affine."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-60.0, -55.0, -63.0]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = idx * np.array(spacing) + affine[:3, 3]
    mu = np.exp(-((world - point_world) ** 2).sum(-1) / (2 * 3.0**2)).astype(np.float32)
    return mu, affine


def test_point_projects_where_the_pinhole_model_says():
    point = np.array([8.0, -5.0, 12.0])
    mu, affine = _blob_volume(point)
    geometry = CarmGeometry(sdd=1020.0, height=72, width=90, delx=1.2, dely=1.0, x0=9.0, y0=-6.0)
    renderer = DrrRenderer(mu, affine, geometry)
    pose = ap_pose(np.zeros(3))
    pose = se3_exp(torch.tensor([[4.0, -3.0, 10.0, 0.05, -0.1, 0.08]], dtype=torch.float64)) @ pose
    image = renderer(pose.float())[0, 0].double()
    # the blob is the only thing in the volume: its image centroid is its projection (sub-pixel)
    rows, cols = torch.meshgrid(torch.arange(72.0), torch.arange(90.0), indexing="ij")
    u = float((image * cols).sum() / image.sum())
    v = float((image * rows).sum() / image.sum())
    p_carm = torch.linalg.inv(pose[0]) @ torch.tensor([*point, 1.0], dtype=torch.float64)
    expected = geometry.project(p_carm[:3].numpy()[None])[0]
    assert u == pytest.approx(expected[0], abs=0.15)
    assert v == pytest.approx(expected[1], abs=0.15)


def test_ap_view_shows_patient_head_up_and_right_on_the_left():
    mu, affine = _blob_volume(np.array([30.0, 0.0, 40.0]))  # patient's right (+x RAS), superior
    geometry = CarmGeometry(sdd=1020.0, height=64, width=64, delx=2.0, dely=2.0)
    image = DrrRenderer(mu, affine, geometry)(ap_pose(np.zeros(3)).float())[0, 0]
    row, col = np.unravel_index(int(image.argmax()), image.shape)
    assert col < 32 and row < 32


@pytest.fixture(scope="module")
def renderer_64(small_ct):
    from sphere_reg_ros.core.volume import hu_to_attenuation

    ct = small_ct[0]
    geometry = CarmGeometry(sdd=1020.0, height=24, width=20, delx=16.0, dely=16.0, x0=8.0, y0=-4.0)
    return DrrRenderer(hu_to_attenuation(ct.data), ct.affine, geometry), ct


def test_jacobian_pass_renders_the_same_image_as_diffdrr(renderer_64):
    renderer, ct = renderer_64
    pose = ap_pose(ct.center_world).float()
    image = renderer(pose)
    image_j, jac = renderer.render_with_jacobian(pose)
    assert image.shape == image_j.shape == (1, 1, 24, 20)
    assert jac.shape == (1, 24 * 20, 6)
    assert float(image.max()) > 0.5
    torch.testing.assert_close(image_j, image, rtol=1e-4, atol=1e-4)


def test_window_contains_the_whole_volume(renderer_64):
    renderer, ct = renderer_64
    pose = ap_pose(ct.center_world).float()
    lo, hi = renderer.window(pose)
    wide = (max(lo - 0.1, 0.0), min(hi + 0.05, 1.0))
    torch.testing.assert_close(renderer(pose), renderer(pose, window=wide), rtol=2e-2, atol=2e-2)


def test_jacobian_matches_central_differences_in_float64(renderer_64):
    renderer, ct = renderer_64
    r64 = renderer.double()
    try:
        pose = se3_exp(torch.tensor([[5.0, -8.0, 12.0, 0.1, -0.05, 0.07]], dtype=torch.float64))
        pose = pose @ ap_pose(ct.center_world)
        window = r64.window(pose)
        _, jac = r64.render_with_jacobian(pose, window=window)
        fd = torch.zeros_like(jac)
        for i in range(6):
            # The trilinear interpolant has kinks at voxel faces; steps far below a voxel keep
            # (almost) every sample on one side of them, so the differences measure the slope.
            step = 1e-5 if i < 3 else 1e-7  # mm, rad
            delta = torch.zeros(1, 6, dtype=torch.float64)
            delta[0, i] = step
            plus, _ = r64.render_with_jacobian(se3_exp(delta) @ pose, window=window)
            minus, _ = r64.render_with_jacobian(se3_exp(-delta) @ pose, window=window)
            fd[..., i] = ((plus - minus) / (2 * step)).reshape(1, -1)
        rel = (jac - fd).norm() / fd.norm()
        assert rel < 1e-3, f"relative Jacobian error {rel:.2e}"
        for i in range(6):
            assert (jac[..., i] - fd[..., i]).norm() / fd[..., i].norm() < 1e-3
    finally:
        renderer.float()


def test_trilinear_gradient_is_exact_inside_cells():
    torch.manual_seed(0)
    vol = torch.rand(5, 6, 7, dtype=torch.float64)
    pts = (
        torch.rand(50, 3, dtype=torch.float64) * torch.tensor([3.8, 4.8, 5.8]) + 0.1
    ).requires_grad_()
    value, grad = trilinear_with_gradient(vol, pts)
    (auto,) = torch.autograd.grad(value.sum(), pts)
    torch.testing.assert_close(grad, auto)
    # matches grid_sample (diffdrr's sampler) on the same points
    grid = 2 * (pts.detach() + 0.5) / torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64) - 1
    ref = torch.nn.functional.grid_sample(
        vol.permute(2, 1, 0)[None, None], grid[None, None, None], align_corners=False
    )[0, 0, 0, 0]
    torch.testing.assert_close(value.detach(), ref)


@pytest.mark.parametrize(
    "pose", [torch.eye(4), torch.full((1, 4, 4), float("nan")), torch.zeros(1, 3, 4)]
)
def test_bad_poses_are_rejected(renderer_64, pose):
    with pytest.raises(RenderError):
        renderer_64[0](pose)


def test_extra_channels_render_like_separate_renderers(small_ct):
    from sphere_reg_ros.core.volume import bone_attenuation, hu_to_attenuation

    ct = small_ct[0]
    geometry = CarmGeometry(sdd=1020.0, height=24, width=20, delx=16.0, dely=16.0, x0=8.0, y0=-4.0)
    mu, bone = hu_to_attenuation(ct.data), bone_attenuation(ct.data)
    assert float(bone.max()) > 0 and np.all(bone <= mu) and np.all(bone >= 0)
    both = DrrRenderer(mu, ct.affine, geometry, channels=bone[None])
    pose = (
        se3_exp(torch.tensor([[5.0, -8.0, 12.0, 0.1, -0.05, 0.07]]))
        @ ap_pose(ct.center_world).float()
    )
    window = both.window(pose)
    image, jac = both.render_with_jacobian(pose, window=window, channels=True)
    assert image.shape == (1, 2, 24, 20) and jac.shape == (1, 2 * 24 * 20, 6)
    for k, volume in enumerate((mu, bone)):  # channel-major: channel k's Jacobian rows are block k
        ref_image, ref_jac = DrrRenderer(volume, ct.affine, geometry).render_with_jacobian(
            pose, window=window
        )
        torch.testing.assert_close(image[:, k : k + 1], ref_image, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(jac[:, k * 480 : (k + 1) * 480], ref_jac, rtol=1e-4, atol=1e-4)
    plain, _ = both.render_with_jacobian(pose, window=window)
    assert plain.shape == (1, 1, 24, 20)
    # without the Jacobian (grid_sample): the same images, several poses at once
    two = torch.cat([pose, se3_exp(torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.02, 0.0]])) @ pose])
    fast = both.render_channels(two, window=both.window(two))
    ref, _ = both.render_with_jacobian(two, window=both.window(two), channels=True)
    assert fast.shape == (2, 2, 24, 20) and not torch.equal(fast[0], fast[1])
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        DrrRenderer(mu, ct.affine, geometry).render_channels(pose, window=window),
        both(pose, window=window),
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(RenderError, match="no extra channels"):
        DrrRenderer(mu, ct.affine, geometry).render_with_jacobian(pose, channels=True)
    with pytest.raises(RenderError, match="channels must be"):
        DrrRenderer(
            mu, ct.affine, geometry, channels=bone
        )  # (X, Y, Z): the channel axis is missing
