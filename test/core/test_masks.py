"""Masks from the X-ray alone: shutters (any side, rotated, circular), metal, saturation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.masks import MaskConfig, detect_masks, resize_mask, shutter_edges
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
from sphere_reg_ros.core.volume import resample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOMETRY = CarmGeometry(sdd=1020.0, height=96, width=96, delx=4.0, dely=4.0)


@pytest.fixture(scope="module")
def registrar(small_ct):
    return Registrar(
        resample(small_ct[0], 6.0),
        config=RegistrarConfig(resolution=48, max_iterations=2),
        spacing_mm=6.0,
    )


@pytest.fixture(scope="module")
def drr(registrar):
    return registrar.render(registrar.default_pose(), GEOMETRY).astype(np.float64)


def _noisy(img, seed=0, sigma=0.02):
    return img + sigma * np.random.default_rng(seed).standard_normal(img.shape)


def _shutter(img, inside, step=2.5):
    """Shutter region (outside ``inside``) stepped up by ``step`` plus a flat scatter floor."""
    out = img.copy()
    out[~inside] = out[~inside] + step
    return out


def _grid(n):
    y, x = np.mgrid[0:n, 0:n]
    return (x + 0.5) / n - 0.5, (y + 0.5) / n - 0.5


@pytest.mark.parametrize(
    "insets", [(0.1, 0.0, 0.0, 0.0), (0.0, 0.12, 0.05, 0.0), (0.08, 0.06, 0.14, 0.1)]
)
def test_axis_aligned_shutters_on_any_side_are_found(drr, insets):
    n = drr.shape[0]
    top, bottom, left, right = (round(f * n) for f in insets)
    inside = np.zeros_like(drr, dtype=bool)
    inside[top : n - bottom, left : n - right] = True
    m = detect_masks(_noisy(_shutter(drr, inside)))
    coll = m.collimator.numpy()
    assert not (~inside & ~coll).any(), "every shutter pixel masked"
    assert (coll & inside).mean() < 0.06, "little of the field lost (the blur margin)"
    assert len(m.edges) == sum(1 for f in insets if f > 0)


def test_a_rotated_field_is_found(drr):
    x, y = _grid(drr.shape[0])
    phi = math.radians(25.0)
    u, v = x * math.cos(phi) + y * math.sin(phi), -x * math.sin(phi) + y * math.cos(phi)
    inside = (np.abs(u) < 0.36) & (np.abs(v) < 0.5)
    m = detect_masks(_noisy(_shutter(drr, inside)))
    coll = m.collimator.numpy()
    assert (~inside & ~coll).mean() < 0.01
    assert (coll & inside).mean() < 0.08
    # the two long sides at 25° and 205°, and the ends beyond the image's corners at 115° / 295°
    angles = [round(math.degrees(a)) % 90 for a, _, _ in m.edges]
    assert all(abs(a - 25) <= 5 for a in angles) and len(angles) in (2, 3, 4)  # 3° angle steps


def test_a_circular_field_is_found(drr):
    x, y = _grid(drr.shape[0])
    inside = np.hypot(x, y) < 0.45
    m = detect_masks(_noisy(_shutter(drr, inside)))
    coll = m.collimator.numpy()
    assert (~inside & ~coll).mean() < 0.01
    assert (coll & inside).mean() < 0.1
    assert m.circle is not None and m.circle[2] == pytest.approx(0.45, abs=0.03)


def test_nothing_is_masked_in_a_plain_drr(drr):
    m = detect_masks(_noisy(drr))
    assert m.masked_fraction == 0.0 and m.edges == () and m.circle is None


def test_a_metal_wire_is_masked(drr):
    img = drr.copy()
    rows = np.arange(20, 76)
    cols = (30 + 0.4 * (rows - 20)).astype(int)
    wire = np.zeros_like(drr, dtype=bool)
    wire[rows, cols] = wire[rows, cols + 1] = True
    img[wire] += 4.0  # a 2-3 mm steel K-wire: ~40x water over 2-3 mm
    m = detect_masks(_noisy(img))
    metal = m.metal.numpy()
    assert metal[wire].mean() > 0.95
    assert (metal & ~wire).mean() < 0.05  # the dilation only
    assert m.collimator.sum() == 0


def test_saturated_plateaus_are_masked(drr):
    img = _noisy(drr)
    img[:, :10] = img.max() + 1.0  # a clipped detector column block at the maximum
    m = detect_masks(img, MaskConfig(collimator=False))
    assert m.saturated[:, :10].all() and m.saturated[:, 12:].sum() == 0


def test_bad_input_and_config_raise():
    with pytest.raises(ValueError, match="2-D"):
        detect_masks(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        detect_masks(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="angles"):
        MaskConfig(angles=2)
    assert (
        detect_masks(np.random.default_rng(0).random((16, 16)), MaskConfig.off()).masked_fraction
        == 0
    )


def test_resize_mask_keeps_only_fully_valid_pixels():
    valid = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    valid[..., 0, 0] = False
    small = resize_mask(valid, 4, 4)
    assert small.shape == (1, 1, 4, 4) and not small[0, 0, 0, 0] and small.sum() == 15
    odd = resize_mask(valid, 3, 3)
    assert not odd[0, 0, 0, 0] and odd[0, 0, 2, 2]


def test_shutter_scores_separate_shutters_from_anatomy(drr):
    n = drr.shape[0]
    inside = np.zeros_like(drr, dtype=bool)
    inside[:, : n - 10] = True
    edges = shutter_edges(torch.from_numpy(_noisy(_shutter(drr, inside))))
    assert len(edges) == 1 and edges[0][0] == pytest.approx(0.0, abs=0.05)
    assert (
        edges[0][1] == pytest.approx(10 / n, abs=1.5 / n)
        and edges[0][2] > 2 * MaskConfig().edge_threshold
    )


def test_the_registration_result_carries_the_mask_for_the_overlay(registrar, drr):
    from sphere_reg_ros.core.masks import hatch_pattern

    inside = np.zeros_like(drr, dtype=bool)
    inside[:, 12:] = True
    image = _noisy(_shutter(drr, inside)).astype(np.float32)
    res = registrar.register(image, GEOMETRY, registrar.default_pose())
    assert res.valid_mask is not None and res.valid_mask.shape == image.shape
    assert not res.valid_mask[:, :12].any() and res.valid_mask[:, 16:].all()
    assert res.masked_fraction == pytest.approx(1.0 - res.valid_mask.mean())
    hatch = hatch_pattern(~res.valid_mask)
    assert hatch[:, :12].any() and not hatch[:, 16:].any()
