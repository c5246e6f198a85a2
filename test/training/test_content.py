"""Clinical-content augmentations: collimator shutters and metal rods."""

import pytest
import torch

from sphere_reg_ros.training.content import ContentAugmentation, random_collimation, random_metal


def _images(b=64, size=32):
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(0)) * 3


def test_probability_zero_is_the_identity_and_one_always_acts():
    x = _images()
    g = torch.Generator().manual_seed(1)
    assert torch.equal(random_collimation(x, g, 0.0), x) and torch.equal(random_metal(x, g, 0.0), x)
    assert torch.equal(ContentAugmentation(0.0, 0.0)(x, g), x)
    for fn in (random_collimation, random_metal):
        d = fn(x, torch.Generator().manual_seed(2), 1.0) - x
        assert (d.flatten(1).abs().amax(1) > 0.1).float().mean() > 0.9  # (an inset/rod can be tiny)


def test_collimation_brightens_the_edges_and_leaves_the_centre():
    x = _images(256)
    d = random_collimation(x, torch.Generator().manual_seed(3), 0.5) - x
    acted = d.flatten(1).abs().amax(1) > 1e-3
    assert 0.35 < acted.float().mean() < 0.65  # probability 0.5
    assert float(d[~acted].abs().max()) == 0.0
    border = torch.cat([d[:, 0, 0, :], d[:, 0, -1, :], d[:, 0, :, 0], d[:, 0, :, -1]], 1)  # (B, 4W)
    assert (border[acted].amax(1) > 1.0).float().mean() > 0.9  # a shutter passes little: brighter
    assert (
        float(border[acted].amax(1).max()) < 6.0 + 4 * 0.3 + 3.0
    )  # offset + noise + washed anatomy
    assert float(d[:, :, 13:19, 13:19].abs().max()) < 0.1  # shutters stay within 20 % (+ soft edge)


def test_metal_rods_are_bounded_positive_lines():
    x = _images(256)
    d = random_metal(x, torch.Generator().manual_seed(4), 0.5) - x
    peak = d.flatten(1).amax(1)
    acted = peak > 1e-6
    assert 0.35 < acted.float().mean() < 0.65
    assert (d >= -1e-6).all() and (peak <= 8.0 + 1e-5).all()  # at most two rods of <= 4
    assert float((d[acted] > 1e-3).float().mean()) < 0.2  # thin: a small part of the image


def test_reproducible_and_shape_preserving():
    x = _images(8).double()
    a = ContentAugmentation()(x, torch.Generator().manual_seed(5))
    b = ContentAugmentation()(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.float64
    with pytest.raises(ValueError, match="p_metal"):
        ContentAugmentation(0.5, 1.5)
