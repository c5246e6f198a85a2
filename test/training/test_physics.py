"""Physics-based randomisation of training X-rays: each effect's direction and range."""

import math

import pytest
import torch

from sphere_reg_ros.training.dataset import DrrPool, SimilarityPool
from sphere_reg_ros.training.physics import (
    PhysicsConfig,
    PhysicsRandomization,
    add_metal,
    add_scatter,
    collimate,
    count_photons,
    detector_response,
    harden_beam,
    incident_field,
    mix_tissues,
    truncate,
)

B, H, W = 6, 32, 32


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def channels():
    """(B, 2, H, W) whole and bone optical depths: a soft-tissue slab with a bone bar."""
    whole = torch.full((B, 1, H, W), 2.0)
    bone = torch.zeros(B, 1, H, W)
    bone[..., 10:20] = 1.0
    return torch.cat([whole + bone, bone], 1)


def _in(t, lo, hi):
    return bool(((t >= lo) & (t <= hi)).all())


def test_mix_tissues_scales_bone_by_the_drawn_contrast(channels):
    p, prm = mix_tissues(channels, gen())
    assert p.shape == (B, 1, H, W)
    assert _in(prm["bone"], 0.6, 3.0) and _in(prm["scale"], 0.8, 1.25)
    s, m = prm["scale"][:, None], prm["bone"][:, None]
    soft = p[:, 0, :, 0].double()  # no bone
    on_bone = p[:, 0, :, 15].double()
    torch.testing.assert_close(soft, (2.0 * s).expand_as(soft), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(on_bone, (s * (2.0 + m)).expand_as(on_bone), rtol=1e-5, atol=1e-6)


def test_more_bone_contrast_makes_bone_darker(channels):
    lo, _ = mix_tissues(channels, gen(), bone=(1.0, 1.0), scale=(1.0, 1.0))
    hi, _ = mix_tissues(channels, gen(), bone=(2.5, 2.5), scale=(1.0, 1.0))
    assert (hi[..., 15] > lo[..., 15]).all() and torch.equal(hi[..., 0], lo[..., 0])


def test_mix_tissues_wants_two_channels(channels):
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        mix_tissues(channels[:, :1], gen())


def test_beam_hardening_compresses_monotonically():
    p = torch.linspace(0, 8, W).expand(B, 1, H, W).contiguous()
    out, prm = harden_beam(p, gen())
    assert _in(prm["a"], 0.0, 0.5) and _in(prm["p0"], 1.0, 4.0)
    assert (out <= p + 1e-9).all()
    assert (out.diff(dim=-1) > 0).all()  # monotone
    assert (out[..., -1] < p[..., -1]).all()  # dense paths look less dense
    same, _ = harden_beam(p, gen(), a=(0.0, 0.0))
    torch.testing.assert_close(same, p.double())


def test_metal_only_adds_and_stays_in_range():
    p = torch.ones(B, 1, H, W)
    out, prm = add_metal(p, gen(), prob=1.0, depth=(2.0, 5.0), max_objects=3)
    add = out - p
    assert prm["on"].all() and _in(prm["count"], 1, 3)
    assert (add >= 0).all() and (add.amax((1, 2, 3)) > 0.5).all()
    assert (add <= 3 * 5.0 + 1e-9).all()
    assert (add > 0).double().mean() < 0.5  # objects, not the whole image
    none, prm0 = add_metal(p, gen(), prob=0.0)
    assert torch.equal(none, p.double()) and not prm0["on"].any()


def test_incident_field_heel_brightens_along_its_direction():
    img = torch.zeros(B, 1, H, W)
    flat, _ = incident_field(img, gen(), heel=(0.0, 0.0), falloff=(1e6, 1e6))
    torch.testing.assert_close(flat, torch.ones_like(flat, dtype=torch.float64))
    field, prm = incident_field(img, gen(), heel=(0.3, 0.3), falloff=(1e6, 1e6))
    assert (field > 0).all()
    for i in range(B):
        th = float(prm["direction"][i])
        # the pixel farthest along the direction is brighter than the one farthest against it
        r, c = (H - 1) / 2 * (1 + math.sin(th)), (W - 1) / 2 * (1 + math.cos(th))
        r2, c2 = (H - 1) / 2 * (1 - math.sin(th)), (W - 1) / 2 * (1 - math.cos(th))
        assert field[i, 0, round(r), round(c)] > field[i, 0, round(r2), round(c2)]
    # the ramp's strength is in range: exp(2 h · half a width) at most
    assert float(field.max()) <= math.exp(2 * 0.3 * 0.75) + 1e-6


def test_vignetting_darkens_away_from_its_centre():
    img = torch.zeros(B, 1, H, W)
    field, _ = incident_field(img, gen(), heel=(0.0, 0.0), falloff=(1.5, 1.5))
    assert (field <= 1 + 1e-12).all() and (field > (1 + (1.1 / 1.5) ** 2) ** -2 - 1e-9).all()


def test_collimation_blocks_outside_an_open_field():
    primary = torch.ones(B, 1, H, W)
    out, prm = collimate(primary, gen(), prob=1.0)
    assert prm["on"].all()
    assert (out <= 1 + 1e-12).all() and (out >= 0.001 - 1e-12).all()
    op = prm["open"]
    assert _in(op, 0.0, 1.0)
    blocked = op.amin((1, 2, 3)) < 0.05
    assert blocked.any()  # at least one image has a shadow
    assert (out[op < 0.01] < 0.1).all()  # behind the shutters, leakage only
    none, _ = collimate(primary, gen(), prob=0.0)
    torch.testing.assert_close(none, primary.double())


def test_circular_collimation_is_round():
    primary = torch.ones(B, 1, H, W)
    _, prm = collimate(primary, gen(1), prob=1.0, circle_prob=1.0)
    assert prm["circle"].all()
    op = prm["open"][:, 0]
    # corners are outside every iris (radius <= 0.7 of the width, centre within 0.1)
    assert (op[:, 0, 0] < 0.5).all() and (op[:, -1, -1] < 0.5).all()


def test_scatter_adds_a_smooth_fraction():
    primary = torch.ones(B, 1, H, W)
    out, prm = add_scatter(primary, gen())
    assert _in(prm["spr"], 0.0, 1.0)
    k = prm["spr"][:, None, None, None]
    torch.testing.assert_close(out, 1 + k.expand_as(out), rtol=1e-6, atol=1e-6)
    # on a shutter's shadow, scatter from the open field fills it
    half = torch.ones(B, 1, H, W)
    half[..., : W // 2] = 0.0
    filled, prm = add_scatter(half, gen(), spr=(0.5, 0.5))
    assert (filled[..., W // 2 - 2] > 0.01).all()
    none, _ = add_scatter(half, gen(), spr=(0.0, 0.0))
    torch.testing.assert_close(none, half.double())


def test_detector_blur_keeps_flat_fields_and_smooths_noise():
    flat = torch.full((B, 1, H, W), 3.0)
    out, prm = detector_response(flat, gen())
    torch.testing.assert_close(out, flat.double())
    assert _in(prm["core_px"], 0.2, 1.5) and _in(prm["glare"], 0.0, 0.15)
    noise = 1 + 0.1 * torch.randn(B, 1, H, W, generator=gen(3))
    blurred, _ = detector_response(noise, gen(), core=(1.0, 1.5))
    assert (blurred.std((1, 2, 3)) < noise.std((1, 2, 3))).all()


def test_counts_return_the_optical_depth_and_noise_grows_with_fewer_quanta():
    p = torch.linspace(0.5, 4.0, W).expand(B, 1, H, W).contiguous()
    intensity = torch.exp(-p)
    exact, _ = count_photons(
        intensity, gen(), n0=(1e9, 1e9), electronic=(0.0, 0.0), saturation_prob=0.0
    )
    torch.testing.assert_close(exact, p.double(), atol=2e-3, rtol=0)
    many, _ = count_photons(intensity, gen(), n0=(1e5, 1e5), saturation_prob=0.0)
    few, _ = count_photons(intensity, gen(), n0=(1e3, 1e3), saturation_prob=0.0)
    assert (few - p).std() > 3 * (many - p).std()


def test_saturation_clips_the_brightest_pixels():
    p = torch.linspace(0.5, 4.0, W).expand(B, 1, H, W).contiguous()
    out, prm = count_photons(
        torch.exp(-p), gen(), n0=(1e8, 1e8), electronic=(0.0, 0.0), saturation_prob=1.0
    )
    assert prm["saturated"].all()
    # the thinnest paths (brightest) saturate: their depth is raised to a floor
    assert (out[..., 0] > p[..., 0] + 0.05).all()
    torch.testing.assert_close(out[..., -1], p[..., -1].double(), atol=5e-3, rtol=0)


def test_truncation_blanks_one_border_band():
    img = torch.rand(B, 1, H, W, generator=gen(4)) + 1
    out, prm = truncate(img, gen(), prob=1.0, band=(0.1, 0.2))
    assert prm["on"].all()
    low = img.double().amin((1, 2, 3))
    for i in range(B):
        blank = out[i, 0] == low[i]
        assert 0.05 < float(blank.double().mean()) <= 0.25
    none, _ = truncate(img, gen(), prob=0.0)
    torch.testing.assert_close(none, img.double())


def test_the_chain_is_seeded_finite_and_keeps_shape_and_dtype(channels):
    phys = PhysicsRandomization()
    a = phys(channels, gen(7))
    b = phys(channels, gen(7))
    c = phys(channels, gen(8))
    assert a.shape == (B, 1, H, W) and a.dtype == channels.dtype
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c)


def test_physics_config_rejects_non_probabilities():
    with pytest.raises(ValueError, match="metal"):
        PhysicsConfig(metal=1.5)
    with pytest.raises(ValueError, match="collimation"):
        PhysicsConfig(collimation=-0.1)


# ----------------------------------------------------------------------------- in the pools
def test_pools_simulate_xrays_from_the_two_channels(tiny_bone_scene, tiny_scene):
    g = torch.Generator().manual_seed(3)
    poses = tiny_bone_scene.sample_poses(2, g)
    two = tiny_bone_scene.render(poses, channels=True)
    assert two.shape == (2, 2, 16, 16)
    # channel 0 is the plain DRR, channel 1 the bone part: less, and not nothing
    torch.testing.assert_close(two[:, :1], tiny_bone_scene.render(poses), rtol=1e-4, atol=1e-5)
    assert (two[:, 1] <= two[:, 0] + 1e-6).all() and two[:, 1].amax() > 0

    draws = {}
    for physics in (None, PhysicsRandomization()):
        g = torch.Generator().manual_seed(5)
        pool = DrrPool(tiny_bone_scene, capacity=4, physics=physics)
        pool.add(4, g)
        state = g.get_state()
        draws[physics is None] = (pool.draw(3, g), pool.draw(3, g.set_state(state), augment=False))
    (xray, pose), (clean, clean_pose) = draws[False]
    assert xray.shape == clean.shape == (3, 1, 16, 16) and torch.equal(pose, clean_pose)
    # without augmentation, a physics pool's draw is the plain DRR of the same jittered pose
    torch.testing.assert_close(clean, draws[True][1][0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(xray, clean, atol=1e-2)

    sim = SimilarityPool(tiny_bone_scene, capacity=2, physics=PhysicsRandomization())
    sim.add(2, g)
    fixed, _, moving, _, _ = sim.draw(2, g)
    assert fixed.shape == moving.shape == (2, 1, 16, 16)

    with pytest.raises(ValueError, match="bone_channel"):
        DrrPool(tiny_scene, capacity=2, physics=PhysicsRandomization())
    with pytest.raises(ValueError, match="bone channel"):
        tiny_scene.render(poses, channels=True)
